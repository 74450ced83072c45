"""GET /info/: what this server offers, in the shape every MONAI Label client parses."""

from __future__ import annotations

from typing import Any

from fastapi import Depends

from annotation_server import __version__
from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.schemas import InfoResponse, ModelDescription, StrategyDescription
from annotation_server.inference.labels import foreground_labels
from annotation_server.learning.finetune import FineTuneParams
from annotation_server.services import Services

router = CompatRouter(tags=["info"])


def _train_config(device: str) -> dict[str, Any]:
    """The training defaults 3D Slicer shows as options (a list becomes a dropdown, its first item chosen)."""
    defaults = FineTuneParams()
    shown = ("max_epochs", "val_split", "train_batch_size", "learning_rate")
    return {**{key: getattr(defaults, key) for key in shown}, "device": list(dict.fromkeys([device, "cpu"]))}


@router.get("/info/", response_model=InfoResponse, summary="App, models, strategies and datastore summary")
def info(services: Services = Depends(get_services)) -> InfoResponse:
    app = services.app
    train_config = _train_config(services.device)
    models = {
        task.name: ModelDescription(
            type=task.type,
            labels=dict(task.labels),
            dimension=task.dimension,
            description=task.description,
            version=task.version,
            config={"device": services.device_names, **task.config()},
        )
        for task in services.inference.tasks.values()
    }
    return InfoResponse(
        name=f"annotation-server - {app.name} ({__version__})",
        description=app.description,
        version=__version__,
        labels=[name for name, _ in foreground_labels(dict(app.labels))],
        models=models,
        strategies={k: StrategyDescription(**v) for k, v in services.active_learning.describe().items()},
        trainers={
            name: {"description": f"fine-tune {name} on this site's 'final' labels", "config": train_config}
            for name in services.training.trainable
        },
        train_stats=services.training.stats(),
        scoring=services.scoring.describe(),
        datastore=services.datastore.stats(),
        server={
            "app": app.name,
            "app_version": app.version,
            "device": services.device,
            "failed_models": services.failed_models,
            "interactive_model": services.interactive.default_model,  # what a prompt naming no model uses
            "serving_versions": {name: services.serving.serving_version(name) for name in services.serving.sources},
            "version_errors": services.serving.errors,
        },
    )

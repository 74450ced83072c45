"""On-site fine-tuning: the serving version + the site's `final` labels -> a new candidate version.

The same function runs behind `POST /train/{model}` (in a child process, see `learning.jobs`) and
`annotate-server train`. It knows nothing about kidneys: the app's `FineTuneRecipe` turns labeled
images into preprocessed samples, batches and a validation Dice, and the serving bundle supplies the
network and its configs. Both the serving and the new weights are scored on the same held-out labels,
which is what the promotion gate compares.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from annotation_server.datastore import FINAL_TAG, Datastore
from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.inference.bundle import OUR_KEY, load_bundle
from annotation_server.inference.bundle_runtime import BundleRuntime
from annotation_server.learning.bundle_writer import write_bundle
from annotation_server.learning.promotion import (
    MIN_VAL_IMAGES,
    NONINFERIORITY_MARGIN,
    GateDecision,
    apply_gate,
    decide,
)
from annotation_server.learning.reporting import plot_history
from annotation_server.learning.trainer import Batch, TrainHistory, TrainProgress, TrainSettings, train
from annotation_server.registry import ModelRegistry, ModelVersion

logger = logging.getLogger(__name__)


class LabeledImage(BaseModel):
    """An image and the exact label version used for training (what the version's provenance lists)."""

    model_config = ConfigDict(frozen=True)

    image_id: str
    image: Path
    label: Path
    label_version: int
    label_sha256: str


class FineTuneRecipe(Protocol):
    """How an app trains one of its models: only the app knows its preprocessing and augmentation."""

    def samples(self, items: Sequence[LabeledImage]) -> list[dict[str, Any]]:
        """Preprocessed samples (network space) for these labeled images."""
        ...

    def batches(self, samples: list[dict[str, Any]], batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless augmented (input, target) batches."""
        ...

    def validator(self, samples: list[dict[str, Any]]) -> Callable[[torch.nn.Module], float]:
        """Mean Dice of a network on these samples (the number the promotion gate compares)."""
        ...


class FineTuneParams(BaseModel):
    """Training request parameters, MONAI Label's names where it has them (`max_epochs`, `val_split`, ...)."""

    model_config = ConfigDict(extra="ignore")  # clients add client_id and their own keys

    max_epochs: int = Field(20, ge=1, le=10_000, description="passes over the training labels")
    steps: int | None = Field(None, ge=1, description="optimizer steps; overrides max_epochs when given")
    val_split: float = Field(0.2, ge=0.0, lt=1.0, description="share of labeled images held out for validation")
    train_batch_size: int = Field(2, ge=1, le=64)
    learning_rate: float = Field(5e-4, gt=0, le=1.0)
    val_every: int | None = Field(None, ge=1, description="validate every N steps (default: ~5 times per run)")
    min_improvement: float = Field(
        0.0, description="the gate promotes only if the mean Dice gain over the serving version is above this"
    )
    min_val_images: int = Field(
        MIN_VAL_IMAGES, ge=1, description="fewest validation images the gate accepts a comparison on"
    )
    noninferiority_margin: float = Field(
        NONINFERIORITY_MARGIN,
        ge=0.0,
        le=1.0,
        description="the gate refuses a version whose paired-bootstrap 95% interval allows a Dice loss beyond this",
    )
    auto_promote: bool = Field(True, description="promote at once when the gate passes (else leave a candidate)")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")

    def total_steps(self, train_count: int) -> int:
        if self.steps is not None:
            return self.steps
        per_epoch = max(1, -(-train_count // self.train_batch_size))
        return self.max_epochs * per_epoch


class TrainOutcome(BaseModel):
    version: ModelVersion
    gate: GateDecision
    promoted: bool
    train_images: int
    val_images: int
    steps: int
    wall_s: float


def labeled_images(datastore: Datastore) -> list[LabeledImage]:
    """Every image with a `final` label, at its latest label version."""
    items = []
    for record in datastore.list_images():
        try:
            head = datastore.label_head(record.id, FINAL_TAG)
        except NotFoundError:
            continue
        items.append(
            LabeledImage(
                image_id=record.id,
                image=datastore.image_path(record.id),
                label=datastore.label_file(head),
                label_version=head.version,
                label_sha256=head.sha256,
            )
        )
    return items


def split(items: Sequence[LabeledImage], val_split: float) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Each image's side is fixed by a hash of its id alone, so it never moves from training into validation
    when more labels arrive: a version trained on an image is never scored on it later (the gate after a
    federated job re-splits a grown queue). Only to keep both sides non-empty is the image nearest the
    threshold moved."""
    if len(items) < 2:
        raise InvalidRequestError(
            f"fine-tuning needs at least 2 images with a 'final' label (one to train, one to validate); "
            f"the datastore has {len(items)}: save more labels first"
        )
    ranked = sorted(items, key=_split_position)
    count = sum(_split_position(i) < val_split for i in ranked)
    count = min(max(1, count), len(ranked) - 1)
    return ranked[count:], ranked[:count]


def _split_position(item: LabeledImage) -> float:
    """A stable number in [0, 1) per image id: below `val_split` means validation."""
    return int(hashlib.sha256(item.image_id.encode()).hexdigest()[:12], 16) / float(1 << 48)


def sample_scores(recipe: FineTuneRecipe, network: torch.nn.Module, samples: list[dict[str, Any]]) -> list[float]:
    """Dice of `network` on each validation sample alone: the promotion gate compares versions sample by sample."""
    network.eval()
    with torch.no_grad():
        return [float(recipe.validator([sample])(network)) for sample in samples]


def load_network(bundle_dir: Path, device: str = "cpu") -> torch.nn.Module:
    """The bundle's network with its weights, built from its own config."""
    return BundleRuntime(load_bundle(bundle_dir), device).network


def write_version_bundle(
    base_bundle: Path, state_dict: dict[str, torch.Tensor], out_dir: Path, training: dict[str, Any]
) -> Path:
    """A new bundle: the base bundle's configs, new weights, and a training summary in its metadata."""
    base = load_bundle(base_bundle)
    config = json.loads(base.config_file.read_text())
    metadata = dict(base.metadata)
    extras = {**base.extras, "training": training}
    extras.pop("model_sha256", None)
    metadata.pop(OUR_KEY, None)
    write_bundle(out_dir, config, metadata, state_dict, extras)
    return out_dir


def fine_tune(
    app_recipes: dict[str, FineTuneRecipe],
    model: str,
    items: Sequence[LabeledImage],
    registry: ModelRegistry,
    params: FineTuneParams,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    job_id: str | None = None,
) -> TrainOutcome:
    """Train from the serving version on `items` (the site's `final` labels, see `labeled_images`), register
    the result as a new version and run the promotion gate.

    It takes file paths rather than a datastore so it can run in a child process without opening the
    server's datastore (label versions are immutable files, safe to read while the server writes)."""
    recipe = app_recipes.get(model)
    if recipe is None:
        trainable = ", ".join(sorted(app_recipes)) or "none"
        raise NotFoundError(f"model '{model}' cannot be trained here; trainable models: {trainable}")
    base = registry.serving(model)
    if base is None:
        raise NotFoundError(f"model '{model}' has no serving version in the registry {registry.root}")
    started = time.monotonic()
    train_items, val_items = split(items, params.val_split)
    train_samples, val_samples = recipe.samples(train_items), recipe.samples(val_items)
    if params.threads:
        torch.set_num_threads(params.threads)
    network = load_network(Path(base.path), params.device)
    validate = recipe.validator(val_samples)
    serving_scores = sample_scores(recipe, network, val_samples)
    serving_dice = float(sum(serving_scores) / len(serving_scores)) if serving_scores else 0.0
    steps = params.total_steps(len(train_samples))
    settings = TrainSettings(
        steps=steps,
        learning_rate=params.learning_rate,
        val_every=params.val_every or max(1, steps // 5),
        device=params.device,
        seed=params.seed,
    )
    history = train(
        network,
        recipe.batches(train_samples, params.train_batch_size, params.seed),
        settings,
        validate,
        progress,
        should_stop=should_stop,
    )
    if not history.validation:
        raise InvalidRequestError("training was stopped before its first validation; no version was made")
    provenance = {
        "base_version": base.version,
        "job_id": job_id,
        "labels": [
            {"image": i.image_id, "label_version": i.label_version, "sha256": i.label_sha256} for i in train_items
        ],
        "validation_labels": [
            {"image": i.image_id, "label_version": i.label_version, "sha256": i.label_sha256} for i in val_items
        ],
        "params": params.model_dump(),
    }
    metrics = {
        "val_dice": round(history.best_dice, 5),
        "serving_val_dice": round(serving_dice, 5),
        "serving_version": base.version,
        "best_step": history.best_step,
        "steps": len(history.losses),
        "train_images": len(train_items),
        "val_images": len(val_items),
    }
    with tempfile.TemporaryDirectory(dir=registry.root) as scratch:
        bundle_dir = write_version_bundle(Path(base.path), history.best_state or {}, Path(scratch) / "bundle", metrics)
        curve = Path(scratch) / "training_curve.png"
        plot_history(history, curve, f"{model} fine-tuned from v{base.version}")
        (Path(scratch) / "training_history.json").write_text(json.dumps(history.to_json()))
        version = registry.add_version(
            model,
            bundle_dir,
            "training",
            metrics,
            provenance,
            note=f"fine-tuned from v{base.version} on {len(train_items)} labels",
            extra_files={
                "training_curve.png": curve,
                "training_history.json": Path(scratch) / "training_history.json",
            },
        )
    if history.best_state:
        network.load_state_dict(history.best_state)
    gate = decide(
        sample_scores(recipe, network, val_samples),
        serving_scores,
        len(val_items),
        params.min_improvement,
        params.min_val_images,
        params.noninferiority_margin,
    )
    promoted = apply_gate(registry, version, gate, params.auto_promote)
    return _outcome(version, gate, promoted, train_items, val_items, history, started, registry)


def _outcome(
    version: ModelVersion,
    gate: GateDecision,
    promoted: bool,
    train_items: list[LabeledImage],
    val_items: list[LabeledImage],
    history: TrainHistory,
    started: float,
    registry: ModelRegistry,
) -> TrainOutcome:
    return TrainOutcome(
        version=registry.get(version.model, version.version),
        gate=gate,
        promoted=promoted,
        train_images=len(train_items),
        val_images=len(val_items),
        steps=len(history.losses),
        wall_s=round(time.monotonic() - started, 2),
    )

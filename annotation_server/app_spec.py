"""An app is declarative Python: its labels, the models it serves and any extra next-sample strategies.

`load_app("kidney")` finds an app by name (installed entry point `annotation_server.apps`, or the
`annotation_apps` package built from the repository's `apps/` folder) or by path to a folder/file that
defines `APP`. Adding an app never means editing the server.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

from annotation_server.errors import NotFoundError
from annotation_server.federated.config import FederatedConfig
from annotation_server.inference.task import InferTask
from annotation_server.learning.finetune import FineTuneRecipe
from annotation_server.learning.strategies import Strategy
from annotation_server.preannotation.rules import PreannotationRules

ENTRY_POINT_GROUP = "annotation_server.apps"


@runtime_checkable
class ModelSource(Protocol):
    """A model declared by reference (e.g. a bundle folder), built when the server starts.

    Building late means a broken model (corrupted weights, missing file) is reported and skipped at start
    instead of making the app impossible to import.
    """

    name: str

    def build(self) -> InferTask: ...


@dataclass(frozen=True)
class AppSpec:
    name: str
    description: str
    labels: Mapping[str, int]
    models: Sequence[InferTask | ModelSource]
    strategies: Mapping[str, Strategy] = field(default_factory=dict)
    # How each trainable model is fine-tuned on the site's labels (POST /train/{model}, `annotate-server train`).
    trainers: Mapping[str, FineTuneRecipe] = field(default_factory=dict)
    # How the site's federated training queue admits labels (review step) and the federated job's options.
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    # Which new PACS series are pre-annotated automatically, and with which model (ANNOTATE_WATCH_PACS=true).
    preannotation: PreannotationRules = field(default_factory=PreannotationRules)
    # Labels that lie inside another label's region, e.g. KiTS's kidney ⊃ tumor, cyst: {"kidney": ("tumor",
    # "cyst")}. Drawing the containing label interactively never overwrites its parts' voxels, so refining a
    # kidney after its tumor was drawn keeps the tumor (the parts still count as that region for evaluation).
    label_parts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    version: str = "0.1.0"

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"app '{self.name}' declares duplicate model names: {names}")
        values = list(self.labels.values())
        if len(set(values)) != len(values):
            raise ValueError(f"app '{self.name}' gives two labels the same value: {dict(self.labels)}")
        for whole, parts in self.label_parts.items():
            unknown = [name for name in (whole, *parts) if name not in self.labels]
            if unknown or whole in parts:
                raise ValueError(
                    f"app '{self.name}': label_parts {whole!r} -> {parts!r} names unknown labels {unknown}"
                    " (or a label as its own part)"
                )


def _from_module(module_name: str, source: str) -> AppSpec:
    module = importlib.import_module(module_name)
    app = getattr(module, "APP", None)
    if not isinstance(app, AppSpec):
        raise NotFoundError(f"{source} does not define APP = AppSpec(...)")
    return app


def _from_path(path: Path) -> AppSpec:
    init = path / "__init__.py" if path.is_dir() else path
    if not init.is_file():
        raise NotFoundError(f"app folder '{path}' has no __init__.py defining APP")
    module_name = f"annotation_user_app_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(
        module_name, init, submodule_search_locations=([str(path)] if path.is_dir() else None)
    )
    if spec is None or spec.loader is None:
        raise NotFoundError(f"cannot import app from '{path}'")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return _from_module(module_name, str(path))


def available_apps() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_app(name_or_path: str) -> AppSpec:
    """Resolve `--app`: a path, an installed entry point, or a folder of the `annotation_apps` package."""
    path = Path(name_or_path).expanduser()
    if path.exists() and (path.is_dir() or path.suffix == ".py"):
        return _from_path(path)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name_or_path:
            app = ep.load()
            if not isinstance(app, AppSpec):
                raise NotFoundError(f"entry point '{ep.value}' is not an AppSpec")
            return app
    try:
        return _from_module(f"annotation_apps.{name_or_path}", f"app '{name_or_path}'")
    except ModuleNotFoundError:
        pass
    known = ", ".join(available_apps()) or "none installed"
    raise NotFoundError(f"app '{name_or_path}' not found (known apps: {known}); pass an app name or a folder path")


def build_models(app: AppSpec) -> tuple[list[InferTask], dict[str, str]]:
    """The app's servable models, and for each one that could not be built, the reason."""
    built: list[InferTask] = []
    failed: dict[str, str] = {}
    for model in app.models:
        if isinstance(model, InferTask):
            built.append(model)
            continue
        try:
            built.append(model.build())
        except Exception as exc:  # one broken model must not take the others down
            failed[model.name] = f"{type(exc).__name__}: {exc}"
    return built, failed

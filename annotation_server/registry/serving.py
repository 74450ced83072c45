"""Keeps the served models in step with the registry: promotion and rollback without a restart.

A swap builds, loads and warms the new version first and only then replaces the entry in the inference
service's model table (one dict assignment). Requests already running hold the old task object and
finish on it; the next request gets the new one. Nothing is unloaded under a running request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path

from annotation_server.errors import CorruptFileError
from annotation_server.inference.engine import InferenceService
from annotation_server.inference.model_sources import BundleModel
from annotation_server.inference.task import InferTask
from annotation_server.registry.records import ModelVersion
from annotation_server.registry.registry import ModelRegistry

logger = logging.getLogger(__name__)


def register_sources(
    registry: ModelRegistry, sources: list[BundleModel]
) -> tuple[dict[str, BundleModel], dict[str, str]]:
    """Register each declared bundle (once) and point it at the version the registry serves.

    Returns the sources to build, rewritten to their serving version's folder, and the reasons of those
    that could not be registered and have no serving version to fall back on.
    """
    resolved: dict[str, BundleModel] = {}
    failed: dict[str, str] = {}
    for source in sources:
        try:
            registry.ensure_registered(source.name, Path(source.path))
        except Exception as exc:
            logger.error("model %s: shipped bundle not registered: %s", source.name, exc)
            if registry.serving(source.name) is None:
                failed[source.name] = f"{type(exc).__name__}: {exc}"
                continue
        serving = registry.serving(source.name)
        assert serving is not None
        resolved[source.name] = replace(source, path=Path(serving.path))
    return resolved, failed


def build_version(source: BundleModel, version: ModelVersion, device: str) -> InferTask:
    """A loaded, warmed-up task serving `version` (its `version` attribute is the registry number)."""
    task = replace(source, path=Path(version.path)).build()
    task.version = str(version.version)
    task.load(device)
    task.warmup()
    return task


class ServingModels:
    """The registry-backed models of one server and the lock that serialises their swaps."""

    def __init__(
        self, registry: ModelRegistry, sources: dict[str, BundleModel], inference: InferenceService, device: str
    ) -> None:
        self.registry = registry
        self.sources = dict(sources)
        self.inference = inference
        self.device = device
        self._lock = threading.Lock()
        # Versions the registry names but that would not load: reported in /info/, not retried every few seconds.
        self.errors: dict[str, str] = {}
        self._unloadable: dict[str, int] = {}

    def serving_version(self, model: str) -> int | None:
        task = self.inference.tasks.get(model)
        return int(task.version) if task is not None and model in self.sources else None

    def sync(self, model: str | None = None) -> list[str]:
        """Swap in every model whose serving version changed in the registry (by the API, CLI or a job)."""
        changed = []
        with self._lock:
            for name in [model] if model else list(self.sources):
                if name not in self.sources:
                    continue
                number = self.registry.serving_number(name)  # one query: this runs every few seconds
                if number is None or self.serving_version(name) == number or self._unloadable.get(name) == number:
                    continue
                wanted = self.registry.get(name, number)
                try:
                    task = self.inference.call(partial(build_version, self.sources[name], wanted, self.device))
                except Exception as exc:
                    self._unloadable[name] = number
                    self.errors[name] = f"{wanted.label} cannot be loaded ({type(exc).__name__}: {exc}); " + (
                        f"version {self.serving_version(name)} keeps serving"
                    )
                    logger.exception("could not load %s; the previous version keeps serving", wanted.label)
                    continue
                self._swap(name, task, wanted)
                changed.append(name)
        return changed

    def _swap(self, name: str, task: InferTask, version: ModelVersion) -> None:
        previous = self.serving_version(name)
        self.inference.tasks[name] = task  # one assignment: requests in flight keep the task they hold
        self._unloadable.pop(name, None)
        self.errors.pop(name, None)
        logger.info("now serving %s (was version %s)", version.label, previous)

    def promote(self, model: str, version: int, actor: str = "admin", reason: str = "") -> ModelVersion:
        """Load and warm the version first; only a version that loads becomes the serving one."""
        candidate = self.registry.get(model, version)
        try:
            task = self.inference.call(partial(build_version, self.sources[model], candidate, self.device))
        except Exception as exc:
            raise CorruptFileError(
                f"{candidate.label} was not promoted: it cannot be loaded ({type(exc).__name__}: {exc}); "
                f"version {self.serving_version(model)} keeps serving"
            ) from exc
        with self._lock:
            promoted = self.registry.promote(model, version, actor, reason)
            self._swap(model, task, promoted)
        return promoted

    def rollback(self, model: str, to: int | None = None, actor: str = "admin", reason: str = "") -> ModelVersion:
        restored = self.registry.rollback(model, to, actor, reason)
        self.sync(model)
        return restored

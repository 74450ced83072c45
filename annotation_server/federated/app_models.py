"""Which of an app's models a federation can train, and the bundle it starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from annotation_server.errors import NotFoundError
from annotation_server.learning.finetune import FineTuneRecipe


def trainable_model(app: Any, model: str | None) -> str:
    """`model`, or the app's first trainable model; a clear error when the app cannot train it."""
    trainers = dict(app.trainers)
    chosen = model or next(iter(trainers), None)
    if chosen is None or chosen not in trainers:
        known = ", ".join(sorted(trainers)) or "none"
        what = f"model '{chosen}'" if chosen else f"app '{app.name}'"
        raise NotFoundError(f"{what} cannot be trained federatedly; trainable models of '{app.name}': {known}")
    return chosen


def fine_tune_recipe(app: Any, model: str) -> FineTuneRecipe:
    return dict(app.trainers)[trainable_model(app, model)]


def shipped_bundle(app: Any, model: str) -> Path:
    """The bundle the app declares for `model` (the architecture every site shares, and default initial weights)."""
    for source in app.models:
        if getattr(source, "name", None) == model and getattr(source, "path", None) is not None:
            return Path(source.path)
    raise NotFoundError(f"app '{app.name}' declares no bundle for model '{model}'")

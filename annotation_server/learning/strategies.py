"""Next-sample strategies. Built-ins mirror MONAI Label's: random, first and last unlabeled image.

A strategy only picks an id; the ActiveLearningService records the pick and builds the response, so
an app's own strategy is a few lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from annotation_server.datastore import Datastore


@dataclass(frozen=True)
class Pick:
    """A chosen image plus why (e.g. its score), shown under the answer's `strategy.<name>`."""

    image_id: str
    info: dict[str, Any] = field(default_factory=dict)


class Strategy(Protocol):
    description: str

    def select(self, datastore: Datastore, request: dict[str, Any], exclude: tuple[str, ...]) -> str | Pick | None:
        """Return the id (or a Pick) of the image to annotate next, or None when there is nothing left."""
        ...


class FirstStrategy:
    description = "First unlabeled image (by id)"

    def select(self, datastore: Datastore, request: dict[str, Any], exclude: tuple[str, ...]) -> str | None:
        return datastore.first_unlabeled(exclude=exclude)


class LastStrategy:
    description = "Last unlabeled image (by id)"

    def select(self, datastore: Datastore, request: dict[str, Any], exclude: tuple[str, ...]) -> str | None:
        return datastore.first_unlabeled(last=True, exclude=exclude)


class RandomStrategy:
    description = "Random unlabeled image, favouring those not offered recently"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def select(self, datastore: Datastore, request: dict[str, Any], exclude: tuple[str, ...]) -> str | None:
        return datastore.random_unlabeled("random", self._rng, exclude=exclude)


def builtin_strategies() -> dict[str, Strategy]:
    return {"random": RandomStrategy(), "first": FirstStrategy(), "last": LastStrategy()}

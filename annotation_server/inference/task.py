"""What a model is to the server: an InferTask that turns a volume plus request params into a mask.

Apps declare InferTasks; the server never needs to know whether one is a network, a bundle or a
classic image-processing tool. Masks come back on the input volume's exact grid, holding the app's
configured label values; the engine does value remapping and writing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from annotation_server.imaging import Volume
from annotation_server.inference.params import InferParams

ModelType = Literal["segmentation", "deepgrow", "deepedit", "scribbles", "detection", "classification", "others"]


@dataclass
class InferResult:
    """A mask on the input grid (configured label values) and what describes it."""

    mask: np.ndarray
    label_names: dict[str, int]
    extra: dict[str, Any] = field(default_factory=dict)


class InferTask(ABC):
    """A servable model. Subclasses set the class attributes or pass them to __init__."""

    def __init__(
        self,
        name: str,
        type: ModelType,
        labels: dict[str, int],
        description: str,
        version: str = "1",
        dimension: int = 3,
    ) -> None:
        self.name = name
        self.type = type
        self.labels = dict(labels)
        self.description = description
        self.version = version
        self.dimension = dimension

    def config(self) -> dict[str, Any]:
        """Options shown by clients (3D Slicer renders lists as dropdowns) and sent back in params."""
        return {}

    def weights_path(self) -> Path | None:
        """The weights file behind this model, if it has one (served by GET /model/{name})."""
        return None

    def load(self, device: str) -> None:  # noqa: B027 - optional hook, most classic tools need nothing
        """Load weights onto `device` once at server start (not per request)."""

    def prepare(self, volume: Volume) -> object | None:
        """Optional per-image work done once when an annotator opens the image (so click 1 is a warm click)."""
        return None

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """One dummy pass at start, so the first real request does not pay for lazy initialisation."""

    @property
    def is_interactive(self) -> bool:
        return self.type in ("deepgrow", "deepedit", "scribbles")

    @abstractmethod
    def infer(self, volume: Volume, params: InferParams) -> InferResult:
        """Run on `volume`; must return a new mask with `volume.array.shape` (callers may edit it in place)."""

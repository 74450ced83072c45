"""Models declared by reference: a bundle folder becomes an InferTask when the server starts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from annotation_server.inference.task import InferTask


@dataclass(frozen=True)
class BundleModel:
    """A MONAI bundle served under `name`. `kind` defaults to the bundle's own `annotation_server.type`
    (`deepgrow`/`deepedit` -> click-guided), else automatic segmentation."""

    path: Path
    name: str
    kind: Literal["segmentation", "click"] | None = None
    labels: Mapping[str, int] | None = None
    description: str | None = None

    def _kind(self) -> str:
        if self.kind is not None:
            return self.kind
        try:
            metadata = json.loads((Path(self.path) / "configs" / "metadata.json").read_text())
        except (OSError, ValueError):
            return "segmentation"
        declared = metadata.get("annotation_server", {}).get("type", "segmentation")
        return "click" if declared in ("deepgrow", "deepedit") else "segmentation"

    def build(self) -> InferTask:
        labels = dict(self.labels) if self.labels is not None else None
        if self._kind() == "click":
            from annotation_server.inference.click_task import BundleClickTask

            return BundleClickTask(self.path, name=self.name, labels=labels, description=self.description)
        from annotation_server.inference.bundle_task import BundleSegmentationTask

        return BundleSegmentationTask(self.path, name=self.name, labels=labels, description=self.description)

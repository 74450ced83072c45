"""A MONAI bundle served as an automatic segmentation model (type `segmentation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from annotation_server.imaging import Volume
from annotation_server.inference.bundle import Bundle, load_bundle
from annotation_server.inference.bundle_runtime import BundleRuntime
from annotation_server.inference.model_space import volume_to_metatensor
from annotation_server.inference.params import InferParams
from annotation_server.inference.task import InferResult, InferTask, ModelType


class BundleTask(InferTask):
    """What every bundle-backed model shares: its weights file, their checksum, one runtime per device."""

    def __init__(self, bundle: Bundle, name: str, type: ModelType, labels: dict[str, int], description: str) -> None:
        self.bundle = bundle
        super().__init__(name=name, type=type, labels=labels, description=description, version=bundle.version)
        self.runtime: BundleRuntime | None = None

    def weights_path(self) -> Path | None:
        return self.bundle.weights

    def config(self) -> dict[str, Any]:
        return {"sha256": self.bundle.sha256}

    def load(self, device: str) -> None:
        self.runtime = BundleRuntime(self.bundle, device)

    def warmup(self) -> None:
        self._runtime().warmup()

    def _runtime(self) -> BundleRuntime:
        if self.runtime is None:  # used without a server start (scripts, tests)
            self.load("cpu")
        assert self.runtime is not None
        return self.runtime


class BundleSegmentationTask(BundleTask):
    """Serves any bundle whose network maps an image to per-class channels.

    `labels` maps the bundle's channel names to the app's label values (defaults to the channel indices),
    so a bundle trained with other numbering still writes the app's values.
    """

    def __init__(
        self,
        path: Path | str,
        name: str | None = None,
        labels: dict[str, int] | None = None,
        description: str | None = None,
        type: ModelType = "segmentation",
    ) -> None:
        bundle = load_bundle(path)
        channels = bundle.channel_labels
        values = {n: (labels or {}).get(n, index) for n, index in channels.items()}
        super().__init__(bundle, name or bundle.name, type, values, description or bundle.description)
        self._lookup = np.zeros(max(channels.values(), default=0) + 1, dtype=np.uint16)
        for label_name, index in channels.items():
            self._lookup[index] = values[label_name]

    def infer(self, volume: Volume, params: InferParams) -> InferResult:
        runtime = self._runtime()
        channels = runtime.run({runtime.image_key: volume_to_metatensor(volume.array, volume)}, volume.geometry)
        mask = self._lookup[np.clip(channels, 0, len(self._lookup) - 1)]
        return InferResult(mask=mask, label_names=dict(self.labels))

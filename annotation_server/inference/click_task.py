"""A click-guided bundle (image + foreground/background guidance -> the clicked object), type `deepgrow`.

Only a region around the clicks is inferred (its size in mm comes from the bundle), so a click costs the
same on a 512 x 512 x 300 study as on a small crop; the mask is pasted back into the full grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from annotation_server.errors import InvalidRequestError
from annotation_server.imaging import Geometry, Volume
from annotation_server.inference.bundle import load_bundle
from annotation_server.inference.bundle_runtime import volume_to_metatensor
from annotation_server.inference.bundle_task import BundleTask
from annotation_server.inference.guidance import render_guidance, roi_around
from annotation_server.inference.params import InferParams, Point, check_points
from annotation_server.inference.task import InferResult


def crop_volume(volume: Volume, roi: tuple[slice, slice, slice]) -> Volume:
    """The sub-volume in `roi` with an affine that keeps every voxel at its world position."""
    start = np.array([s.start for s in roi] + [1], dtype=float)
    affine = volume.geometry.affine.copy()
    affine[:, 3] = volume.geometry.affine @ start
    array = volume.array[roi]
    return Volume(array=array, geometry=Geometry(array.shape, affine), source_format=volume.source_format)


def keep_clicked_components(mask: np.ndarray, foreground: list[Point]) -> np.ndarray:
    """Drop blobs no foreground click touches: the user asked for the object under the clicks."""
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    keep = {int(components[tuple(p)]) for p in foreground} - {0}
    if not keep:
        return mask
    return np.isin(components, list(keep)).astype(mask.dtype)


class BundleClickTask(BundleTask):
    """Serves a click-guided bundle; `metadata.json` -> `annotation_server` gives roi_mm and guidance_sigma_mm."""

    def __init__(
        self,
        path: Path | str,
        name: str | None = None,
        labels: dict[str, int] | None = None,
        description: str | None = None,
    ) -> None:
        bundle = load_bundle(path)
        super().__init__(
            bundle, name or bundle.name, "deepgrow", labels or {"object": 1}, description or bundle.description
        )
        self.roi_mm = [float(v) for v in bundle.extras.get("roi_mm", [160.0, 160.0, 160.0])]
        self.sigma_mm = float(bundle.extras.get("guidance_sigma_mm", 5.0))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "roi_mm": self.roi_mm}

    def _clicks(self, params: InferParams) -> tuple[list[Point], list[Point]]:
        """DeepGrow's foreground/background, or DeepEdit's per-label lists for the current label."""
        foreground = list(params.foreground)
        if not foreground and params.label:
            foreground = params.extra_points(params.label)
        return foreground, list(params.background)

    def infer(self, volume: Volume, params: InferParams) -> InferResult:
        foreground, background = self._clicks(params)
        if not foreground:
            raise InvalidRequestError(
                f"model '{self.name}' needs at least one foreground click: params {{\"foreground\": [[i, j, k]]}}"
            )
        shape = volume.geometry.shape
        check_points(foreground, shape, "foreground")
        check_points(background, shape, "background")
        spacing = volume.geometry.spacing
        roi = roi_around(foreground, shape, spacing, self.roi_mm)
        sub = crop_volume(volume, roi)
        offset = np.array([s.start for s in roi])

        def local(points: list[Point]) -> list[Point]:
            inside = []
            for point in points:
                p = np.asarray(point) - offset
                if np.all(p >= 0) and np.all(p < sub.geometry.shape):
                    inside.append(tuple(int(v) for v in p))
            return inside

        guidance = render_guidance(sub.geometry.shape, spacing, local(foreground), local(background), self.sigma_mm)
        runtime = self._runtime()
        inputs = {
            "image": volume_to_metatensor(sub.array, sub),
            "guidance": volume_to_metatensor(guidance, sub, channel_first=True),
        }
        channels = runtime.run(inputs, sub.geometry.shape)
        local_mask = keep_clicked_components((channels == 1).astype(np.uint8), local(foreground))
        mask = np.zeros(shape, dtype=np.uint8)
        mask[roi] = local_mask
        segment = params.label or next(iter(self.labels), "object")
        return InferResult(mask=mask, label_names={segment: 1}, extra={"roi": [[s.start, s.stop] for s in roi]})

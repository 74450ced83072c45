"""A click-guided bundle (image + foreground/background guidance -> the clicked object), type `deepgrow`.

The image is brought into the network's space once (the bundle's own orientation, spacing and intensity
transforms) and kept with the cached volume. A click then costs: map the clicks into that space, cut one
network patch around them, draw the guidance there, one forward pass, and map the patch's labels back onto
the input grid (nearest neighbour) around the clicks. Nothing scales with the image size, so a click costs
the same on a 512 x 512 x 300 study as on a small crop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from annotation_server.errors import InvalidRequestError
from annotation_server.imaging import Geometry, Volume
from annotation_server.inference.bundle import load_bundle
from annotation_server.inference.bundle_task import BundleTask
from annotation_server.inference.guidance import render_guidance
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


@dataclass
class PreparedImage:
    """An image in the network's space, made once per cached volume."""

    image: torch.Tensor  # (1, x, y, z), intensity-normalised
    to_network: np.ndarray  # input voxel index -> network voxel index (4 x 4)
    spacing: tuple[float, float, float]


def channel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Argmax over the channel axis as uint8. torch.argmax over a leading axis of a 3-D volume is slow on
    CPU (tens of ms for 64^3, most of a click's overhead); a comparison does the two-class case in ~1 ms."""
    if logits.shape[0] == 2:
        return (logits[1] > logits[0]).to(torch.uint8)
    return torch.argmax(torch.movedim(logits, 0, -1).contiguous(), dim=-1).to(torch.uint8)


def _network_box(centre: np.ndarray, patch: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    starts = [min(max(round(c - p / 2), 0), max(n - p, 0)) for c, p, n in zip(centre, patch, shape, strict=True)]
    return tuple(slice(a, min(a + p, n)) for a, p, n in zip(starts, patch, shape, strict=True))


def _back_to_input(
    pred: np.ndarray, box: tuple[slice, ...], to_network: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The input-grid box the network patch covers, and its labels there (nearest network voxel)."""
    corners = np.array(
        [[s.start if b == 0 else s.stop - 1 for s, b in zip(box, bits, strict=True)] for bits in np.ndindex(2, 2, 2)],
        dtype=float,
    )
    to_input = np.linalg.inv(to_network)
    mapped = (to_input[:3, :3] @ corners.T).T + to_input[:3, 3]
    lo = np.clip(np.floor(mapped.min(axis=0) - 1), 0, np.asarray(shape) - 1).astype(int)
    hi = np.clip(np.ceil(mapped.max(axis=0) + 2), 1, np.asarray(shape)).astype(int)
    input_box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    linear = to_network[:3, :3]
    offset = np.array([s.start for s in box])
    if np.count_nonzero(np.abs(linear) > 1e-6) == 3 and np.all(np.count_nonzero(np.abs(linear) > 1e-6, axis=0) == 1):
        # axis-aligned (a permutation with flips and scaling): one index table per axis
        axes = []
        for axis in range(3):
            row = int(np.argmax(np.abs(linear[:, axis])))
            idx = np.arange(lo[axis], hi[axis])
            axes.append((row, np.floor(linear[row, axis] * idx + to_network[row, 3] + 0.5).astype(int) - offset[row]))
        order = [row for row, _ in axes]
        tables = [table for _, table in axes]
        valid = [(t >= 0) & (t < pred.shape[r]) for r, t in zip(order, tables, strict=True)]
        gathered = np.zeros([len(t) for t in tables], dtype=pred.dtype)
        if not all(v.any() for v in valid):
            return input_box, gathered
        # Each table is monotonic, so the indices that land inside the patch form one run per axis: a slice.
        inside = tuple(slice(int(np.argmax(v)), len(v) - int(np.argmax(v[::-1]))) for v in valid)
        source = np.transpose(pred, order)  # axis a <- network axis order[a] (not argsort: 3-cycles)
        for axis, (table, run) in enumerate(zip(tables, inside, strict=True)):  # one axis at a time: 3 cheap takes
            source = source.take(table[run], axis=axis)
        gathered[inside] = source
        return input_box, gathered
    grid = np.indices(hi - lo).reshape(3, -1) + lo[:, None]
    index = np.floor(linear @ grid + to_network[:3, 3:4] + 0.5).astype(int) - offset[:, None]
    valid = np.all((index >= 0) & (index < np.asarray(pred.shape)[:, None]), axis=0)
    values = np.zeros(grid.shape[1], dtype=pred.dtype)
    values[valid] = pred[tuple(index[:, valid])]
    return input_box, values.reshape(hi - lo)


def _seeds(
    points: list[Point], prepared: PreparedImage, box: tuple[slice, ...], shape: tuple[int, ...]
) -> list[tuple[int, ...]]:
    """The clicks as voxels of the network patch at `box` (those that fall inside it)."""
    array = np.asarray(points, dtype=float).reshape(-1, 3)
    mapped = (prepared.to_network[:3, :3] @ array.T).T + prepared.to_network[:3, 3]
    local = np.floor(mapped - np.array([b.start for b in box]) + 0.5).astype(int)
    return [tuple(int(v) for v in p) for p in local if np.all(p >= 0) and np.all(p < np.asarray(shape))]


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
        self._prepared_key = f"prepared:{self.name}:{bundle.sha256}"

    def prepare(self, volume: Volume) -> PreparedImage:
        """The volume in the network's space; kept on the volume, so it lives as long as the cached volume."""
        prepared = volume.meta.get(self._prepared_key)
        if prepared is None:
            runtime = self._runtime()
            in_model = runtime.model_image(volume)  # the one stored-grid <-> model-space map (model_space.py)
            prepared = PreparedImage(
                image=in_model.tensor.to(runtime.device), to_network=in_model.to_model, spacing=in_model.spacing
            )
            volume.meta[self._prepared_key] = prepared
        return prepared

    @property
    def patch(self) -> tuple[int, int, int]:
        roi = getattr(self._runtime().inferer, "roi_size", None) or (64, 64, 64)
        return tuple(int(v) for v in roi)  # type: ignore[return-value]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "roi_mm": self.roi_mm}

    def _clicks(self, params: InferParams) -> tuple[list[Point], list[Point]]:
        """DeepGrow's foreground/background, or DeepEdit's per-label lists for the current label."""
        foreground = list(params.foreground)
        if not foreground and params.label:
            foreground = params.extra_points(params.label)
        return foreground, list(params.background)

    def network_patch(
        self, volume: Volume, foreground: list[Point], background: list[Point]
    ) -> tuple[torch.Tensor, tuple[slice, ...], PreparedImage]:
        """The network input for these clicks: one patch of image + guidance, and where it sits."""
        prepared = self.prepare(volume)
        device = self._runtime().device

        def to_network(points: list[Point]) -> np.ndarray:
            array = np.asarray(points, dtype=float).reshape(-1, 3)
            return (prepared.to_network[:3, :3] @ array.T).T + prepared.to_network[:3, 3]

        fg_net, bg_net = to_network(foreground), to_network(background)
        box = _network_box(fg_net.mean(axis=0), self.patch, tuple(prepared.image.shape[1:]))
        start = np.array([b.start for b in box])
        size = tuple(b.stop - b.start for b in box)

        def local(points: np.ndarray) -> list[tuple[int, int, int]]:
            rounded = np.floor(points - start + 0.5).astype(int)
            return [tuple(int(v) for v in p) for p in rounded if np.all(p >= 0) and np.all(p < size)]

        # One zeroed (image, foreground, background) array, filled in place: no per-click concatenation.
        inputs = np.zeros((3, *self.patch), dtype=np.float32)
        render_guidance(self.patch, prepared.spacing, local(fg_net), local(bg_net), self.sigma_mm, out=inputs[1:])
        window = (slice(0, 1), *(slice(0, n) for n in size))
        if prepared.image.device.type == "cpu":
            inputs[window] = prepared.image.numpy()[(slice(None), *box)]  # numpy's copy: cheaper than torch's here
            return torch.from_numpy(inputs), box, prepared
        network_input = torch.from_numpy(inputs).to(device)
        network_input[window] = prepared.image[(slice(None), *box)]
        return network_input, box, prepared

    def infer(self, volume: Volume, params: InferParams) -> InferResult:
        foreground, background = self._clicks(params)
        if not foreground:
            raise InvalidRequestError(
                f"model '{self.name}' needs at least one foreground click: params {{\"foreground\": [[i, j, k]]}}"
            )
        shape = volume.geometry.shape
        check_points(foreground, shape, "foreground")
        check_points(background, shape, "background")
        network_input, box, prepared = self.network_patch(volume, foreground, background)
        forward_started = time.perf_counter()
        logits = self._runtime().forward_patch(network_input)
        forward_s = time.perf_counter() - forward_started
        size = tuple(b.stop - b.start for b in box)
        pred = channel_argmax(logits)[tuple(slice(0, n) for n in size)].cpu().numpy()
        # Keep only the blobs the foreground clicks touch, on whichever grid is smaller: the network patch for
        # a fine (e.g. 0.7 mm) image, where the same step on the image grid costs more than the forward pass.
        finer_input = abs(np.linalg.det(prepared.to_network[:3, :3])) < 1.0
        if finer_input:
            pred = keep_clicked_components((pred == 1).astype(np.uint8), _seeds(foreground, prepared, box, pred.shape))
        input_box, local_mask = _back_to_input(pred, box, prepared.to_network, shape)
        if not finer_input:
            offset = np.array([s.start for s in input_box])
            seeds = [
                tuple(int(v) for v in np.asarray(p) - offset)
                for p in foreground
                if np.all(np.asarray(p) >= offset) and np.all(np.asarray(p) - offset < local_mask.shape)
            ]
            local_mask = keep_clicked_components((local_mask == 1).astype(np.uint8), seeds)
        mask = np.zeros(shape, dtype=np.uint8)
        mask[input_box] = local_mask
        segment = params.label or next(iter(self.labels), "object")
        extra = {"roi": [[s.start, s.stop] for s in input_box], "forward_s": round(forward_s, 5)}
        return InferResult(mask=mask, label_names={segment: 1}, extra=extra)

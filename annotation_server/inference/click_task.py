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
from annotation_server.imaging.boxes import grow_box, mask_box
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


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(any object class) per voxel, from (classes, x, y, z) logits: 1 - softmax's background share.

    Two classes reduce to a sigmoid of the logit difference (no softmax over a leading axis, which is slow on
    CPU for a 3-D volume)."""
    if logits.shape[0] == 2:
        return torch.sigmoid(logits[1].float() - logits[0].float())
    return 1.0 - torch.softmax(logits.float(), dim=0)[0]


def _linear_along(source: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """`source` sampled at fractional positions `coords` along `axis` (linear; 0 beyond half a voxel past an end).

    The half-voxel margin is the footprint of the end voxels themselves, so a label that fills the patch to its
    border still reaches the input voxels whose centres lie within that border voxel."""
    size = source.shape[axis]
    low = np.floor(coords).astype(int)
    weight = (coords - low).astype(np.float32)
    shape = [1] * source.ndim
    shape[axis] = -1
    weight = weight.reshape(shape)
    below = source.take(np.clip(low, 0, size - 1), axis=axis)
    above = source.take(np.clip(low + 1, 0, size - 1), axis=axis)
    values = below + (above - below) * weight
    outside = (coords < -0.5) | (coords > size - 0.5)
    if outside.any():
        index = [slice(None)] * source.ndim
        index[axis] = outside  # type: ignore[call-overload]
        values[tuple(index)] = 0.0
    return values


def _below_half_outside(probability: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """`probability` with every voxel outside `kept` pushed below 0.5: a patch-grid decision (a blob the clicks
    do not touch, fat peeled off) that the interpolation back onto the image grid then respects."""
    return np.where(kept, probability, np.minimum(probability, np.float32(0.49)))


def _network_box(centre: np.ndarray, patch: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    starts = [min(max(round(c - p / 2), 0), max(n - p, 0)) for c, p, n in zip(centre, patch, shape, strict=True)]
    return tuple(slice(a, min(a + p, n)) for a, p, n in zip(starts, patch, shape, strict=True))


def _back_to_input(
    probability: np.ndarray, box: tuple[slice, ...], to_network: np.ndarray, shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The input-grid box the network patch covers, and the object there: the patch's foreground probability
    interpolated (trilinear) at each input voxel's centre, then thresholded at 0.5.

    Thresholding on the network grid and copying the nearest network voxel's label instead puts the boundary
    on the coarser of the two grids: on the real 3 mm CT this cost the 2 mm click model 0.01-0.02 Dice per
    kidney (benchmarks/kidney_models.py)."""
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
    probability = probability.astype(np.float32, copy=False)
    if np.count_nonzero(np.abs(linear) > 1e-6) == 3 and np.all(np.count_nonzero(np.abs(linear) > 1e-6, axis=0) == 1):
        # Axis-aligned (a permutation with flips and scaling): trilinear is three 1-D interpolations, done only
        # where the object can be. A value interpolated from voxels all below 0.5 stays below 0.5, so the patch
        # is cut to the object's box plus one voxel; on a 0.7 mm image that is a few times less work than the
        # whole patch's footprint (tens of ms per click).
        result = np.zeros(tuple(hi - lo), dtype=np.uint8)
        object_box = mask_box(probability >= 0.5)
        if object_box is None:
            return input_box, result
        object_box = grow_box(object_box, 1, probability.shape)
        start = np.array([s.start for s in object_box])
        source = probability[object_box]
        rows = [int(np.argmax(np.abs(linear[:, axis]))) for axis in range(3)]
        source = np.transpose(source, rows)  # axis a <- network axis rows[a] (not argsort: 3-cycles)
        runs = []
        for axis, row in enumerate(rows):
            coords = linear[row, axis] * np.arange(lo[axis], hi[axis]) + to_network[row, 3] - offset[row] - start[row]
            inside = np.flatnonzero((coords >= -0.5) & (coords <= source.shape[axis] - 0.5))
            if len(inside) == 0:
                return input_box, result
            run = slice(int(inside[0]), int(inside[-1]) + 1)  # coords are monotonic: one run
            source = _linear_along(source, coords[run], axis)
            runs.append(run)
        result[tuple(runs)] = source >= 0.5
        return input_box, result
    grid = np.indices(hi - lo).reshape(3, -1) + lo[:, None]
    coords = linear @ grid + to_network[:3, 3:4] - offset[:, None]
    values = ndimage.map_coordinates(probability, coords, order=1, mode="nearest")
    outside = np.any((coords < -0.5) | (coords > np.asarray(probability.shape)[:, None] - 0.5), axis=0)
    values[outside] = 0.0
    return input_box, (values >= 0.5).astype(np.uint8).reshape(hi - lo)


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

    def _patch_postprocessing(self, probability: np.ndarray, image: torch.Tensor) -> np.ndarray:
        """The bundle's `patch_postprocessing` (if any) on the thresholded patch; voxels it clears drop below 0.5
        so the interpolation back onto the image grid leaves them out."""
        steps = self._runtime().patch_postprocessing
        if steps is None:
            return probability
        labels = torch.from_numpy((probability >= 0.5).astype(np.float32))[None]
        kept = np.asarray(steps({"pred": labels, "image": image.detach().cpu()})["pred"])[0] > 0
        return _below_half_outside(probability, kept)

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
        window = tuple(slice(0, n) for n in size)
        probability = foreground_probability(logits)[window].cpu().numpy()
        probability = self._patch_postprocessing(probability, network_input[(slice(0, 1), *window)])
        # Keep only the blobs the foreground clicks touch, on whichever grid is smaller: the network patch for
        # a fine (e.g. 0.7 mm) image, where the same step on the image grid costs more than the forward pass.
        finer_input = abs(np.linalg.det(prepared.to_network[:3, :3])) < 1.0
        if finer_input:
            kept = keep_clicked_components(
                (probability >= 0.5).astype(np.uint8), _seeds(foreground, prepared, box, probability.shape)
            )
            probability = _below_half_outside(probability, kept > 0)
        input_box, local_mask = _back_to_input(probability, box, prepared.to_network, shape)
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

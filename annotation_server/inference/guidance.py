"""Click guidance as image channels: a Gaussian blob (in millimetres) at every foreground/background click.

Guidance is drawn on the image's own grid and then goes through exactly the same geometric transforms
as the image (orientation, spacing, cropping), so a click lands on the same anatomy the user clicked
whatever the input's orientation or voxel size. Training draws guidance with this same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Point = Sequence[int]


def render_guidance(
    shape: tuple[int, int, int],
    spacing: Sequence[float],
    foreground: Sequence[Point],
    background: Sequence[Point],
    sigma_mm: float = 5.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(2, i, j, k) float32: channel 0 foreground clicks, channel 1 background clicks, each in [0, 1].

    `out`: a zeroed (2, *shape) float32 array to draw into (the click path draws straight into the network
    input, saving a copy per click).
    """
    guidance = np.zeros((2, *shape), dtype=np.float32) if out is None else out
    radius = [max(1, int(np.ceil(3 * sigma_mm / s))) for s in spacing]
    for channel, points in enumerate((foreground, background)):
        for point in points:
            lo = [max(0, int(p) - r) for p, r in zip(point, radius, strict=True)]
            hi = [min(n, int(p) + r + 1) for p, r, n in zip(point, radius, shape, strict=True)]
            if any(a >= b for a, b in zip(lo, hi, strict=True)):
                continue
            axes = [(np.arange(a, b) - int(p)) * s for a, b, p, s in zip(lo, hi, point, spacing, strict=True)]
            d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
            blob = np.exp(-d2 / (2 * sigma_mm**2)).astype(np.float32)
            region = guidance[channel, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            np.maximum(region, blob, out=region)
    return guidance


def roi_around(
    points: Sequence[Point], shape: tuple[int, int, int], spacing: Sequence[float], size_mm: Sequence[float]
) -> tuple[slice, slice, slice]:
    """A box of `size_mm` centred on the clicks' bounding box (grown to hold them all), clipped to the image."""
    array = np.asarray(points, dtype=float)
    lo, hi = array.min(axis=0), array.max(axis=0)
    slices = []
    for axis in range(3):
        want = max(int(np.ceil(size_mm[axis] / spacing[axis])), int(hi[axis] - lo[axis]) + 1)
        want = min(want, shape[axis])
        start = round((lo[axis] + hi[axis]) / 2 - want / 2)
        start = min(max(start, 0), shape[axis] - want)
        slices.append(slice(start, start + want))
    return slices[0], slices[1], slices[2]

"""The standard simulated-click protocol for interactive segmentation.

First click at the object's centre (the inside voxel farthest from its boundary); every next click at
the centre of the largest error region: a foreground click in the largest missed part, or a background
click in the largest leak. Dice is recorded after each click. This is the protocol of the interactive
segmentation literature (DeepGrow/DeepEdit-style evaluation), so numbers are comparable between the
region-growing tool, the learned click model and their model cards.

Conventions: masks are 3-D arrays in file index order (i, j, k); clicks are voxel indices (i, j, k);
components are face-connected (6-connectivity in 3-D), the scipy default, so two errors that touch
only at an edge or corner count as separate regions. The volume border counts as boundary, so a
click is never placed on a cut face of a cropped object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["Point", "centre_of", "dice", "next_click", "simulate_clicks"]

Point = tuple[int, int, int]


def _as_masks(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    return a, b


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (any non-zero voxel is foreground); two empty masks agree perfectly.

    Both-empty is 1.0 rather than undefined so a model that correctly predicts "nothing here" is not
    punished; one empty and one not is 0.0.
    """
    a, b = _as_masks(a, b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def centre_of(region: np.ndarray, spacing: Sequence[float] | None = None) -> Point:
    """The voxel of ``region`` farthest from its boundary (ties: the first in index order).

    ``spacing`` (mm per axis) makes "farthest" physical on anisotropic scans. The array is padded with
    background first, so the volume border counts as boundary.
    """
    region = np.asarray(region).astype(bool)
    if not region.any():
        raise ValueError("cannot place a click in an empty region")
    padded = np.pad(region, 1)
    distance = ndimage.distance_transform_edt(padded, sampling=spacing)
    inner = distance[tuple(slice(1, -1) for _ in range(region.ndim))]
    flat = int(np.argmax(inner))
    return tuple(int(v) for v in np.unravel_index(flat, region.shape))  # type: ignore[return-value]


def next_click(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[Point, bool] | None:
    """Centre of the largest connected error region, and whether it is a foreground click.

    True means the region was missed (false negative: click foreground), False that it is a leak
    (false positive: click background). When the largest missed and leaked regions have the same size
    the missed one wins. None when the prediction equals the truth: there is nothing left to correct.
    """
    prediction, truth = _as_masks(prediction, truth)
    best: tuple[int, np.ndarray, bool] | None = None
    for errors, is_foreground in ((truth & ~prediction, True), (prediction & ~truth, False)):
        components, count = ndimage.label(errors)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), components == largest, is_foreground)
    if best is None:
        return None
    return centre_of(best[1], spacing), best[2]


def simulate_clicks(
    segment: Callable[[list[Point], list[Point]], np.ndarray],
    truth: np.ndarray,
    n_clicks: int,
    spacing: Sequence[float] | None = None,
) -> list[float]:
    """Dice after each of ``n_clicks`` simulated clicks.

    ``segment(foreground, background)`` gets the clicks so far (lists of (i, j, k), copies) and returns
    a mask shaped like ``truth``. The first click is the centre of ``truth``; every next one comes from
    ``next_click``. If a prediction is perfect the remaining entries repeat its Dice (1.0), so the list
    always has ``n_clicks`` entries and curves from different models line up.
    """
    truth = np.asarray(truth).astype(bool)
    if n_clicks < 1:
        raise ValueError(f"n_clicks must be at least 1, got {n_clicks}")
    if not truth.any():
        raise ValueError("the truth mask is empty: there is no object to click on")
    foreground: list[Point] = [centre_of(truth, spacing)]
    background: list[Point] = []
    scores: list[float] = []
    for index in range(n_clicks):
        prediction = np.asarray(segment(list(foreground), list(background)))
        if prediction.shape != truth.shape:
            raise ValueError(f"segment returned a mask of shape {prediction.shape}, expected {truth.shape}")
        prediction = prediction.astype(bool)
        scores.append(dice(prediction, truth))
        if index == n_clicks - 1:
            break
        click = next_click(prediction, truth, spacing)
        if click is None:
            scores += [scores[-1]] * (n_clicks - index - 1)
            break
        (foreground if click[1] else background).append(click[0])
    return scores

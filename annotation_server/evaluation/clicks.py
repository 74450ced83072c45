"""The standard simulated-click protocol for interactive segmentation.

First click at the object's centre (the inside voxel farthest from its boundary); every next click at
the centre of the largest error region: a foreground click in the largest missed part, or a background
click in the largest leak. Dice is recorded after each click. Used for the region-growing tool, the
learned click model and their model cards, so all numbers are comparable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Point = tuple[int, int, int]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks; two empty masks agree perfectly."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def centre_of(region: np.ndarray) -> Point:
    """The voxel of `region` farthest from its boundary (ties: the first in index order)."""
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(distance)), region.shape))  # type: ignore[return-value]


def next_click(prediction: np.ndarray, truth: np.ndarray) -> tuple[Point, bool] | None:
    """Centre of the largest connected error region and whether it is a foreground (missed) click.

    None when prediction equals truth.
    """
    prediction, truth = prediction.astype(bool), truth.astype(bool)
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
    return centre_of(best[1]), best[2]


def simulate_clicks(
    segment: Callable[[list[Point], list[Point]], np.ndarray], truth: np.ndarray, n_clicks: int
) -> list[float]:
    """Dice after each of `n_clicks` simulated clicks; `segment(foreground, background)` returns a mask."""
    truth = truth.astype(bool)
    foreground: list[Point] = [centre_of(truth)]
    background: list[Point] = []
    scores: list[float] = []
    for index in range(n_clicks):
        prediction = segment(list(foreground), list(background)).astype(bool)
        scores.append(dice(prediction, truth))
        if index == n_clicks - 1:
            break
        click = next_click(prediction, truth)
        if click is None:
            scores += [scores[-1]] * (n_clicks - index - 1)
            break
        (foreground if click[1] else background).append(click[0])
    return scores

"""The simulated-click protocol: clicks land where a careful annotator would click."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_server.evaluation.clicks import centre_of, dice, next_click, simulate_clicks


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_dice_edge_cases() -> None:
    a = np.zeros((4, 4, 4), bool)
    assert dice(a, a) == 1.0
    b = a.copy()
    b[0, 0, 0] = True
    assert dice(a, b) == 0.0 and dice(b, b) == 1.0
    c = b.copy()
    c[1, 1, 1] = True
    assert dice(b, c) == pytest.approx(2 / 3)


def test_centre_is_deepest_voxel() -> None:
    truth = _ball((21, 21, 21), (9, 11, 10), 5)
    assert centre_of(truth) == (9, 11, 10)


def test_next_click_targets_largest_miss_then_largest_leak() -> None:
    truth = _ball((40, 40, 40), (20, 20, 20), 10)
    shifted = _ball((40, 40, 40), (20, 20, 26), 10)
    point, is_foreground = next_click(shifted, truth)  # type: ignore[misc]
    assert is_foreground and truth[point] and not shifted[point] and point[2] < 20
    leak = truth | _ball((40, 40, 40), (20, 20, 36), 4)
    point, is_foreground = next_click(leak, truth)  # type: ignore[misc]
    assert not is_foreground and leak[point] and not truth[point]
    assert next_click(truth, truth) is None


def test_simulated_clicks_feed_the_segmenter() -> None:
    truth = _ball((30, 30, 30), (15, 15, 15), 8)
    calls: list[tuple[int, int]] = []

    def segment(foreground: list, background: list) -> np.ndarray:
        calls.append((len(foreground), len(background)))
        mask = np.zeros_like(truth)
        for point in foreground:
            mask |= _ball(truth.shape, point, 5)
        return mask & truth  # each click reveals more of the object, never a leak

    scores = simulate_clicks(segment, truth, 4)
    assert len(scores) == 4 and calls[0] == (1, 0) and calls[-1][0] > 1
    assert scores[-1] > scores[0]  # clicks in the missed parts help

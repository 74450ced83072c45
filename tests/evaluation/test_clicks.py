"""The simulated-click protocol (annotation_server.evaluation.clicks) on synthetic masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_server.evaluation.clicks import centre_of, dice, next_click, simulate_clicks


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_dice_known_values_and_empty_masks() -> None:
    empty = np.zeros((5, 5, 5), dtype=bool)
    one = empty.copy()
    one[0, 0, 0] = True
    two = one.copy()
    two[4, 4, 4] = True
    assert dice(empty, empty) == 1.0  # nothing to find and nothing found
    assert dice(one, empty) == 0.0 and dice(empty, one) == 0.0
    assert dice(one, one) == 1.0
    assert dice(one, two) == pytest.approx(2 * 1 / 3)
    labels = np.where(two, 7, 0).astype(np.uint8)  # any non-zero label counts as foreground
    assert dice(labels, two) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        dice(one, np.zeros((5, 5, 4), dtype=bool))


def test_dice_matches_monai() -> None:
    torch = pytest.importorskip("torch")
    compute_dice = pytest.importorskip("monai.metrics").compute_dice
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.random((12, 10, 8)) > 0.6
        b = rng.random((12, 10, 8)) > 0.4
        reference = compute_dice(
            torch.from_numpy(a[None, None].astype(np.float32)),
            torch.from_numpy(b[None, None].astype(np.float32)),
            include_background=True,
        )
        assert dice(a, b) == pytest.approx(float(reference), abs=1e-6)


def test_centre_is_the_deepest_voxel() -> None:
    truth = _ball((21, 21, 21), (9, 11, 10), 5)
    assert centre_of(truth) == (9, 11, 10)


def test_centre_never_lies_on_a_cut_face() -> None:
    """An object cropped by the volume border (like the kidneys at slice 0) is clicked inside, not on the cut."""
    truth = _ball((20, 20, 20), (10, 10, -2), 9)  # centre outside the volume, below slice 0
    i, j, k = centre_of(truth)
    assert truth[i, j, k] and k >= 2


def test_centre_uses_physical_spacing() -> None:
    """With thick slices a flat wide blob is deeper (in mm) than a small cube that is deeper in voxels."""
    region = np.zeros((40, 20, 12), dtype=bool)
    region[2:9, 2:9, 2:9] = True  # 7x7x7 voxels: 4 voxels deep
    region[20:35, 3:18, 5:8] = True  # 15x15x3 voxels: 2 voxels deep, but 10 mm deep at 5 mm slices
    assert centre_of(region)[0] < 10
    assert centre_of(region, spacing=(1.0, 1.0, 5.0))[0] >= 20
    with pytest.raises(ValueError, match="empty"):
        centre_of(np.zeros((3, 3, 3), dtype=bool))


def test_next_click_lands_in_the_missing_part_of_a_shifted_sphere() -> None:
    truth = _ball((40, 40, 40), (20, 20, 20), 10)
    prediction = _ball((40, 40, 40), (20, 20, 24), 8)  # smaller and shifted up in k: a big miss below
    point, is_foreground = next_click(prediction, truth)  # type: ignore[misc]
    assert is_foreground and truth[point] and not prediction[point]
    assert point[2] < 20  # in the thick missed bowl below the centre, not in the thin rim above
    leak = truth | _ball((40, 40, 40), (20, 20, 33), 6)  # everything found, plus a leak on top
    point, is_foreground = next_click(leak, truth)  # type: ignore[misc]
    assert not is_foreground and leak[point] and not truth[point] and point[2] > 30


def test_equal_miss_and_leak_ask_for_the_miss_first() -> None:
    truth = np.zeros((20, 20, 20), dtype=bool)
    truth[5:15, 5:15, 5:15] = True
    prediction = np.roll(truth, 4, axis=2)  # misses k 5..8 and leaks into k 15..18: 400 voxels each
    assert (truth & ~prediction).sum() == (prediction & ~truth).sum()
    point, is_foreground = next_click(prediction, truth)  # type: ignore[misc]
    assert is_foreground and 5 <= point[2] <= 8


def test_next_click_picks_the_largest_error_region_and_its_centre() -> None:
    truth = np.zeros((30, 30, 30), dtype=bool)
    truth[2:8, 2:8, 2:8] = True  # small miss (216 voxels)
    truth[15:28, 15:28, 15:28] = True  # big miss (2197 voxels)
    leak = np.zeros_like(truth)
    leak[10:13, 2:12, 2:12] = True  # 300-voxel leak: bigger than the small miss, smaller than the big one
    point, is_foreground = next_click(leak, truth)  # type: ignore[misc]
    assert is_foreground and point == (21, 21, 21)
    assert next_click(truth, truth) is None
    with pytest.raises(ValueError, match="same shape"):
        next_click(truth, truth[:-1])


def test_simulate_clicks_feeds_the_segmenter_and_records_dice() -> None:
    truth = np.zeros((20, 20, 30), dtype=bool)
    truth[5:15, 5:15, 5:15] = True  # 1000 voxels
    lower = np.zeros_like(truth)
    lower[5:15, 5:15, 5:10] = True  # 500 voxels of it
    leak = np.zeros_like(truth)
    leak[5:15, 5:15, 20:28] = True  # 800 voxels, apart from the object
    calls: list[tuple[list, list]] = []

    def segment(foreground: list, background: list) -> np.ndarray:
        """Finds the lower half and a leak; a background click in the leak removes it; a foreground
        click in the upper half completes the object."""
        calls.append((foreground, background))
        mask = lower.copy()
        if not any(leak[p] for p in background):
            mask |= leak
        if any(truth[p] and not lower[p] for p in foreground):
            mask |= truth
        return mask

    scores = simulate_clicks(segment, truth, 4)
    assert calls[0] == ([centre_of(truth)], [])  # first click: the object's centre
    assert len(calls[1][1]) == 1 and leak[calls[1][1][0]]  # the 800-voxel leak beats the 500-voxel miss
    assert len(calls[2][0]) == 2 and truth[calls[2][0][1]] and not lower[calls[2][0][1]]
    assert len(calls) == 3  # perfect after the third click: nothing left to click
    assert scores == pytest.approx([2 * 500 / (1000 + 1300), 2 * 500 / (1000 + 500), 1.0, 1.0])


def test_simulate_clicks_stops_clicking_when_perfect() -> None:
    truth = _ball((20, 20, 20), (10, 10, 10), 5)
    calls = []

    def perfect(foreground: list, background: list) -> np.ndarray:
        calls.append(1)
        return truth.copy()

    assert simulate_clicks(perfect, truth, 5) == [1.0] * 5
    assert len(calls) == 1


def test_simulate_clicks_rejects_bad_input() -> None:
    truth = _ball((10, 10, 10), (5, 5, 5), 3)
    with pytest.raises(ValueError, match="empty"):
        simulate_clicks(lambda fg, bg: truth, np.zeros_like(truth), 3)
    with pytest.raises(ValueError, match="at least 1"):
        simulate_clicks(lambda fg, bg: truth, truth, 0)
    with pytest.raises(ValueError, match="shape"):
        simulate_clicks(lambda fg, bg: truth[:-1], truth, 2)


def test_noc_and_worst_drop_read_a_dice_curve() -> None:
    from annotation_server.evaluation.click_paths import number_of_clicks, summarize, worst_drop

    curve = [0.70, 0.86, 0.84, 0.91, 0.95]
    assert number_of_clicks(curve, 0.85) == 2 and number_of_clicks(curve, 0.90) == 4
    assert number_of_clicks(curve, 0.99) is None
    assert worst_drop(curve) == pytest.approx(0.02) and worst_drop([0.5, 0.6, 0.7]) == 0.0
    summary = summarize(curve)
    assert summary["noc85"] == 2 and summary["noc90"] == 4 and summary["worst_drop"] == pytest.approx(0.02)

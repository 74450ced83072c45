"""The weight-free click tool (annotation_server.tools.region_growing): phantoms, bad input, real CT.

Phantoms have known truth, so every assertion compares against geometry, not against a stored output.
The real-CT test runs the standard click protocol against TotalSegmentator's kidney masks in
../shared/data and skips in a fresh clone, where that folder does not exist.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydantic
import pytest

from annotation_server.evaluation.clicks import dice, simulate_clicks
from annotation_server.tools.region_growing import RegionGrowingConfig, grow_region, prepare_roi

SPACING = (1.5, 1.5, 2.5)  # anisotropic on purpose: a swapped axis or spacing shows up as a wrong shape
CENTRE_MM = np.array([40.0, 48.0, 50.0])

# Real CT: best Dice within 5 protocol clicks measured 0.916 / 0.944 (example_ct_sm right / left kidney)
# and 0.934 / 0.954 (example_ct), see benchmarks/region_growing_dice.py. The brief's target is 0.80; the
# bar sits 0.03-0.07 below what is measured so that only a real regression fails, not float noise.
REAL_CT_MIN_BEST_DICE = 0.88


def _to_index(mm: np.ndarray | list[float]) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.round(np.asarray(mm) / np.asarray(SPACING)))  # type: ignore[return-value]


def _phantom(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A kidney-like ellipsoid (30 HU) in fat (-100 HU) touching a bigger 50 HU block; noise SD 10 HU."""
    shape = (72, 64, 40)
    grid = np.indices(shape).astype(float) * np.asarray(SPACING)[:, None, None, None]
    radii = (22.0, 15.0, 20.0)
    organ = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, CENTRE_MM, radii, strict=True)) <= 1
    block = (grid[0] >= 61.0) & (grid[0] < 100.0) & (np.abs(grid[1] - 48) < 30) & (np.abs(grid[2] - 50) < 30)
    image = np.full(shape, -100.0)
    image[block] = 50.0
    image[organ] = 30.0
    image += np.random.default_rng(seed).normal(0, 10, shape)
    return image.astype(np.int16), organ, block


# A config wide enough (30 +/- 3 x 10 HU) to accept the 50 HU block: makes the leak that clicks must fix.
LOOSE = RegionGrowingConfig(tolerance_sd=3.0, min_sd_hu=10.0)


def test_one_click_segments_the_organ_and_stays_out_of_the_touching_block() -> None:
    image, organ, block = _phantom()
    mask = grow_region(image, SPACING, [_to_index(CENTRE_MM)])
    assert mask.dtype == np.uint8 and mask.shape == image.shape and set(np.unique(mask)) <= {0, 1}
    assert dice(mask, organ) > 0.95
    assert (mask.astype(bool) & block).sum() < 0.02 * organ.sum()


def test_background_click_in_the_leak_removes_it() -> None:
    image, organ, block = _phantom()
    centre = _to_index(CENTRE_MM)
    leaked = grow_region(image, SPACING, [centre], [], LOOSE).astype(bool)
    assert (leaked & block).sum() > 1000  # the loose config really leaks, or this test proves nothing
    in_leak = _to_index(CENTRE_MM + np.array([32.0, 0.0, 0.0]))
    assert leaked[in_leak] and block[in_leak]
    cut = grow_region(image, SPACING, [centre], [in_leak], LOOSE).astype(bool)
    assert (cut & block).sum() < 0.05 * (leaked & block).sum()
    assert dice(cut, organ) > dice(leaked, organ) + 0.2
    assert dice(cut, organ) > 0.95
    assert not cut[in_leak]


def test_background_click_next_to_the_leak_helps_too() -> None:
    """A person clicks 'not this organ' on the neighbour, not always on a leaked voxel."""
    image, organ, block = _phantom()
    centre = _to_index(CENTRE_MM)
    leaked = grow_region(image, SPACING, [centre], [], LOOSE).astype(bool)
    beside = _to_index(CENTRE_MM + np.array([50.0, 0.0, 0.0]))
    assert block[beside] and not leaked[beside]
    cut = grow_region(image, SPACING, [centre], [beside], LOOSE).astype(bool)
    assert (cut & block).sum() < 0.9 * (leaked & block).sum()
    assert dice(cut, organ) > dice(leaked, organ)


def test_second_foreground_click_adds_a_lobe_behind_a_thin_neck() -> None:
    image, organ, _ = _phantom()
    image = image.astype(np.float32)
    grid = np.indices(image.shape).astype(float) * np.asarray(SPACING)[:, None, None, None]
    lobe = (grid[0] - 40) ** 2 + (grid[1] - 84) ** 2 + (grid[2] - 50) ** 2 <= 9.0**2
    neck = (np.abs(grid[0] - 40) < 0.8) & (np.abs(grid[2] - 50) < 1.3) & (grid[1] > 55) & (grid[1] < 80)
    assert not (lobe & organ).any()  # joined only through the one-voxel neck
    image[lobe | neck] = 30 + np.random.default_rng(1).normal(0, 10, int((lobe | neck).sum()))
    one = grow_region(image, SPACING, [_to_index(CENTRE_MM)]).astype(bool)
    two = grow_region(image, SPACING, [_to_index(CENTRE_MM), _to_index([40.0, 84.0, 50.0])]).astype(bool)
    assert (one & lobe).sum() < 0.05 * lobe.sum()  # the opening cut the neck
    assert (two & lobe).sum() > 0.9 * lobe.sum()
    assert (two & one).sum() >= 0.99 * one.sum()  # a foreground click adds, it does not take away
    assert dice(two & ~lobe, organ) > 0.95


def test_fine_scan_is_binned_and_mapped_back_in_place() -> None:
    """0.7 mm voxels are processed on a ~2 mm grid; the mask must come back aligned and smooth."""
    spacing = (0.7, 0.7, 0.9)
    shape = (101, 97, 83)
    grid = np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None]
    ball = (grid[0] - 35) ** 2 + (grid[1] - 34) ** 2 + (grid[2] - 37) ** 2 <= 20.0**2
    image = np.where(ball, 30.0, -100.0) + np.random.default_rng(2).normal(0, 15, shape)
    click = tuple(int(v) for v in np.round(np.array([35.0, 34.0, 37.0]) / np.asarray(spacing)))
    roi = prepare_roi(image, spacing, [click])
    assert roi.factor.tolist() == [2, 2, 2] and np.allclose(roi.spacing, [1.4, 1.4, 1.8])
    mask = grow_region(image, spacing, [click]).astype(bool)
    assert dice(mask, ball) > 0.95
    shift = np.argwhere(mask).mean(axis=0) - np.argwhere(ball).mean(axis=0)
    assert np.all(np.abs(shift) < 0.5)  # half a fine voxel: no off-by-one-bin shift on any axis


def test_roi_keeps_file_axis_order_and_spacing_per_axis() -> None:
    """(i, j, k) in, (i, j, k) out: ITK's (k, j, i) view must not leak through."""
    rng = np.random.default_rng(5)
    image = rng.integers(-50, 50, size=(30, 20, 10)).astype(np.int16)
    roi = prepare_roi(image, (1.0, 2.0, 3.0), [(15, 10, 5)], RegionGrowingConfig(median_radius_mm=0))
    assert roi.factor.tolist() == [2, 1, 1] and np.allclose(roi.spacing, [2.0, 2.0, 3.0])
    expected = image.astype(np.float32)[0:30:2] / 2 + image.astype(np.float32)[1:30:2] / 2
    assert roi.image.shape == (15, 20, 10)
    assert np.allclose(roi.image, expected, atol=1e-3)


def test_big_volume_only_touches_a_box_around_the_click() -> None:
    """512 x 512 x 300 at 0.8 mm: cropping before filtering keeps a click interactive."""
    disk = np.full((512, 512), -100, dtype=np.int16)
    ii, jj = np.indices(disk.shape)
    disk[(ii - 256) ** 2 + (jj - 256) ** 2 <= 40**2] = 30
    volume = np.broadcast_to(disk[:, :, None], (512, 512, 300))  # a tube, without 150 MB of memory
    spacing = (0.8, 0.8, 1.0)
    config = RegionGrowingConfig()
    roi = prepare_roi(volume, spacing, [(256, 256, 150)], config)
    box_voxels = np.prod([s.stop - s.start for s in roi.box])
    assert box_voxels < 0.15 * volume.size
    start = time.perf_counter()
    mask = grow_region(volume, spacing, [(256, 256, 150)], config=config)
    elapsed = time.perf_counter() - start
    assert mask[256, 256, 150] == 1 and mask[256, 256, 0] == 0 and mask[100, 100, 150] == 0
    assert mask[256, 256, 150 + 50] == 1  # 50 mm along the tube, well within the growth budget
    assert elapsed < 10.0  # about 0.3 s on a quiet laptop core; generous for loaded CI machines


@pytest.mark.parametrize("click", [(0, 0, 0), (71, 63, 39), (0, 32, 39), (71, 0, 20)])
def test_clicks_on_the_volume_border_work(click: tuple[int, int, int]) -> None:
    image, _, _ = _phantom()
    mask = grow_region(image, SPACING, [click], [(36, 32, 20)])
    assert mask.shape == image.shape and mask[click] == 1 and mask[36, 32, 20] == 0


def test_same_voxel_clicked_both_ways_is_foreground_and_does_not_crash() -> None:
    image, _, _ = _phantom()
    centre = _to_index(CENTRE_MM)
    mask = grow_region(image, SPACING, [centre], [centre])
    assert mask[centre] == 1


@pytest.mark.parametrize(
    ("image_shape", "spacing", "foreground", "background", "message"),
    [
        ((10, 10, 10), (1.0, 1.0, 1.0), [], [], "at least one foreground click"),
        ((10, 10, 10), (1.0, 1.0, 1.0), [(10, 0, 0)], [], "foreground click .* is outside the image"),
        ((10, 10, 10), (1.0, 1.0, 1.0), [(-1, 0, 0)], [], "outside the image of shape \\[10, 10, 10\\]"),
        ((10, 10, 10), (1.0, 1.0, 1.0), [(5, 5, 5)], [(0, 0, 99)], "background click .* is outside"),
        ((10, 10, 10), (1.0, 1.0, 1.0), [(5, 5)], [], "not a voxel index"),
        ((10, 10, 10), (1.0, 1.0, 1.0), [("a", 1, 2)], [], "not a voxel index"),
        ((10, 10, 10), (1.0, 0.0, 1.0), [(5, 5, 5)], [], "spacing must be 3 positive"),
        ((10, 10), (1.0, 1.0), [(5, 5, 5)], [], "3-D image"),
    ],
)
def test_bad_input_raises_a_clear_value_error(
    image_shape: tuple[int, ...],
    spacing: tuple[float, ...],
    foreground: list,
    background: list,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        grow_region(np.zeros(image_shape, dtype=np.int16), spacing, foreground, background)  # type: ignore[arg-type]


def test_config_validates_ranges_and_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        RegionGrowingConfig(tolerance_sd=-1.0)
    with pytest.raises(pydantic.ValidationError, match="min_sd_hu"):
        RegionGrowingConfig(min_sd_hu=30.0, max_sd_hu=20.0)
    with pytest.raises(pydantic.ValidationError, match="hu_window"):
        RegionGrowingConfig(hu_window=(100.0, -100.0))
    with pytest.raises(pydantic.ValidationError):
        RegionGrowingConfig(tolerence_sd=2.0)  # type: ignore[call-arg]  # a typo must not pass silently
    config = RegionGrowingConfig()
    with pytest.raises(pydantic.ValidationError):
        config.tolerance_sd = 3.0  # type: ignore[misc]


def _shared_totalsegmentator() -> Path:
    """``$ANNOTATE_SHARED_DIR`` (the shared folder or its data/), else ``shared/`` beside a parent folder."""
    env = os.environ.get("ANNOTATE_SHARED_DIR")
    candidates = [Path(env), Path(env) / "data"] if env else []
    candidates += [parent / "shared" / "data" for parent in Path(__file__).resolve().parents]
    for candidate in candidates:
        if (candidate / "totalsegmentator" / "example_ct_sm.nii.gz").is_file():
            return candidate / "totalsegmentator"
    pytest.skip("real CT sample not available: ../shared/data is not present in a fresh clone")


@pytest.mark.parametrize(
    ("ct", "seg"),
    [("example_ct_sm.nii.gz", "example_seg.nii.gz"), ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz")],
    ids=["ct_sm", "ct_full"],
)
@pytest.mark.parametrize("label", [2, 3], ids=["kidney_right", "kidney_left"])
@pytest.mark.slow
def test_real_ct_kidney_with_five_protocol_clicks(ct: str, seg: str, label: int) -> None:
    folder = _shared_totalsegmentator()
    image = nib.load(str(folder / ct))
    array = np.asarray(image.dataobj)
    truth = np.asarray(nib.load(str(folder / seg)).dataobj) == label
    spacing = tuple(float(v) for v in image.header.get_zooms()[:3])
    scores = simulate_clicks(lambda fg, bg: grow_region(array, spacing, fg, bg), truth, 5)
    assert max(scores) >= REAL_CT_MIN_BEST_DICE, scores
    assert max(scores[:3]) >= 0.80, scores  # the brief's target, reached within 3 of the 5 clicks
    drops = [after - before for before, after in itertools.pairwise(scores)]
    assert min(drops) > -0.02, scores  # no click makes the mask noticeably worse

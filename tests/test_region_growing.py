"""The weight-free click tool: grows the clicked object, background clicks cut leaks; real-CT Dice."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotation_server.evaluation.clicks import dice, simulate_clicks
from annotation_server.tools.region_growing import RegionGrowingConfig, grow_region

# Measured with the protocol below (README / benchmarks/region_growing_dice.py): best Dice within 5 clicks
# is 0.90-0.94 for the four real kidneys; the bar leaves room for machine-level float differences only.
REAL_CT_MIN_DICE = 0.85


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 30 HU ellipsoid in -100 HU fat touching a 90 HU block (the 'liver'), 2 mm voxels, mild noise."""
    rng = np.random.default_rng(3)
    grid = np.indices((60, 50, 40)).astype(float)
    organ = ((grid[0] - 25) / 12) ** 2 + ((grid[1] - 25) / 8) ** 2 + ((grid[2] - 20) / 10) ** 2 <= 1
    block = (grid[0] >= 36) & (grid[1] > 15) & (grid[1] < 35) & (grid[2] > 8) & (grid[2] < 32)
    image = np.full(organ.shape, -100.0)
    image[block] = 90.0
    image[organ] = 30.0
    image += rng.normal(0, 6, image.shape)
    return image.astype(np.float32), organ, block


def test_one_click_grows_the_object() -> None:
    image, organ, _ = _phantom()
    mask = grow_region(image, (2.0, 2.0, 2.0), [(25, 25, 20)])
    assert mask.dtype == np.uint8 and mask.shape == image.shape
    assert dice(mask, organ) > 0.85


def test_background_click_cuts_a_leak() -> None:
    image, organ, block = _phantom()
    loose = RegionGrowingConfig(tolerance_sd=4.0, min_sd_hu=20.0)  # wide enough to leak into the block
    leaked = grow_region(image, (2.0, 2.0, 2.0), [(25, 25, 20)], [], loose)
    assert (leaked.astype(bool) & block).sum() > 200
    cut = grow_region(image, (2.0, 2.0, 2.0), [(25, 25, 20)], [(45, 25, 20)], loose)
    assert (cut.astype(bool) & block).sum() < 0.2 * (leaked.astype(bool) & block).sum()
    assert dice(cut, organ) > dice(leaked, organ)


def test_second_foreground_click_adds_a_missed_part() -> None:
    image, _, _ = _phantom()
    image[10:16, 20:30, 15:25] = 30.0  # a lobe joined only through a thin neck
    image[16:18, 24:26, 19:21] = 30.0
    one = grow_region(image, (2.0, 2.0, 2.0), [(25, 25, 20)])
    two = grow_region(image, (2.0, 2.0, 2.0), [(25, 25, 20), (12, 25, 20)])
    assert two[12, 25, 20] == 1 and two.sum() > one.sum()


def test_clicks_on_the_border_and_bad_input() -> None:
    image, _, _ = _phantom()
    assert grow_region(image, (2.0, 2.0, 2.0), [(0, 0, 0)]).shape == image.shape
    with pytest.raises(ValueError, match="foreground"):
        grow_region(image, (2.0, 2.0, 2.0), [])
    with pytest.raises(ValueError, match="outside"):
        grow_region(image, (2.0, 2.0, 2.0), [(60, 0, 0)])
    with pytest.raises(ValueError, match="3-D"):
        grow_region(image[0], (2.0, 2.0), [(1, 1, 1)])


@pytest.mark.parametrize(
    ("ct", "seg"),
    [("example_ct_sm.nii.gz", "example_seg.nii.gz"), ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz")],
)
@pytest.mark.parametrize("kidney", [2, 3], ids=["right", "left"])
def test_real_ct_kidney_within_five_clicks(shared_data: Path, ct: str, seg: str, kidney: int) -> None:
    folder = shared_data / "totalsegmentator"
    image = nib.load(str(folder / ct))
    array = np.asarray(image.dataobj).astype(np.float32)
    truth = np.asarray(nib.load(str(folder / seg)).dataobj) == kidney
    spacing = image.header.get_zooms()[:3]
    scores = simulate_clicks(lambda fg, bg: grow_region(array, spacing, fg, bg), truth, 5)
    assert max(scores) >= REAL_CT_MIN_DICE, scores
    assert max(scores[:3]) >= 0.80, scores  # target: >= 0.8 with at most 5 clicks; reached within 3 here

"""The shipped kidney models on the real CT samples (never used for training): model-card numbers hold.

Bars sit a little below what benchmarks/kidney_models.py measured (README of each model), so a change
that makes a model worse fails here; float noise between machines does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from annotation_models import bundle_path
from annotation_server.evaluation.clicks import dice, simulate_clicks
from annotation_server.evaluation.kidney_classes import class_report
from annotation_server.imaging import read_volume
from annotation_server.inference.bundle_task import BundleSegmentationTask
from annotation_server.inference.click_task import BundleClickTask
from annotation_server.inference.params import InferParams

CASES = {
    "ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "ct_full": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
}
SEG_MIN_DICE = {"ct_sm": 0.84, "ct_full": 0.89}  # measured 0.860 and 0.919 (models/kidney_seg/README.md)
# Predicted kidney voxels > 20 mm from any true kidney voxel, as a share of the true kidney: measured 0.023 on
# the kidney-level crop (a sliver of spleen) and 0 on the full-body scan.
SEG_MAX_FAR_SHARE = {"ct_sm": 0.04, "ct_full": 0.0}
# Issue 17: the patient has no renal mass, so every tumor/cyst voxel is false. Measured with the anatomy
# retrain (models/kidney_seg/README.md): 0.92 cm3 on the full-body CT, 3.2 cm3 on the crop (was 90.7 / 77.4).
SEG_MAX_FALSE_MASS_CM3 = {"ct_sm": 5.0, "ct_full": 1.0}  # full body: issue 17's bar
CLICK_MIN_DICE_3 = 0.86  # best within 3 clicks, whole new answers in-process: measured 0.877-0.923 (model card)
CLICK_PATH_CLICKS = 3
CLICK_MAX_NOC90 = 3  # issue 17's bar; measured NoC@90 = 1 (left kidneys) and 3 (right), Dice >= 0.908 at click 3
# The worst fall of Dice after one click within the first three, over 4 kidneys x 3 storage orders x 2 paths:
# measured 0.059 (a background click on the full-body left kidney, LPS and DICOM; models/kidney_click/README.md).
# Not yet "noise": this bar keeps it from growing.
CLICK_MAX_DROP = 0.07


@pytest.fixture(scope="module")
def seg_task() -> BundleSegmentationTask:
    return BundleSegmentationTask(bundle_path("kidney_seg"), labels={"kidney": 1, "tumor": 2, "cyst": 3})


@pytest.fixture(scope="module")
def click_task() -> BundleClickTask:
    return BundleClickTask(bundle_path("kidney_click"), labels={"kidney": 1})


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.slow
def test_kidney_seg_dice_and_no_far_false_positives(shared_data: Path, seg_task, case: str) -> None:  # type: ignore[no-untyped-def]
    ct, seg = CASES[case]
    volume = read_volume(shared_data / "totalsegmentator" / ct)
    truth = np.isin(read_volume(shared_data / "totalsegmentator" / seg).array, (2, 3))
    mask = seg_task.infer(volume, InferParams()).mask > 0
    assert dice(mask, truth) >= SEG_MIN_DICE[case]
    far = ndimage.distance_transform_edt(~truth, sampling=volume.geometry.spacing) > 20.0
    assert int((mask & far).sum()) <= SEG_MAX_FAR_SHARE[case] * truth.sum()


@pytest.mark.parametrize("case", sorted(CASES))
def test_kidney_seg_invents_no_masses_in_healthy_kidneys(shared_data: Path, seg_task, case: str) -> None:  # type: ignore[no-untyped-def]
    ct, seg = CASES[case]
    volume = read_volume(shared_data / "totalsegmentator" / ct)
    truth = np.isin(read_volume(shared_data / "totalsegmentator" / seg).array, (2, 3)).astype(np.uint8)
    report = class_report(seg_task.infer(volume, InferParams()).mask, truth, volume.geometry.spacing)
    assert report["false_mass_cm3"] <= SEG_MAX_FALSE_MASS_CM3[case], report


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kidney", [2, 3], ids=["right", "left"])
@pytest.mark.slow
def test_kidney_click_within_three_clicks(shared_data: Path, click_task, case: str, kidney: int) -> None:  # type: ignore[no-untyped-def]
    ct, seg = CASES[case]
    volume = read_volume(shared_data / "totalsegmentator" / ct)
    truth = read_volume(shared_data / "totalsegmentator" / seg).array == kidney
    scores = simulate_clicks(
        lambda fg, bg: click_task.infer(volume, InferParams(foreground=fg, background=bg)).mask, truth, 3
    )
    assert max(scores) >= CLICK_MIN_DICE_3, scores


@pytest.fixture(scope="module")
def click_paths(shared_data: Path) -> dict[str, object]:
    """kidney_click through the session API and MONAI Label's /infer, on all four real kidneys stored as RAS
    NIfTI, LPS NIfTI and an axial DICOM series (benchmarks/kidney_models.py's `evaluate_click_paths`)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from kidney_models import evaluate_click_paths

    return evaluate_click_paths(bundle_path("kidney_click"), shared_data / "totalsegmentator", CLICK_PATH_CLICKS)


@pytest.mark.slow
def test_kidney_click_reaches_dice_090_within_three_clicks_on_every_path(click_paths) -> None:  # type: ignore[no-untyped-def]
    """Issue 17's bar: NoC@90 <= 3 for every kidney, storage order and click path; the two paths agree."""
    runs = {name: paths for name, paths in click_paths.items() if name != "summary"}
    assert len(runs) == 12  # 4 kidneys x 3 storage orders
    for name, paths in runs.items():
        for path in ("session", "infer"):
            scores = paths[path]["dice_after_click"]
            assert paths[path]["noc90"] is not None and paths[path]["noc90"] <= CLICK_MAX_NOC90, (name, path, scores)
        assert np.allclose(paths["session"]["dice_after_click"], paths["infer"]["dice_after_click"], atol=1e-3), name


@pytest.mark.slow
def test_a_corrective_click_never_costs_more_than_noise(click_paths) -> None:  # type: ignore[no-untyped-def]
    assert click_paths["summary"]["worst_drop"] <= CLICK_MAX_DROP, click_paths["summary"]

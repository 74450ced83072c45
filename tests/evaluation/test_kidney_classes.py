"""class_report: union Dice, per-class Dice and false mass volume in cm3 (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_server.evaluation.kidney_classes import class_report


def _kidney() -> np.ndarray:
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    return truth


def test_healthy_kidney_with_invented_masses_keeps_union_dice_but_reports_false_volume() -> None:
    truth = _kidney()
    prediction = truth.copy()
    prediction[8:10, 8:10, 8:10] = 2  # 8 voxels of "tumor" in the sinus
    prediction[11:12, 8:10, 8:10] = 3  # 4 voxels of "cyst"
    report = class_report(prediction, truth, (3.0, 3.0, 3.0))
    assert report["kidney_union_dice"] == 1.0  # the union hides it ...
    assert report["false_cm3"]["tumor"] == pytest.approx(8 * 0.027)  # ... the class volumes do not
    assert report["false_cm3"]["cyst"] == pytest.approx(4 * 0.027)
    assert report["false_mass_cm3"] == pytest.approx(12 * 0.027)
    assert report["dice"]["tumor"] is None and report["dice"]["cyst"] is None  # absent from truth: no Dice
    assert report["dice"]["kidney"] < 1.0


def test_per_class_dice_when_truth_has_masses_and_volume_uses_spacing() -> None:
    truth = _kidney()
    truth[6:10, 6:10, 6:10] = 2
    prediction = truth.copy()
    prediction[6:8, 6:10, 6:10] = 1  # half the tumor called kidney
    report = class_report(prediction, truth, (1.0, 2.0, 0.5))
    assert report["dice"]["tumor"] == pytest.approx(2 * 32 / (32 + 64), abs=1e-4)
    assert report["false_cm3"]["tumor"] == 0.0
    assert report["false_cm3"]["kidney"] == pytest.approx(32 * 1.0 / 1000)
    assert report["predicted_cm3"]["tumor"] == pytest.approx(32 / 1000)


def test_grids_must_match() -> None:
    with pytest.raises(ValueError, match="share a grid"):
        class_report(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))

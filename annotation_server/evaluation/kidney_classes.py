"""Class-aware evaluation of kidney / tumor / cyst predictions (issue 17).

The kidney Dice of the union (kidney + tumor + cyst) hides a model that paints healthy renal sinus as
tumor or cyst: the outline is right, the classes are not. So every report here carries, beside the union
Dice, the volume predicted as each mass class that the truth does not hold (in cm3, from the voxel spacing,
so grids of different spacing compare), and per-class Dice where the truth has that class.

Label convention (KiTS19/21, and the phantoms): 1 kidney, 2 tumor, 3 cyst; masses are part of the kidney
(kidney is the union of all three), so the union is the "kidney" structure and the per-class Dice of
kidney is on label 1 alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from annotation_server.evaluation.clicks import dice

__all__ = ["CLASSES", "class_report"]

CLASSES: Mapping[str, int] = {"kidney": 1, "tumor": 2, "cyst": 3}


def _voxel_cm3(spacing: Sequence[float]) -> float:
    return float(np.prod(np.asarray(spacing, dtype=float))) / 1000.0


def class_report(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, object]:
    """Union Dice, per-class Dice and false mass volumes of a label map against a truth on the same grid.

    `truth` uses the same codes as `prediction` (0 background, 1 kidney, 2 tumor, 3 cyst). A class absent
    from the truth gets no Dice (it would be 0 or 1 by convention, which says nothing); instead its
    predicted volume is the false volume. For a class present in the truth, the false volume is the part
    predicted outside that class's truth.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} must share a grid")
    cm3 = _voxel_cm3(spacing)
    report: dict[str, object] = {"kidney_union_dice": round(dice(prediction > 0, truth > 0), 4)}
    per_class: dict[str, float | None] = {}
    false_cm3: dict[str, float] = {}
    predicted_cm3: dict[str, float] = {}
    for name, code in CLASSES.items():
        pred, true = prediction == code, truth == code
        per_class[name] = round(dice(pred, true), 4) if true.any() else None
        predicted_cm3[name] = round(float(pred.sum()) * cm3, 3)
        false_cm3[name] = round(float((pred & ~true).sum()) * cm3, 3)
    report["dice"] = per_class
    report["predicted_cm3"] = predicted_cm3
    report["false_cm3"] = false_cm3
    report["false_mass_cm3"] = round(false_cm3["tumor"] + false_cm3["cyst"], 3)
    return report

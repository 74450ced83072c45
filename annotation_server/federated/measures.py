"""How much an annotator changed a model's pre-annotation: Dice and voxels changed.

Dice compares foreground (any non-zero value) so it stays meaningful when a client relabels values
(3D Slicer's contiguous indices vs the app's values); voxels changed counts every voxel whose value
differs, so moving a boundary between kidney and tumor counts as work too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelChange:
    dice: float
    voxels_changed: int
    labeled_voxels: int


SLAB_VOXELS = 1 << 22  # compared a slab at a time: no volume-sized temporaries on the label-save path


def compare_labels(pre: np.ndarray, final: np.ndarray) -> LabelChange | None:
    """Pre-annotation vs final label on the same grid; None when the grids differ (nothing comparable)."""
    if pre.shape != final.shape:
        return None
    pre_count = int(np.count_nonzero(pre))
    final_count = int(np.count_nonzero(final))
    overlap = changed = 0
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(pre.shape[1:]))))
    for start in range(0, pre.shape[0], step):
        p, f = pre[start : start + step], final[start : start + step]
        overlap += int(np.count_nonzero(np.logical_and(p, f)))
        changed += int(np.count_nonzero(p != f))  # numpy compares mixed integer dtypes by value
    dice = 1.0 if pre_count + final_count == 0 else 2.0 * overlap / (pre_count + final_count)
    return LabelChange(dice=round(dice, 6), voxels_changed=changed, labeled_voxels=final_count)


def _number(info: dict, keys: tuple[str, ...], kind: type) -> float | int | None:
    for key in keys:
        value = info.get(key)
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = kind(value)
        except (TypeError, ValueError):
            continue
        if number >= 0:
            return number
    return None


INTERACTION_KEYS = ("interactions", "clicks", "num_interactions")
SECONDS_KEYS = ("seconds", "annotation_seconds", "time_spent_s", "session_seconds")


def reported_effort(info: dict) -> tuple[int | None, float | None]:
    """(interactions, seconds) a client reported in the label's info; an explicit `seconds` beats session time."""
    interactions = _number(info, INTERACTION_KEYS, int)
    seconds = _number(info, SECONDS_KEYS, float)
    return (int(interactions) if interactions is not None else None, float(seconds) if seconds is not None else None)

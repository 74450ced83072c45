"""Consensus of several readers' labels: multi-label STAPLE (SimpleITK) or majority vote.

STAPLE (Warfield et al. 2004) estimates each reader's performance and the most likely true label together.
The multi-label filter gives the consensus; a binary STAPLE per label gives the per-reader sensitivity and
specificity estimates that are kept in the consensus version's info. Both run on the bounding box of every
reader's foreground plus a margin: the far background carries no information about the readers, and on a whole
CT it would dominate the specificity estimates and the run time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np

from annotation_server.projects.agreement import majority_vote

_MARGIN = 5


class ConsensusMethod(StrEnum):
    staple = "staple"
    majority = "majority"


def _box(arrays: list[np.ndarray]) -> tuple[slice, ...] | None:
    union = np.logical_or.reduce([a > 0 for a in arrays])
    if not union.any():
        return None
    where = np.argwhere(union)
    lo = np.maximum(where.min(0) - _MARGIN, 0)
    hi = np.minimum(where.max(0) + _MARGIN + 1, union.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def consensus(
    reads: dict[str, np.ndarray], labels: dict[str, int], method: ConsensusMethod = ConsensusMethod.staple
) -> tuple[np.ndarray, dict[str, Any]]:
    """(consensus label on the readers' grid, details: per label and reader STAPLE sensitivity/specificity)."""
    import SimpleITK as sitk

    readers = sorted(reads)
    arrays = [reads[r].astype(np.uint8) for r in readers]
    result = np.zeros_like(arrays[0])
    box = _box(arrays)
    details: dict[str, Any] = {"method": method.value, "readers": readers}
    if box is None:
        return result, details
    cropped = [a[box] for a in arrays]
    if method is ConsensusMethod.majority:
        result[box] = majority_vote(cropped)
        return result, details
    images = [sitk.GetImageFromArray(a) for a in cropped]
    staple = sitk.MultiLabelSTAPLEImageFilter()
    staple.SetLabelForUndecidedPixels(0)
    result[box] = sitk.GetArrayFromImage(staple.Execute(images)).astype(np.uint8)
    estimates: dict[str, dict[str, dict[str, float]]] = {}
    for name, value in labels.items():
        masks = [(a == value).astype(np.uint8) for a in cropped]
        if value == 0 or not any(m.any() for m in masks):
            continue
        binary = sitk.STAPLEImageFilter()
        binary.SetForegroundValue(1)
        binary.Execute([sitk.GetImageFromArray(m) for m in masks])
        sens, spec = binary.GetSensitivity(), binary.GetSpecificity()
        estimates[name] = {
            r: {"sensitivity": float(sens[i]), "specificity": float(spec[i])} for i, r in enumerate(readers)
        }
    details["staple"] = estimates
    details["box"] = [[s.start, s.stop] for s in box]
    return result, details

"""Agreement between readers of one case: pairwise Dice, HD95 and average surface distance in mm (MONAI's
metrics on the image's spacing), Cohen's kappa per pair and Fleiss' kappa over all readers, per label.

Surface metrics are computed on the bounding box of the two masks plus a margin: every surface voxel lies
inside it, so distances are the same as on the full grid, at a fraction of the cost. Kappa is chance-corrected
voxel agreement over the whole image grid (background included, as the readers saw it).
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
from pydantic import BaseModel

_MARGIN = 2
MISSED_RECALL = 0.1  # a reader who covers under 10% of a structure the consensus has, missed it


class PairAgreement(BaseModel):
    label: str
    a: str
    b: str
    dice: float
    hd95_mm: float | None  # None when either mask is empty (undefined)
    asd_mm: float | None
    kappa: float


class CaseAgreement(BaseModel):
    image_id: str
    readers: list[str]
    pairs: list[PairAgreement]
    fleiss_kappa: dict[str, float]  # per label, over all readers
    mean_dice: dict[str, float]  # per label: mean pairwise Dice
    min_dice: float | None  # the worst label's mean Dice (what the threshold is compared with)
    reader_vs_consensus: dict[str, dict[str, float]]  # reader -> label -> Dice against the majority vote
    flagged: bool
    flagged_readers: dict[str, list[str]]  # reader -> labels where their Dice vs consensus is below threshold
    missed: dict[str, list[str]]  # reader -> labels the consensus has and they (almost) did not draw at all


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two binary masks over every voxel."""
    n = a.size
    both = int(np.logical_and(a, b).sum())
    sa, sb = int(a.sum()), int(b.sum())
    observed = (n - sa - sb + 2 * both) / n
    expected = (sa * sb + (n - sa) * (n - sb)) / (n * n)
    return 1.0 if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def fleiss_kappa(masks: list[np.ndarray]) -> float:
    """Fleiss' kappa of n binary masks (categories: inside, outside) over every voxel."""
    n = len(masks)
    counts = np.sum([m.astype(np.int32) for m in masks], axis=0, dtype=np.int64).ravel()
    voxels = counts.size
    agree = (counts * (counts - 1) + (n - counts) * (n - counts - 1)).sum() / (voxels * n * (n - 1))
    p_in = counts.sum() / (voxels * n)
    expected = p_in**2 + (1 - p_in) ** 2
    return 1.0 if expected >= 1.0 else float((agree - expected) / (1.0 - expected))


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    union = np.logical_or(a, b)
    where = np.argwhere(union)
    lo = np.maximum(where.min(0) - _MARGIN, 0)
    hi = np.minimum(where.max(0) + _MARGIN + 1, union.shape)
    box = tuple(slice(int(lo_), int(hi_)) for lo_, hi_ in zip(lo, hi, strict=True))
    return a[box], b[box]


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[float | None, float | None]:
    """(HD95, symmetric average surface distance) in mm by MONAI, or (None, None) when a mask is empty."""
    if not a.any() or not b.any():
        return None, None
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    ca, cb = _crop(a, b)
    pred = torch.from_numpy(ca[None, None].astype(np.float32))
    ref = torch.from_numpy(cb[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(pred, ref, include_background=True, percentile=95, spacing=list(spacing))
        asd = compute_average_surface_distance(
            pred, ref, include_background=True, symmetric=True, spacing=list(spacing)
        )
    values = float(hd.item()), float(asd.item())
    return tuple(v if math.isfinite(v) else None for v in values)  # type: ignore[return-value]


def majority_vote(arrays: list[np.ndarray]) -> np.ndarray:
    """Per voxel the label most readers gave; ties (and no majority of foreground) go to background."""
    import SimpleITK as sitk

    images = [sitk.GetImageFromArray(a.astype(np.uint8)) for a in arrays]
    return sitk.GetArrayFromImage(sitk.LabelVoting(images, 0)).astype(np.uint8)


def case_agreement(
    image_id: str,
    reads: dict[str, np.ndarray],
    spacing: tuple[float, ...],
    labels: dict[str, int],
    threshold: float,
    consensus: np.ndarray | None = None,
) -> CaseAgreement:
    """Agreement of the readers of one case. Labels nobody drew are skipped; `consensus` defaults to the
    majority vote (a reader who missed a structure the others drew stands out against it)."""
    readers = sorted(reads)
    arrays = [reads[r] for r in readers]
    reference = consensus if consensus is not None else majority_vote(arrays)
    pairs: list[PairAgreement] = []
    fleiss: dict[str, float] = {}
    mean: dict[str, float] = {}
    versus: dict[str, dict[str, float]] = {r: {} for r in readers}
    flagged_readers: dict[str, list[str]] = {}
    missed: dict[str, list[str]] = {}
    for name, value in labels.items():
        if value == 0:
            continue
        masks = {r: reads[r] == value for r in readers}
        if not any(m.any() for m in masks.values()):
            continue
        scores = []
        for a, b in combinations(readers, 2):
            d = dice(masks[a], masks[b])
            hd, asd = surface_distances(masks[a], masks[b], spacing)
            pairs.append(
                PairAgreement(
                    label=name, a=a, b=b, dice=d, hd95_mm=hd, asd_mm=asd, kappa=cohen_kappa(masks[a], masks[b])
                )
            )
            scores.append(d)
        if len(readers) > 1:
            fleiss[name] = fleiss_kappa(list(masks.values()))
            mean[name] = float(np.mean(scores))
        ref = reference == value
        for r in readers:
            versus[r][name] = dice(masks[r], ref)
            if versus[r][name] < threshold:
                flagged_readers.setdefault(r, []).append(name)
            if ref.any() and np.logical_and(masks[r], ref).sum() < MISSED_RECALL * ref.sum():
                missed.setdefault(r, []).append(name)
    worst = min(mean.values()) if mean else None
    return CaseAgreement(
        image_id=image_id,
        readers=readers,
        pairs=pairs,
        fleiss_kappa=fleiss,
        mean_dice=mean,
        min_dice=worst,
        reader_vs_consensus=versus,
        flagged=worst is not None and worst < threshold,
        flagged_readers=flagged_readers,
        missed=missed,
    )

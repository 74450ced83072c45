"""Anatomy post-processing of kidney_seg (issue 17): peel perirenal fat off the outer surface, keep the
enclosed sinus fat, and relabel tiny masses as kidney; both keep the MetaTensor's affine for inversion."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from annotation_apps.kidney.anatomy import DropSmallMassesd, PeelSurfaceFatd


def _meta(array: np.ndarray, spacing: float = 3.0) -> MetaTensor:
    return MetaTensor(torch.tensor(array[None]), affine=torch.diag(torch.tensor([spacing, spacing, spacing, 1.0])))


def test_peel_removes_surface_fat_keeps_enclosed_fat() -> None:
    image = np.full((30, 30, 30), 0.5, np.float32)  # soft tissue
    pred = np.zeros((30, 30, 30), np.uint8)
    pred[5:25, 5:25, 5:25] = 1
    image[5:7, 5:25, 5:25] = 0.1  # a 2-voxel rim of fat wrongly labelled kidney (outer surface)
    image[13:17, 13:17, 13:17] = 0.1  # sinus fat enclosed by parenchyma
    out = PeelSurfaceFatd("pred", threshold=0.28, iterations=3)({"image": _meta(image), "pred": _meta(pred)})
    result = np.asarray(out["pred"][0])
    assert not result[5:7, 8:22, 8:22].any(), "surface fat was not peeled"
    assert result[13:17, 13:17, 13:17].all(), "enclosed sinus fat must stay kidney"
    assert result[7:25, 8:22, 8:22].all()
    assert torch.equal(out["pred"].affine, _meta(pred).affine)


def test_small_masses_become_kidney_large_ones_stay() -> None:
    pred = np.zeros((30, 30, 30), np.uint8)
    pred[2:28, 2:28, 2:28] = 1
    pred[4:6, 4:6, 4:6] = 2  # 8 voxels of 27 mm3 = 0.216 cm3: relabelled
    pred[10:20, 10:20, 10:20] = 3  # 1000 voxels = 27 cm3: kept
    out = DropSmallMassesd("pred", min_cm3=0.5)({"pred": _meta(pred)})
    result = np.asarray(out["pred"][0])
    assert (result[4:6, 4:6, 4:6] == 1).all()
    assert (result[10:20, 10:20, 10:20] == 3).all()
    # the same blob on a 1 mm grid is 0.008 cm3, on a 5 mm grid 1 cm3: the rule is in cm3, not voxels
    coarse = DropSmallMassesd("pred", min_cm3=0.5)({"pred": _meta(pred, spacing=5.0)})
    assert (np.asarray(coarse["pred"][0])[4:6, 4:6, 4:6] == 2).all()

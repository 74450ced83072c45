"""The kidney models' bundle recipes: network, preprocessing, inferer and postprocessing as MONAI config.

Training builds its pipeline from these same dicts and writes them into the bundle it produces, so what
is served is exactly what was trained. Values are fixed here (not tuned per image) on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

LABELS = {"kidney": 1, "tumor": 2, "cyst": 3}

HU_WINDOW = (-200.0, 400.0)  # fat ... contrast-enhanced cortex; brighter (excreted contrast, bone) clips

SEG_SPACING = (3.0, 3.0, 3.0)
SEG_PATCH = (64, 64, 64)
CLICK_SPACING = (2.0, 2.0, 2.0)
CLICK_PATCH = (64, 64, 64)
CLICK_ROI_MM = (128.0, 128.0, 128.0)
CLICK_SIGMA_MM = 5.0


def _modes(keys: Sequence[str], label_keys: Sequence[str]) -> list[str]:
    return ["nearest" if k in label_keys else "bilinear" for k in keys]


def geometry_transforms(
    keys: Sequence[str],
    spacing: Sequence[float],
    label_keys: Sequence[str] = (),
    channel_first_keys: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Channel-first, RAS, target spacing: what every kidney model sees regardless of the input's grid."""
    plain = [k for k in keys if k not in channel_first_keys]
    transforms: list[dict[str, Any]] = []
    if plain:
        transforms.append({"_target_": "EnsureChannelFirstd", "keys": plain})
    if channel_first_keys:
        transforms.append({"_target_": "EnsureChannelFirstd", "keys": list(channel_first_keys), "channel_dim": 0})
    transforms += [
        {
            "_target_": "Orientationd",
            "keys": list(keys),
            "axcodes": "RAS",
            "labels": [["L", "R"], ["P", "A"], ["I", "S"]],
        },
        {"_target_": "Spacingd", "keys": list(keys), "pixdim": list(spacing), "mode": _modes(keys, label_keys)},
    ]
    return transforms


def intensity_transform(key: str = "image") -> dict[str, Any]:
    return {
        "_target_": "ScaleIntensityRanged",
        "keys": key,
        "a_min": HU_WINDOW[0],
        "a_max": HU_WINDOW[1],
        "b_min": 0.0,
        "b_max": 1.0,
        "clip": True,
    }


# --------------------------------------------------------------------------------------------- kidney_seg
def seg_network_def() -> dict[str, Any]:
    return {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 4,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 1,
        "norm": "instance",
    }


def seg_preprocessing(with_label: bool = False) -> list[dict[str, Any]]:
    keys = ["image", "label"] if with_label else ["image"]
    return [
        *geometry_transforms(keys, SEG_SPACING, label_keys=["label"]),
        intensity_transform(),
        {"_target_": "EnsureTyped", "keys": keys},
    ]


def seg_inferer() -> dict[str, Any]:
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": list(SEG_PATCH),
        "sw_batch_size": 2,
        "overlap": 0.25,
        "mode": "gaussian",
    }


SURFACE_FAT_HU = -30.0  # below this on the kidney's outer surface: perirenal fat (3 voxels of 3 mm deep at most)


def surface_fat_peel(spacing_mm: float, depth_mm: float = 9.0) -> dict[str, Any]:
    """Perirenal fat on the object's outer surface is not kidney, tumor or cyst (annotation_apps.kidney.anatomy):
    fat-density voxels peeled off the surface, `depth_mm` deep at most, on a grid of `spacing_mm` voxels."""
    return {
        "_target_": "annotation_apps.kidney.anatomy.PeelSurfaceFatd",
        "keys": "pred",
        "image_key": "image",
        "threshold": (SURFACE_FAT_HU - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]),
        "iterations": max(1, int(depth_mm // spacing_mm)),  # whole voxels within depth_mm: 3 of 3 mm, 4 of 2 mm
    }


def seg_postprocessing() -> list[dict[str, Any]]:
    """Argmax, keep the two largest kidney blobs (no kidney voxels far from the kidneys), then peel fat off
    the kidneys' outer surface and relabel masses under 0.5 cm3 as kidney (issue 17)."""
    return [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {
            "_target_": "KeepLargestConnectedComponentd",
            "keys": "pred",
            "applied_labels": [1, 2, 3],
            "independent": False,
            "num_components": 2,
        },
        surface_fat_peel(SEG_SPACING[0]),  # 3 voxels of 3 mm
        # masses under 0.5 cm3 (a 1 cm sphere) are artefacts far more often than lesions: kidney
        {"_target_": "annotation_apps.kidney.anatomy.DropSmallMassesd", "keys": "pred", "min_cm3": 0.5},
    ]


# ------------------------------------------------------------------------------------------- kidney_click
def click_network_def() -> dict[str, Any]:
    return {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 3,
        "out_channels": 2,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 1,
        "norm": "instance",
    }


def click_preprocessing(with_label: bool = False, concat: bool = True) -> list[dict[str, Any]]:
    keys = ["image", "guidance", "label"] if with_label else ["image", "guidance"]
    transforms = [
        *geometry_transforms(keys, CLICK_SPACING, label_keys=["label"], channel_first_keys=["guidance"]),
        intensity_transform(),
    ]
    if concat:
        transforms.append({"_target_": "ConcatItemsd", "keys": ["image", "guidance"], "name": "net_input", "dim": 0})
    transforms.append({"_target_": "EnsureTyped", "keys": keys + (["net_input"] if concat else [])})
    return transforms


def click_inferer() -> dict[str, Any]:
    return {
        "_target_": "SlidingWindowInferer",
        "roi_size": list(CLICK_PATCH),
        "sw_batch_size": 1,
        "overlap": 0.25,
        "mode": "gaussian",
    }


def click_patch_postprocessing() -> dict[str, Any]:
    """What the server does to each click's network patch (BundleClickTask): the same surface-fat peel as
    kidney_seg's. Measured on the real CT in models/kidney_click/README.md."""
    return {"_target_": "Compose", "transforms": [surface_fat_peel(CLICK_SPACING[0])]}


def click_postprocessing() -> list[dict[str, Any]]:
    return [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]

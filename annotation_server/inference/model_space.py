"""The one place that maps a bundle's model space <-> an image's stored voxel grid.

Every model sees an image through its bundle's preprocessing (reorientation to RAS, resampling to its
spacing, cropping, ...). Everything that crosses between the two spaces goes through this module: the
automatic path (`BundleRuntime.run`), the click path (`BundleClickTask.prepare`), uncertainty scoring and
fine-tuning (which put image and label through the same preprocessing with `to_model_space`).

Two rules keep labels where the anatomy is:

- Going back is never decided by looking at shapes. A left-right flip (LPS, every standard axial DICOM
  series) keeps the shape; so does a permutation of equal axes or a resampling to the same voxel count.
  The prediction is always inverted with the records MONAI kept of every spatial transform it applied
  (nearest neighbour for labels), unless the bundle's own postprocessing inverts it (Model Zoo bundles
  carry an `Invertd`).
- The result must prove it is back: its voxel-to-world affine must equal the stored image's affine, not
  merely its shape. Anything else is a server error, never a silently misplaced label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from annotation_server.imaging.volume import AFFINE_ATOL, Geometry, Volume


class GeometryError(RuntimeError):
    """A model's result did not come back onto the image's voxel grid (a server bug, never the client's)."""


def volume_to_metatensor(array: np.ndarray, volume: Volume, channel_first: bool = False) -> MetaTensor:
    """What LoadImaged(image_only=True) returns for an array on `volume`'s grid, RAS affine in the meta.

    `channel_first` marks extra inputs such as click guidance (channels, i, j, k).
    """
    affine = torch.as_tensor(volume.geometry.affine, dtype=torch.float64)
    meta = {
        "affine": affine.clone(),
        "original_affine": affine.clone(),
        "spatial_shape": np.asarray(volume.geometry.shape),
        "original_channel_dim": 0 if channel_first else "no_channel",
        "space": "RAS",
        "filename_or_obj": "memory",
    }
    return MetaTensor(torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32), meta=meta)


def to_model_space(
    pipeline: Callable[[dict[str, Any]], dict[str, Any]],
    volume: Volume,
    arrays: Mapping[str, np.ndarray],
    channel_first: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """`arrays` (each on `volume`'s stored grid: image, label, guidance) through a bundle's preprocessing.

    Image and label go through the very same transforms (the pipeline records each one, so the result
    can come back with `to_stored_grid`).
    """
    data = {key: volume_to_metatensor(array, volume, key in channel_first) for key, array in arrays.items()}
    return pipeline(data)


def model_affine(tensor: Any) -> np.ndarray:
    """The voxel-to-RAS affine of a preprocessed tensor (MONAI keeps it in the MetaTensor)."""
    if not isinstance(tensor, MetaTensor):
        raise GeometryError("the bundle's preprocessing dropped the image's geometry (not a MetaTensor)")
    return np.asarray(tensor.affine, dtype=np.float64)


def stored_to_model_index(stored: Geometry, model_space_affine: np.ndarray) -> np.ndarray:
    """4 x 4: a stored voxel index (i, j, k, 1) -> the model-space voxel index at the same world point."""
    return np.linalg.inv(np.asarray(model_space_affine, dtype=np.float64)) @ stored.affine


@dataclass(frozen=True)
class ModelImage:
    """An image in a model's space, with the map from the stored grid into it."""

    tensor: torch.Tensor  # (channels, x, y, z)
    affine: np.ndarray  # model voxel -> RAS mm
    to_model: np.ndarray  # stored voxel index -> model voxel index (4 x 4)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_ml(self) -> float:
        return (float(abs(np.linalg.det(self.affine[:3, :3]))) or 1.0) / 1000.0


def model_image(pipeline: Callable[[dict[str, Any]], dict[str, Any]], volume: Volume, key: str) -> ModelImage:
    """The volume's image through `pipeline` (a bundle's image preprocessing), with its index map."""
    data = to_model_space(pipeline, volume, {key: volume.array})
    tensor = data[key]
    affine = model_affine(tensor)
    return ModelImage(
        tensor=torch.as_tensor(tensor.as_tensor()).float(),
        affine=affine,
        to_model=stored_to_model_index(volume.geometry, affine),
    )


def inverts_itself(postprocessing: Compose | None) -> bool:
    """Whether a bundle's postprocessing already brings `pred` back (Model Zoo bundles carry Invertd)."""
    if postprocessing is None:
        return False
    return any(isinstance(t, Invertd) for t in postprocessing.flatten().transforms)


def to_stored_grid(
    data: dict[str, Any],
    pred: torch.Tensor,
    stored: Geometry,
    image_key: str,
    preprocessing: Compose,
    already_inverted: bool = False,
) -> np.ndarray:
    """A model-space prediction as an int16 label map on the stored grid, checked in world space.

    `data` is what the preprocessing returned (its `image_key` entry holds the records of every transform);
    `pred` is (channels or 1, x, y, z) in model space, or already on the stored grid when the bundle's
    postprocessing inverted it (`already_inverted`).
    """
    pred = torch.as_tensor(pred).detach().cpu() if not isinstance(pred, MetaTensor) else pred.detach().cpu()
    if pred.ndim == 3:
        pred = pred[None]
    if pred.shape[0] > 1:
        pred = torch.argmax(pred, dim=0, keepdim=True)
    if not already_inverted:
        image = data[image_key]
        # The prediction sits on the preprocessed image's grid: give it that grid, then undo every transform.
        pred = MetaTensor(torch.as_tensor(pred).float(), meta={"affine": torch.as_tensor(model_affine(image))})
        inverter = Invertd(keys="pred", transform=preprocessing, orig_keys=image_key, nearest_interp=True)
        pred = inverter({**data, "pred": pred})["pred"]
    result = np.rint(torch.as_tensor(pred).numpy()[0]).astype(np.int16)
    affine = model_affine(pred) if isinstance(pred, MetaTensor) else None
    if affine is None:
        raise GeometryError("the inverted prediction carries no affine: cannot prove where it lies")
    back = Geometry(result.shape, affine)
    if not back.matches(stored, atol=max(AFFINE_ATOL, 1e-3 * max(stored.spacing))):
        raise GeometryError(f"prediction came back on {back.describe()}, not on the image's {stored.describe()}")
    return result

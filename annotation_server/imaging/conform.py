"""Put a label on its image's grid, or explain exactly why it does not fit.

3D Slicer may save a `.seg.nrrd` segmentation cropped to the segments' extent (same spacing and axes,
shifted origin). Such a label is a sub-grid of the image and, when the caller allows it, is padded back
losslessly. Anything else whose shape or affine differs from the image is refused, because a label off
by a flip or a voxel is the worst bug an annotation tool can have.
"""

from __future__ import annotations

import numpy as np

from annotation_server.errors import GeometryMismatchError
from annotation_server.imaging.volume import AFFINE_ATOL, Geometry


def _subgrid_offset(label: Geometry, image: Geometry) -> tuple[int, int, int] | None:
    """Integer voxel offset of `label` inside `image` if label is an axis-aligned crop of it, else None."""
    if not np.allclose(label.affine[:3, :3], image.affine[:3, :3], atol=AFFINE_ATOL, rtol=1e-6):
        return None
    inverse = np.linalg.inv(image.affine)
    offset = inverse @ label.affine[:, 3]
    rounded = np.round(offset[:3])
    if not np.allclose(offset[:3], rounded, atol=1e-3):
        return None
    start = tuple(int(v) for v in rounded)
    if any(s < 0 or s + n > m for s, n, m in zip(start, label.shape, image.shape, strict=True)):
        return None
    return start  # type: ignore[return-value]


def conform_label(
    array: np.ndarray, label_geometry: Geometry, image_geometry: Geometry, allow_subgrid: bool = False
) -> np.ndarray:
    """Return `array` on `image_geometry` (padding a cropped sub-grid if allowed); else GeometryMismatchError."""
    if label_geometry.matches(image_geometry):
        return array
    start = _subgrid_offset(label_geometry, image_geometry) if allow_subgrid else None
    if start is None:
        raise GeometryMismatchError(
            "label does not match its image's voxel grid: label has "
            f"{label_geometry.describe()}, image has {image_geometry.describe()}. "
            "Export the label over the image (same size, spacing, orientation and origin)."
        )
    full = np.zeros(image_geometry.shape, dtype=array.dtype)
    region = tuple(slice(s, s + n) for s, n in zip(start, label_geometry.shape, strict=True))
    full[region] = array
    return full

"""In-memory volumes and their geometry.

One convention everywhere: arrays are indexed (i, j, k) in the order of the file's voxel axes (what
nibabel returns and what MONAI Label clicks mean), and `affine` maps (i, j, k, 1) to RAS millimetres.
Formats stored in LPS (NRRD, DICOM, ITK) are converted on read and back on write, so a label written
from a Volume lands on exactly the grid it was read from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

# Differences below this (mm, or unit-less for direction terms) come from float32 storage, not a different grid.
AFFINE_ATOL = 1e-3


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume: its shape and its voxel-to-RAS affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "affine", np.asarray(self.affine, dtype=np.float64).reshape(4, 4))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def axcodes(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))

    def matches(self, other: Geometry, atol: float = AFFINE_ATOL) -> bool:
        """Same shape and the same affine up to float32 storage noise."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol, rtol=1e-6))

    def describe(self) -> str:
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        origin = ", ".join(f"{v:.2f}" for v in self.affine[:3, 3])
        return f"shape {self.shape}, spacing {spacing} mm, orientation {self.axcodes}, origin ({origin})"

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "affine": self.affine.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Geometry:
        return cls(shape=tuple(data["shape"]), affine=np.asarray(data["affine"]))  # type: ignore[arg-type]


@dataclass
class Volume:
    """A 3-D array with its geometry and what is needed to write results back in the source's own terms."""

    array: np.ndarray
    geometry: Geometry
    source_format: str = "nifti"
    # Format-specific header of the source (a nibabel header for NIfTI) reused so outputs copy its qform/sform.
    header: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a Volume is 3-D, got an array of shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"array shape {self.array.shape} differs from geometry shape {self.geometry.shape}")

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_from_itk(direction: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """RAS affine from ITK's LPS direction (3x3, columns = axes), spacing and origin."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) @ np.diag(spacing)
    lps[:3, 3] = origin
    return RAS_FROM_LPS @ lps


def itk_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(direction 3x3, spacing, origin) in ITK's LPS terms from a RAS affine."""
    lps = RAS_FROM_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return direction, spacing, lps[:3, 3].copy()

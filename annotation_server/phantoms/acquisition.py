"""From ideal tissue HU to a scanner-like image: partial volume, texture, PSF, slice profile, noise, resampling
and array orientation.

Order follows the physics: the object (with sub-voxel partial volume from the renderer and, optionally,
area-averaging of a supersampled grid) is blurred by the in-plane PSF and the slice sensitivity profile,
then quantum noise shaped by the reconstruction kernel is added (CT noise is correlated over ~1 mm and has
little low-frequency power), a sharp kernel optionally enhances edges and noise, calibration drift scales and
shifts HU, and finally the volume may be resampled like a preprocessed dataset and stored in any axis order.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

RAS = "RAS"


def block_average(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Area-average `factors` blocks (partial volume of a supersampled grid); shape must be divisible."""
    if factors == (1, 1, 1):
        return volume
    sx, sy, sz = factors
    nx, ny, nz = (volume.shape[-3] // sx, volume.shape[-2] // sy, volume.shape[-1] // sz)
    lead = volume.shape[:-3]
    view = volume.reshape(*lead, nx, sx, ny, sy, nz, sz)
    axes = tuple(len(lead) + a for a in (1, 3, 5))
    return view.mean(axis=axes, dtype=np.float32)


def _unit(field: np.ndarray) -> np.ndarray:
    field -= field.mean()
    field /= field.std() + 1e-6
    return field


def _smooth(field: np.ndarray, size_mm: float, spacing: tuple[float, ...], axes: int = 3) -> np.ndarray:
    """Cheap wide low-pass: two box filters (~Gaussian), cost independent of the width."""
    size = [max(1, round(size_mm / h)) for h in spacing[:axes]] + [1] * (3 - axes)
    return ndimage.uniform_filter(ndimage.uniform_filter(field, size, mode="wrap"), size, mode="wrap")


def noise_fields(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], grain_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """(tissue texture, CT noise), both unit variance, from one white field (saves time; their correlation
    is invisible). Texture = fine grain (~1.5 mm) + slow inhomogeneity (~1 cm); noise is correlated over
    ~`grain_mm` in-plane and band-limited like filtered back-projection noise (little low-frequency power).
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    fine = ndimage.gaussian_filter(white, [max(1.2 / h, 0.35) for h in spacing], mode="wrap")
    slow = _unit(_smooth(white, 10.0, spacing))
    texture = 0.8 * _unit(fine.copy()) + 0.6 * slow
    sigma = [max(grain_mm / spacing[0], 0.3), max(grain_mm / spacing[1], 0.3), 0.3]
    sharp = ndimage.gaussian_filter(white[::-1], sigma, mode="wrap")  # reversed: decorrelated from texture
    noise = _unit(sharp - 0.6 * _smooth(sharp, 3 * grain_mm + 2 * spacing[0], spacing, axes=2))
    return texture.astype(np.float32), noise


def psf_blur(image: np.ndarray, spacing: tuple[float, ...], sigma_xy_mm: float, thickness_mm: float) -> np.ndarray:
    """In-plane Gaussian PSF and the extra z blur of a slice thicker than the slice spacing."""
    extra_z = np.sqrt(max(thickness_mm**2 - spacing[2] ** 2, 0.0)) / 2.355
    sigma = [sigma_xy_mm / spacing[0], sigma_xy_mm / spacing[1], extra_z / spacing[2]]
    sigma = [s if s > 0.1 else 0.0 for s in sigma]
    if not any(sigma):
        return image
    return ndimage.gaussian_filter(image, sigma, mode="nearest")


def sharpen(image: np.ndarray, spacing: tuple[float, ...], amount: float) -> np.ndarray:
    """Edge-enhancing reconstruction kernel (bone/sharp): unsharp mask in-plane."""
    sigma = [1.2 / spacing[0] + 0.5, 1.2 / spacing[1] + 0.5, 0.0]
    return image + amount * (image - ndimage.gaussian_filter(image, sigma, mode="nearest"))


def resample(
    volume: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...], order: int = 1
) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Linear resampling onto `target` spacing keeping the FOV edges (like MONAI Spacingd, no antialias).

    Works on (..., x, y, z) arrays. Returns the new volume, its spacing and the shift of voxel 0 (mm).
    """
    shape = volume.shape[-3:]
    new_shape = tuple(max(1, round(n * h / t)) for n, h, t in zip(shape, spacing, target, strict=True))
    zoom = np.array([t / h for h, t in zip(spacing, target, strict=True)])
    offset = (zoom - 1.0) / 2.0  # voxel-centre alignment of the outer FOV edges
    lead = volume.shape[:-3]
    flat = volume.reshape(-1, *shape)
    out = np.stack(
        [
            ndimage.affine_transform(v, zoom, offset=offset, output_shape=new_shape, order=order, mode="nearest")
            for v in flat
        ]
    ).reshape(*lead, *new_shape)
    shift = offset * np.asarray(spacing)
    return out, tuple(float(t) for t in target), shift


def reorient(arrays: list[np.ndarray], affine: np.ndarray, code: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Flip/permute canonical RAS arrays into axis order `code` and return the matching affine.

    World coordinates of every voxel are unchanged, so anatomy stays on the right side whatever the order.
    """
    if code == RAS:
        return arrays, affine
    transform = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(RAS), nib.orientations.axcodes2ornt(tuple(code))
    )
    shape = arrays[0].shape
    out = [np.ascontiguousarray(nib.orientations.apply_orientation(a, transform)) for a in arrays]
    return out, affine @ nib.orientations.inv_ornt_aff(transform, shape)


def ras_affine(spacing: tuple[float, ...], origin: np.ndarray) -> np.ndarray:
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    return affine

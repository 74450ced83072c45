"""Deliberately out-of-distribution corruptions, for active-learning and OOD-detection tests.

Each corruption works on the float HU volume in canonical RAS order before quantisation and returns a small
dict describing what it did (stored in `Phantom.meta["ood"]`). The anatomy (and thus the label) is left
unchanged except for truncation, which blanks image *and* label outside the reconstructed circle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from annotation_server.phantoms.acquisition import noise_fields
from annotation_server.phantoms.config import OODKind


def extreme_noise(rng: np.random.Generator, image: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    std = float(rng.uniform(80, 220))
    image += std * noise_fields(rng, image.shape, spacing, rng.uniform(0.5, 1.5))[1]
    return {"noise_std_hu": round(std, 1)}


def metal_streak(
    rng: np.random.Generator, image: np.ndarray, spacing: tuple[float, ...], kidney_index: np.ndarray | None
) -> dict[str, Any]:
    """Metal (clips, spinal hardware) with bright/dark streaks radiating in the axial plane."""
    nx, ny, nz = image.shape
    if kidney_index is not None and len(kidney_index) and rng.random() < 0.6:
        center = kidney_index[int(rng.integers(len(kidney_index)))].astype(float)
        center[:2] += rng.normal(0, 25 / np.asarray(spacing[:2]))
    else:
        center = np.array([nx / 2 + rng.normal(0, nx / 10), ny * rng.uniform(0.3, 0.6), nz * rng.uniform(0.2, 0.8)])
    count = int(rng.integers(1, 3))
    objects = [center + np.append(rng.normal(0, 20 / np.asarray(spacing[:2])), 0) * (i > 0) for i in range(count)]
    x = np.arange(nx)[:, None] * spacing[0]
    y = np.arange(ny)[None, :] * spacing[1]
    half_z = max(1, round(rng.uniform(4, 15) / spacing[2]))
    streaks = np.zeros((nx, ny), np.float32)
    metal = np.zeros((nx, ny), np.float32)
    strength = float(rng.uniform(300, 1200))
    for obj in objects:
        cx, cy = obj[0] * spacing[0], obj[1] * spacing[1]
        dx, dy = x - cx, y - cy
        r = np.sqrt(dx * dx + dy * dy) + 1e-3
        angle = np.arctan2(dy, dx)
        lines = int(rng.integers(6, 16))
        phase = rng.uniform(0, np.pi)
        pattern = np.cos(lines * (angle + phase)) ** 15 - 0.35 * np.cos(lines * (angle + phase) + np.pi / 2) ** 15
        streaks += (strength * pattern * np.exp(-r / rng.uniform(60, 160))).astype(np.float32)
        metal = np.maximum(metal, (r < rng.uniform(3, 7)).astype(np.float32))
    if count == 2:  # dark band between two metal objects (photon starvation)
        (ax, ay), (bx, by) = (objects[0][:2] * spacing[:2]), (objects[1][:2] * spacing[:2])
        ab = np.array([bx - ax, by - ay])
        t = np.clip(((x - ax) * ab[0] + (y - ay) * ab[1]) / (ab @ ab + 1e-6), 0, 1)
        dist = np.sqrt((x - ax - t * ab[0]) ** 2 + (y - ay - t * ab[1]) ** 2)
        streaks -= (strength * 0.8 * np.exp(-((dist / 4.0) ** 2))).astype(np.float32)
    z0 = int(center[2])
    lo, hi = max(0, z0 - half_z), min(nz, z0 + half_z + 1)
    for k in range(lo, hi):
        weight = 1.0 - abs(k - z0) / (half_z + 1)
        image[:, :, k] += streaks * weight
        image[:, :, k] = np.maximum(image[:, :, k], metal * 3000.0)
    return {"objects": count, "streak_hu": round(strength, 0), "slices": hi - lo}


def unusual_intensity(rng: np.random.Generator, image: np.ndarray) -> dict[str, Any]:
    mode = str(rng.choice(["offset", "gain", "gamma", "inverted"]))
    if mode == "offset":
        value = float(rng.choice([-1, 1]) * rng.uniform(200, 500))
        image += value
    elif mode == "gain":
        value = float(rng.uniform(1.8, 3.0))
        image *= value
    elif mode == "gamma":
        value = float(rng.uniform(0.5, 0.7))
        normalised = np.clip((image + 1024.0) / 4096.0, 0, 1)
        image[...] = normalised**value * 4096.0 - 1024.0
    else:
        value = 0.0
        image[...] = -image - 1000.0
    return {"mode": mode, "value": round(value, 2)}


def motion(rng: np.random.Generator, image: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Breathing ghosts along y and a slab of slices shifted (misregistered)."""
    shift = rng.uniform(8, 25) / spacing[1]
    weight = float(rng.uniform(0.15, 0.35))
    ghost = ndimage.shift(image, (0, shift, 0), order=1, mode="nearest")
    image[...] = (1 - weight) * image + weight * ghost
    nz = image.shape[2]
    start = int(rng.integers(0, max(1, nz - 2)))
    stop = min(nz, start + max(2, nz // 6))
    offset = rng.uniform(5, 15) / spacing[1]
    image[:, :, start:stop] = ndimage.shift(image[:, :, start:stop], (0, offset, 0), order=1, mode="nearest")
    return {"ghost_shift_mm": round(shift * spacing[1], 1), "slab": [start, stop]}


def truncation(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> dict:
    """Reconstruction circle smaller than the body: outside set to -1024, with a bright rim at the edge."""
    nx, ny, _ = image.shape
    x = (np.arange(nx) - nx / 2)[:, None] * spacing[0]
    y = (np.arange(ny) - ny / 2)[None, :] * spacing[1]
    radius = float(min(nx * spacing[0], ny * spacing[1]) / 2 * rng.uniform(0.55, 0.8))
    r = np.sqrt(x * x + y * y)
    outside = r > radius
    rim = np.exp(-(((r - radius) / 6.0) ** 2)) * (r <= radius) * rng.uniform(100, 300)
    image += rim[:, :, None].astype(np.float32)
    image[outside] = -1024.0
    label[outside] = 0
    return {"fov_radius_mm": round(radius, 1)}


def beam_hardening(rng: np.random.Generator, image: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Cupping (centre darker than the periphery) inside the body."""
    nx, ny, _ = image.shape
    x = (np.arange(nx) - nx / 2)[:, None] * spacing[0]
    y = (np.arange(ny) - ny / 2)[None, :] * spacing[1]
    radius = float(min(nx * spacing[0], ny * spacing[1]) / 2)
    depth = float(rng.uniform(40, 120))
    cup = depth * np.clip(1 - (x * x + y * y) / radius**2, 0, 1)
    body = image > -500
    image -= (cup[:, :, None] * body).astype(np.float32)
    return {"cupping_hu": round(depth, 1)}


def apply_ood(
    rng: np.random.Generator,
    kind: OODKind,
    image: np.ndarray,
    label: np.ndarray,
    spacing: tuple[float, ...],
) -> dict[str, Any]:
    """Apply one corruption in place; returns its description."""
    if kind == OODKind.EXTREME_NOISE:
        info = extreme_noise(rng, image, spacing)
    elif kind == OODKind.METAL_STREAK:
        kidney = np.argwhere(label > 0) if label.any() else None
        info = metal_streak(rng, image, spacing, kidney)
    elif kind == OODKind.UNUSUAL_INTENSITY:
        info = unusual_intensity(rng, image)
    elif kind == OODKind.MOTION:
        info = motion(rng, image, spacing)
    elif kind == OODKind.TRUNCATION:
        info = truncation(rng, image, label, spacing)
    else:
        info = beam_hardening(rng, image, spacing)
    return {"kind": kind.value, **info}

"""Prompts as the server's `annotation_server/interactive/prompts.py` expects them, from Slicer's RAS points.

Voxel indices are (i, j, k) into the image as stored; for a volume loaded from the same file these are
Slicer's IJK, so RAS -> IJK is the inverse of the volume's IJKToRAS matrix (rounded to the nearest voxel).
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

Voxel = tuple[int, int, int]


def ras_to_ijk(ijk_to_ras: np.ndarray, ras: Sequence[float], shape: Sequence[int] | None = None) -> Voxel:
    """The voxel a RAS point falls in; with `shape`, a point outside the image raises a message saying so."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    ijk = np.linalg.solve(matrix, np.array([*ras, 1.0], dtype=float))[:3]
    voxel = tuple(int(v) for v in np.floor(ijk + 0.5))
    if shape is not None and any(not 0 <= v < n for v, n in zip(voxel, shape, strict=False)):
        raise ValueError(f"the point {list(np.round(ras, 1))} (RAS) is outside the image: place it on the volume")
    return voxel  # type: ignore[return-value]


def _common(label: str | None, positive: bool, locked: Iterable[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"positive": bool(positive)}
    if label:
        body["label"] = label
    locked = sorted(set(locked))
    if locked:
        body["locked_labels"] = locked
    return body


def point_prompt(
    voxel: Sequence[int],
    positive: bool = True,
    label: str | None = None,
    locked: Iterable[str] = (),
    scope: str = "local",
) -> dict[str, Any]:
    return {"type": "point", "point": [int(v) for v in voxel], "scope": scope, **_common(label, positive, locked)}


def box_prompt(
    corner_a: Sequence[int], corner_b: Sequence[int], label: str | None = None, locked: Iterable[str] = ()
) -> dict[str, Any]:
    """Two opposite corners (inclusive); corners on one slice make a 2-D box."""
    corners = [[int(v) for v in corner_a], [int(v) for v in corner_b]]
    return {"type": "box", "corners": corners, **_common(label, True, locked)}


def lasso_prompt(
    axis: int,
    index: int,
    polygon: Sequence[Sequence[float]],
    positive: bool = True,
    label: str | None = None,
    locked: Iterable[str] = (),
) -> dict[str, Any]:
    """A filled polygon on slice `index` of `axis` (2 = k, an axial slice for an RAS/LPS volume); the vertices
    are in the two other axes' order, e.g. (i, j) for axis 2."""
    if len(polygon) < 3:
        raise ValueError("a lasso needs at least 3 points: draw a closed curve around the region")
    vertices = [[float(a), float(b)] for a, b in polygon]
    return {
        "type": "lasso",
        "axis": int(axis),
        "index": int(index),
        "polygon": vertices,
        **_common(label, positive, locked),
    }


def scribble_prompt(
    voxels: np.ndarray, positive: bool = True, label: str | None = None, locked: Iterable[str] = ()
) -> dict[str, Any]:
    """Painted voxels (an (n, 3) array of i, j, k) sent as their bounding box, zlib-compressed uint8, base64."""
    points = np.asarray(voxels, dtype=int).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("the scribble paints no voxel: paint on the volume")
    low, high = points.min(axis=0), points.max(axis=0)
    painted = np.zeros(tuple(high - low + 1), dtype=np.uint8)
    painted[tuple((points - low).T)] = 1
    data = base64.b64encode(zlib.compress(painted.tobytes(), 6)).decode()
    return {
        "type": "scribble",
        "offset": [int(v) for v in low],
        "shape": [int(v) for v in painted.shape],
        "data": data,
        **_common(label, positive, locked),
    }


def lasso_from_ras(
    ijk_to_ras: np.ndarray, points_ras: Sequence[Sequence[float]], shape: Sequence[int], **options: Any
) -> dict[str, Any]:
    """A lasso from a closed curve drawn in a slice view: the axis held fixed is the one along which the
    curve's voxel coordinates vary least (the slice's normal)."""
    ijk = np.array([np.linalg.solve(np.asarray(ijk_to_ras, float), [*p, 1.0])[:3] for p in points_ras])
    axis = int(np.argmin(np.ptp(ijk, axis=0)))
    index = int(np.floor(np.median(ijk[:, axis]) + 0.5))
    if not 0 <= index < shape[axis]:
        raise ValueError("the lasso is outside the image: draw it on the volume")
    others = [a for a in range(3) if a != axis]
    return lasso_prompt(axis, index, ijk[:, others].tolist(), **options)

"""Grids and anti-aliased implicit shapes: the drawing primitives of the phantom renderer.

Every shape returns an *occupancy* in [0, 1] per voxel computed from an approximate signed distance and a
linear ramp one projected voxel wide. That is analytic partial-volume: a voxel half inside an organ gets
half of its intensity, so image and label (occupancy > 0.5) agree without rendering at a much finer grid.
Shapes are evaluated only inside their bounding box, which keeps a phantom well under a second.

Coordinates are millimetres in the *patient frame*: x to the patient's right, y anterior, z superior (RAS),
origin at the centre of the L2 vertebral body. Arrays are always canonical RAS here; other orientations
are produced at the very end (`acquisition.reorient`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BBox = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel centres of a canonical RAS grid: coordinate of voxel (i, j, k) is origin + (i, j, k) * spacing."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, dim: int) -> np.ndarray:
        return (self.origin[dim] + self.spacing[dim] * np.arange(self.shape[dim])).astype(np.float32)

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.axis(0), self.axis(1), self.axis(2)

    def bbox(self, low: np.ndarray, high: np.ndarray) -> BBox | None:
        """Index slices covering the world box [low, high], or None when it misses the grid."""
        slices = []
        for dim in range(3):
            start = int(np.floor((low[dim] - self.origin[dim]) / self.spacing[dim]))
            stop = int(np.ceil((high[dim] - self.origin[dim]) / self.spacing[dim])) + 1
            start, stop = max(start, 0), min(stop, self.shape[dim])
            if start >= stop:
                return None
            slices.append(slice(start, stop))
        return slices[0], slices[1], slices[2]

    def coords(self, box: BBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate vectors (n,1,1), (1,m,1), (1,1,k) of a box."""
        x, y, z = (self.axis(d)[box[d]] for d in range(3))
        return x[:, None, None], y[None, :, None], z[None, None, :]

    @property
    def mean_spacing(self) -> float:
        return float(np.prod(self.spacing) ** (1 / 3))


def ramp(distance: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """Occupancy from signed distance (negative inside): a linear ramp `width` mm wide (box-filter PV)."""
    occ = 0.5 - distance / width
    np.clip(occ, 0.0, 1.0, out=occ)
    return occ.astype(np.float32, copy=False)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix Rz(yaw) @ Ry(pitch) @ Rx(roll) (radians); its columns are the local axes."""
    cz, sz, cy, sy, cx, sx = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def frame(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """Orthonormal frame with columns (primary, secondary orthogonalised, their cross product)."""
    a = primary / np.linalg.norm(primary)
    b = secondary - a * float(a @ secondary)
    b = b / np.linalg.norm(b)
    return np.stack([a, b, np.cross(a, b)], axis=1)


N_HARMONICS = 12


def _fibonacci_sphere(count: int) -> np.ndarray:
    """Quasi-uniform unit vectors (3, count): used to bound the radius of a bumpy ellipsoid."""
    i = np.arange(count) + 0.5
    phi = np.arccos(1 - 2 * i / count)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])


_DIRECTIONS = _fibonacci_sphere(400)


def _harmonic_basis(nx: np.ndarray, ny: np.ndarray, nz: np.ndarray) -> list[np.ndarray]:
    """Low-order polynomials of the unit direction: smooth random bumps on an ellipsoid surface."""
    return [
        nx,
        ny,
        nz,
        nx * ny,
        nx * nz,
        ny * nz,
        nx * nx - ny * ny,
        3 * nz * nz - 1,
        nx * ny * nz,
        nx * nx * nx,
        ny * ny * ny,
        nz * nz * nz,
    ]


@dataclass(frozen=True)
class Ellipsoid:
    """Rotated ellipsoid whose radius is modulated by low-order harmonics (organ-like smooth blob).

    `rot` columns are the local axes in the patient frame; `radii` are the semi-axes along them. `bend`
    curves the first axis towards the second (a kidney's bean shape: poles towards the hilum side), in units
    of the second radius at the poles.
    """

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray
    harmonics: np.ndarray | None = None
    bend: float = 0.0

    def max_modulation(self) -> float:
        """Largest radius factor of the harmonic bumps, measured on a fixed set of directions (+5 %)."""
        if self.harmonics is None or not np.any(self.harmonics):
            return 1.0
        n = _DIRECTIONS
        values = 1.0 + sum(c * b for c, b in zip(self.harmonics, _harmonic_basis(n[0], n[1], n[2]), strict=True))
        return float(np.max(values)) * 1.05 + 0.02

    def half_extent(self) -> np.ndarray:
        radii = self.radii * np.array([1.0, 1.0 + abs(self.bend), 1.0])
        return np.sqrt(((self.rot * radii[None, :]) ** 2).sum(axis=1)) * self.max_modulation()

    def box(self, grid: Grid, pad: float = 0.0) -> BBox | None:
        half = self.half_extent() + pad + 2 * max(grid.spacing)
        return grid.bbox(self.center - half, self.center + half)

    def local(self, grid: Grid, box: BBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local coordinates in units of the radii (u, v, w): the unit ball is the unmodulated ellipsoid."""
        x, y, z = grid.coords(box)
        px, py, pz = x - self.center[0], y - self.center[1], z - self.center[2]
        r = self.rot
        u, v, w = (((r[0, i] * px + r[1, i] * py + r[2, i] * pz) / self.radii[i]).astype(np.float32) for i in range(3))
        if self.bend:
            v -= np.float32(self.bend) * u * u
        return u, v, w

    def sdf(self, grid: Grid, box: BBox) -> tuple[np.ndarray, np.ndarray]:
        """(approximate signed distance in mm, ramp width in mm) inside `box`."""
        u, v, w = self.local(grid, box)
        g = np.sqrt(u * u + v * v + w * w) + 1e-6
        gu, gv, gw = u / self.radii[0], v / self.radii[1], w / self.radii[2]
        grad = np.sqrt(gu * gu + gv * gv + gw * gw) / g + 1e-9
        modulation: np.ndarray | float = 1.0
        if self.harmonics is not None and np.any(self.harmonics):
            basis = _harmonic_basis(u / g, v / g, w / g)
            modulation = 1.0 + sum(c * b for c, b in zip(self.harmonics, basis, strict=True) if c != 0.0)
            modulation = np.maximum(modulation, 0.4)
        distance = (g - modulation) / grad
        return distance, _normal_width(grid, (gu, gv, gw), self.rot)

    def occupancy(self, grid: Grid, pad: float = 0.0) -> tuple[BBox, np.ndarray] | None:
        box = self.box(grid, pad)
        if box is None:
            return None
        distance, width = self.sdf(grid, box)
        return box, ramp(distance, width)


def _normal_width(
    grid: Grid, local_grad: tuple[np.ndarray, np.ndarray, np.ndarray], rot: np.ndarray
) -> np.ndarray | float:
    """Ramp width = voxel size projected on the surface normal (exact PV width for anisotropic voxels)."""
    hx, hy, hz = grid.spacing
    if abs(hx - hy) < 1e-6 and abs(hy - hz) < 1e-6:
        return hx
    gu, gv, gw = local_grad
    nx = rot[0, 0] * gu + rot[0, 1] * gv + rot[0, 2] * gw
    ny = rot[1, 0] * gu + rot[1, 1] * gv + rot[1, 2] * gw
    nz = rot[2, 0] * gu + rot[2, 1] * gv + rot[2, 2] * gw
    norm2 = nx * nx + ny * ny + nz * nz + 1e-12
    return np.sqrt((nx * nx * hx * hx + ny * ny * hy * hy + nz * nz * hz * hz) / norm2)


def capsule_sdf(grid: Grid, box: BBox, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> tuple:
    """Signed distance to a tapered capsule a->b (radii ra, rb) and the projected ramp width."""
    x, y, z = grid.coords(box)
    ab = b - a
    length2 = float(ab @ ab) + 1e-9
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = (px * ab[0] + py * ab[1] + pz * ab[2]) / length2
    np.clip(t, 0.0, 1.0, out=t)
    qx, qy, qz = px - t * ab[0], py - t * ab[1], pz - t * ab[2]
    dist = np.sqrt(qx * qx + qy * qy + qz * qz)
    distance = dist - (ra + (rb - ra) * t)
    hx, hy, hz = grid.spacing
    if abs(hx - hz) < 1e-6 and abs(hx - hy) < 1e-6:
        return distance, hx
    width = np.sqrt((qx * qx * hx * hx + qy * qy * hy * hy + qz * qz * hz * hz) / (dist * dist + 1e-9))
    return distance, np.maximum(width, min(grid.spacing))


def polyline_occupancy(
    grid: Grid, points: np.ndarray, radii: np.ndarray, wall: float = 0.0
) -> tuple[BBox, np.ndarray, np.ndarray | None] | None:
    """Occupancy of a tube through `points` (n, 3) with per-point radii; with `wall` > 0 also the lumen.

    The union is taken on the signed distances (min), so joints between segments do not bulge.
    """
    low = points.min(axis=0) - radii.max() - 2 * max(grid.spacing)
    high = points.max(axis=0) + radii.max() + 2 * max(grid.spacing)
    box = grid.bbox(low, high)
    if box is None:
        return None
    distance: np.ndarray | None = None
    width: np.ndarray | float = grid.spacing[0]
    for i in range(len(points) - 1):
        d, w = capsule_sdf(grid, box, points[i], points[i + 1], float(radii[i]), float(radii[i + 1]))
        if distance is None:
            distance, width = d, w
        else:
            closer = d < distance
            distance = np.where(closer, d, distance)
            if isinstance(w, np.ndarray):
                width = np.where(closer, w, width)
    assert distance is not None
    outer = ramp(distance, width)
    lumen = ramp(distance + wall, width) if wall > 0 else None
    return box, outer, lumen


def ztube_occupancy(
    grid: Grid,
    z_range: tuple[float, float],
    center: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    radius: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    shrink: float = 0.0,
) -> tuple[BBox, np.ndarray] | None:
    """Elliptic tube running along z (vessels, muscles, vertebral bodies): centre and radii vary with z.

    `center(z) -> (xc, yc)` and `radius(z) -> (rx, ry)` take the z coordinates of the grid slices. The xy
    box is derived from them, so a tube costs only its own voxels. `shrink` mm shrinks the radii (walls,
    lumens). Ends are anti-aliased along z too.
    """
    pad = 2 * max(grid.spacing)
    zbox = grid.bbox(np.array([-1e9, -1e9, z_range[0] - pad]), np.array([1e9, 1e9, z_range[1] + pad]))
    if zbox is None:
        return None
    zc = grid.axis(2)[zbox[2]]
    xc, yc = (np.broadcast_to(np.asarray(v, np.float32), zc.shape) for v in center(zc))
    rx, ry = (np.broadcast_to(np.asarray(v, np.float32), zc.shape) for v in radius(zc))
    rx = np.maximum(rx - shrink, 0.5)
    ry = np.maximum(ry - shrink, 0.5)
    low = np.array([float((xc - rx).min()) - pad, float((yc - ry).min()) - pad, z_range[0] - pad])
    high = np.array([float((xc + rx).max()) + pad, float((yc + ry).max()) + pad, z_range[1] + pad])
    box = grid.bbox(low, high)
    if box is None:
        return None
    x, y, _ = grid.coords(box)
    u = (x - xc[None, None, :]) / rx[None, None, :]
    v = (y - yc[None, None, :]) / ry[None, None, :]
    rho = np.sqrt(u * u + v * v) + 1e-6
    u /= rx[None, None, :]
    v /= ry[None, None, :]
    grad = np.sqrt(u * u + v * v) / rho + 1e-9
    distance = (rho - 1.0) / grad
    hxy, hz = min(grid.spacing[0], grid.spacing[1]), grid.spacing[2]
    dz = np.maximum(z_range[0] - zc, zc - z_range[1]).astype(np.float32)[None, None, :]
    width: np.ndarray | float = hxy
    if abs(hz - hxy) > 1e-6:
        width = np.where(dz > distance, np.float32(hz), np.float32(hxy))
    return box, ramp(np.maximum(distance, dz), width)

"""Trunk: skin, subcutaneous fat, muscle wall, abdominal cavity, patient table, lung bases and ribs.

The trunk is a stack of nested superellipses (boxier than ellipses, like real abdomens) whose signed
distance is computed separably in (x, z) and (y, z), so the whole-volume cost is a handful of array ops.
The cavity occupancy returned by `paint_trunk` gates every organ, keeping viscera inside the muscle wall.
"""

from __future__ import annotations

import numpy as np

from annotation_server.phantoms.anatomy import Body, Patient
from annotation_server.phantoms.canvas import Canvas
from annotation_server.phantoms.geometry import BBox, Grid, ramp
from annotation_server.phantoms.intensity import Tissue


def superellipse_sdf(
    grid: Grid,
    box: BBox,
    semi: tuple[float, float, float],
    center_y: float,
    exponent: float,
    taper: float,
) -> np.ndarray:
    """First-order signed distance (mm) to a superellipse prism |x/a|^p + |y/b|^p = 1 (b differs front/back).

    The cross-section grows by `taper` per mm towards the feet. f/|grad f| is exact on the boundary and
    good to a few mm within +-30 mm of it, which is all the layers and ribs need.
    """
    x, y, z = (grid.axis(d)[box[d]] for d in range(3))
    half_width, anterior, posterior = semi
    growth = (1.0 - taper * z).astype(np.float32)
    a = half_width * growth
    p = exponent
    ax = np.abs(x)[:, None] + 1e-3
    xt = (ax / a[None, :]) ** p
    gx = p * xt / ax
    dy = (y - center_y)[:, None]
    b = np.where(dy >= 0, anterior, posterior) * growth[None, :]
    ay = np.abs(dy) + 1e-3
    yt = (ay / b) ** p
    gy = p * yt / ay
    f = xt[:, None, :] + yt[None, :, :] - 1.0
    grad = np.sqrt(gx[:, None, :] ** 2 + gy[None, :, :] ** 2) + 1e-6
    return (f / grad).astype(np.float32)


def _full(grid: Grid) -> BBox:
    return slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2])


def cavity_semi(body: Body) -> tuple[float, float, float]:
    ant, lat, post = body.wall
    return body.half_width - lat, body.anterior - ant, body.posterior - post


def paint_trunk(canvas: Canvas, patient: Patient) -> np.ndarray:
    """Paint skin, fat, muscle wall and visceral fat; return the cavity occupancy (full grid)."""
    grid, body = canvas.grid, patient.body
    box = _full(grid)
    h = min(grid.spacing[0], grid.spacing[1])
    fat = body.fat
    skin_out = body.envelope((fat[0] + body.skin, fat[1] + body.skin, fat[2] + body.skin))
    layers: list[tuple[tuple[float, float, float], Tissue]] = [
        (skin_out, Tissue.SKIN),
        (body.envelope(fat), Tissue.SUBCUT_FAT),
        (body.envelope((0.0, 0.0, 0.0)), Tissue.MUSCLE),
        (cavity_semi(body), Tissue.VISCERAL_FAT),
    ]
    cavity = np.zeros(grid.shape, np.float32)
    for semi, tissue in layers:
        occ = ramp(superellipse_sdf(grid, box, semi, body.center_y, body.exponent, body.taper), h)
        canvas.paint(box, occ, tissue)
        cavity = occ
    return cavity


def paint_table(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> dict[str, float]:
    """Curved patient table (carbon shell + foam) under the back, constant along z."""
    grid, body = canvas.grid, patient.body
    back = body.center_y - (body.posterior + body.fat[2] + body.skin) * (1.0 + body.taper * 150)
    top = back - rng.uniform(0.0, 12.0)
    curvature = rng.uniform(1 / 5000, 1 / 1500)
    shell, foam = rng.uniform(2.0, 4.0), rng.uniform(25.0, 50.0)
    box = grid.bbox(np.array([-1e4, top - foam - 2 * shell - 40, -1e4]), np.array([1e4, top + 60, 1e4]))
    if box is None:
        return {}
    x = grid.axis(0)[box[0]][:, None]
    y = grid.axis(1)[box[1]][None, :]
    surface = top + curvature * x * x  # cradle: the edges rise
    depth = surface - y  # mm below the table surface
    h = grid.spacing[1]
    outer = ramp(np.maximum(-depth, depth - (foam + 2 * shell)), h)[:, :, None]
    inner = ramp(np.maximum(-(depth - shell), depth - foam - shell), h)[:, :, None]
    canvas.paint(box, outer, Tissue.TABLE)
    canvas.paint(box, inner, Tissue.TABLE_FOAM)
    return {"table_top_y": float(top)}


def paint_lungs(canvas: Canvas, patient: Patient, cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Posterior/lateral costophrenic recesses above the diaphragm, lined by a thin diaphragm band."""
    grid, body, spine = canvas.grid, patient.body, patient.spine
    recess = spine.level_z(2) + rng.uniform(-35.0, 20.0)  # lowest point, posteriorly
    box = grid.bbox(np.array([-1e4, -1e4, recess - 5]), np.array([1e4, 1e4, 1e4]))
    if box is None:
        return
    semi = cavity_semi(body)
    d = superellipse_sdf(grid, box, semi, body.center_y, body.exponent, body.taper)
    x, y, z = grid.coords(box)
    r = np.sqrt(x * x + (y - body.center_y) ** 2) + 1e-3
    posterior = -(y - body.center_y) / r  # 1 behind, -1 in front
    floor = recess + 28.0 * (1.0 - posterior) + 8.0 * (np.abs(x) < 60)
    depth = np.clip((z - floor) * rng.uniform(0.9, 1.6), 0.0, 90.0)
    medial = np.clip((np.abs(x) - spine.body_half_width - 12.0) / 10.0, 0.0, 1.0)
    h = grid.mean_spacing
    lung = ramp(np.maximum(-d - depth, d + 1.5), h) * ramp(-(depth - 2.0), h) * medial
    diaphragm = ramp(np.abs(d + depth + 2.0) - 3.0, h) * (depth > 0) * medial
    canvas.paint(box, diaphragm.astype(np.float32), Tissue.MUSCLE, gate=cavity)
    canvas.paint(box, lung.astype(np.float32), Tissue.LUNG, gate=cavity)


RIBS = (7, 8, 9, 10, 11, 12)


def paint_ribs(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> int:
    """Ribs 7-12 and costal cartilages on a rib-cage superellipse, descending as they run forward.

    Returns how many rib pieces intersect the grid (for the metadata).
    """
    grid, body, spine = canvas.grid, patient.body, patient.spine
    s = patient.scale
    cav = cavity_semi(body)
    cage = (cav[0] + 4.0, cav[1] + 4.0, s * rng.uniform(40, 50))
    z_low = spine.level_z(-1) - 40.0
    box = grid.bbox(np.array([-1e4, -1e4, z_low]), np.array([1e4, 1e4, 1e4]))
    if box is None:
        return 0
    d = superellipse_sdf(grid, box, cage, body.center_y, 2.2, body.taper)
    band = np.abs(d) < 10.0
    index = np.nonzero(band)
    if index[0].size == 0:
        return 0
    x = grid.axis(0)[box[0]][index[0]]
    y = grid.axis(1)[box[1]][index[1]]
    z = grid.axis(2)[box[2]][index[2]]
    dr = d[index]
    absolute = shift_index(box, index)
    phi = np.arctan2(np.abs(x), -(y - body.center_y))  # 0 behind the spine .. pi in front
    h = grid.mean_spacing
    shown = 0
    for side in (1, -1):
        on_side = (x * side) > spine.body_half_width + 8
        for rib in RIBS:
            head = spine.level_z(2 + 12 - rib) + rng.uniform(-6, 6)
            drop = s * rng.uniform(45, 75)
            start = rng.uniform(0.35, 0.5)
            end = {12: 1.15, 11: 1.55, 10: 2.25, 9: 2.5, 8: 2.7, 7: 2.9}[rib] + rng.uniform(-0.15, 0.15)
            cartilage = 2.2 + rng.uniform(-0.1, 0.15) if rib <= 10 else 9.0
            height, thick = s * rng.uniform(9, 13), s * rng.uniform(6, 9)
            t = np.clip((phi - start) / (np.pi / 2), 0.0, None)
            zc = head - drop * t**1.15
            dz = np.abs(z - zc) - height / 2
            dphi = np.maximum(start - phi, phi - end) * np.abs(dr + cage[0])  # along-rib distance (mm)
            dist = np.maximum(np.maximum(dz, np.abs(dr) - thick / 2), dphi)
            occ = ramp(dist, h) * on_side
            hit = occ > 0
            if not hit.any():
                continue
            shown += 1
            sel = tuple(i[hit] for i in absolute)
            bone = phi[hit] < cartilage
            inner = ramp(dist[hit] + 2.0, h)
            o = occ[hit]
            canvas.paint_points(tuple(i[bone] for i in sel), o[bone], Tissue.BONE_CORTICAL)  # type: ignore[arg-type]
            canvas.paint_points(tuple(i[bone] for i in sel), inner[bone], Tissue.BONE_CANCELLOUS)  # type: ignore[arg-type]
            canvas.paint_points(tuple(i[~bone] for i in sel), o[~bone], Tissue.CARTILAGE)  # type: ignore[arg-type]
    return shown


def shift_index(box: BBox, index: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Box-relative indices to absolute grid indices."""
    return tuple(i + b.start for i, b in zip(index, box, strict=True))

"""Vertebral column and the muscles that hug it (psoas, quadratus lumborum, erector spinae, crura).

Vertebral bodies have a bright cortical shell around cancellous bone (the real CT shows ~115 HU spongiosa
and several hundred HU cortex at 3 mm); discs, the neural arch, spinous and transverse processes and the
CSF-filled canal follow the lordotic centre line. Psoas grows caudally as in real anatomy, which matters
because it is the kidney's medial neighbour.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from annotation_server.phantoms.anatomy import Patient, Spine
from annotation_server.phantoms.canvas import Canvas
from annotation_server.phantoms.geometry import Ellipsoid, rotation, ztube_occupancy
from annotation_server.phantoms.intensity import Tissue


def _levels(canvas: Canvas, patient: Patient) -> range:
    z = canvas.grid.axis(2)
    spine = patient.spine
    low = int(np.floor((z.min() - spine.level_offset) / spine.pitch)) - 1
    high = int(np.ceil((z.max() - spine.level_offset) / spine.pitch)) + 1
    return range(low, high + 1)


Profile = Callable[[np.ndarray], np.ndarray]


def _const(value: float) -> Profile:
    return lambda z: np.full_like(z, value)


def _beside_spine(spine: Spine, dx: Profile, dy: Profile) -> Callable[[np.ndarray], tuple]:
    """Centre-line function following the spine with offsets that may vary with z."""

    def center(z: np.ndarray) -> tuple:
        x, y = spine.center(z)
        return x + dx(z), y + dy(z)

    return center


def _radii(rx: Profile, ry: Profile) -> Callable[[np.ndarray], tuple]:
    return lambda z: (rx(z), ry(z))


def paint_muscles(canvas: Canvas, patient: Patient, cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Psoas, quadratus lumborum, erector spinae and diaphragmatic crura, both sides."""
    spine, s, grid = patient.spine, patient.scale, canvas.grid
    z_axis = grid.axis(2)
    z_lo, z_hi = float(z_axis.min()) - 10, float(z_axis.max()) + 10
    wx = spine.body_half_width
    vessels = patient.vessels
    for side in (1, -1):
        # psoas: starts small at T12/L1 and thickens towards the pelvis
        top = spine.level_z(rng.uniform(1.2, 2.0))
        r_top, growth = s * rng.uniform(5, 9), rng.uniform(0.09, 0.14)
        flat, shift = rng.uniform(0.75, 0.95), s * rng.uniform(-2, 8)

        def psoas(z: np.ndarray, top: float = top, r_top: float = r_top, growth: float = growth) -> np.ndarray:
            return np.clip(r_top + growth * (top - z), r_top, 30 * s)

        center = _beside_spine(spine, lambda z, p=psoas, d=side: d * (wx + 0.8 * p(z) + 1), _const(shift))
        hit = ztube_occupancy(grid, (z_lo, top), center, _radii(psoas, lambda z, p=psoas, f=flat: p(z) * f))
        if hit:
            canvas.paint(*hit, Tissue.PSOAS, gate=cavity)
        # quadratus lumborum: posterolateral, behind the kidney, larger caudally
        ql_top = spine.level_z(rng.uniform(1.0, 2.2))
        ql_x, ql_y = s * rng.uniform(52, 66), -s * rng.uniform(24, 34)
        ql_rx, ql_ry = s * rng.uniform(14, 22), s * rng.uniform(6, 10)

        def ql_grow(z: np.ndarray, ql_top: float = ql_top) -> np.ndarray:
            return np.clip((ql_top - z) / 60.0, 0.35, 1.3)

        center = _beside_spine(spine, _const(side * ql_x), _const(ql_y))
        radii = _radii(lambda z, g=ql_grow, r=ql_rx: r * g(z), lambda z, g=ql_grow, r=ql_ry: r * np.sqrt(g(z)))
        hit = ztube_occupancy(grid, (z_lo, ql_top), center, radii)
        if hit:
            canvas.paint(*hit, Tissue.MUSCLE, gate=cavity)
        # erector spinae in the paravertebral gutter: medial (multifidus/longissimus) + lateral (iliocostalis)
        es_x, es_y = s * rng.uniform(30, 38), -s * rng.uniform(44, 54)
        es_rx, es_ry = s * rng.uniform(22, 30), s * rng.uniform(22, 30)
        for dx, dy, rx, ry in ((es_x, es_y, es_rx, es_ry), (es_x + 0.7 * es_rx, es_y + 4, 0.7 * es_rx, 0.6 * es_ry)):
            center = _beside_spine(spine, _const(side * dx), _const(dy))
            hit = ztube_occupancy(grid, (z_lo, z_hi), center, _radii(_const(rx), _const(ry)))
            if hit:
                canvas.paint(*hit, Tissue.PARASPINAL)
        # diaphragmatic crus: band from the upper lumbar spine alongside the aorta
        crus_top, crus_bottom = spine.level_z(3.5), spine.level_z(rng.uniform(-0.3, 0.6))
        crus_r = s * rng.uniform(3, 6)

        def crus_c(z: np.ndarray, d: int = side, lo: float = crus_bottom, hi: float = crus_top, r: float = crus_r):
            t = np.clip((z - lo) / (hi - lo), 0, 1)
            ax, ay = vessels.aorta(spine, z)
            return ax + d * (vessels.aorta_r + r + 1 + 10 * t), ay - 2 + 6 * t

        hit = ztube_occupancy(grid, (crus_bottom, crus_top), crus_c, _radii(_const(crus_r), _const(crus_r * 1.8)))
        if hit:
            canvas.paint(*hit, Tissue.MUSCLE, gate=cavity)


def paint_spine(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> None:
    """Vertebral bodies with cortical shell, discs, neural arches, processes and the spinal canal."""
    grid, spine, s = canvas.grid, patient.spine, patient.scale
    height_frac = rng.uniform(0.72, 0.8)
    shell = rng.uniform(0.8, 1.6)
    thin_bone = canvas.table[Tissue.BONE_CANCELLOUS] + 0.35 * (
        canvas.table[Tissue.BONE_CORTICAL] - canvas.table[Tissue.BONE_CANCELLOUS]
    )  # thin processes: mostly cortex, partial-volume averaged
    canal_rx, canal_ry = s * rng.uniform(10, 12.5), s * rng.uniform(7.5, 9.5)
    arch = s * rng.uniform(5, 8)
    body_c = _beside_spine(spine, _const(0.0), _const(0.0))
    for level in _levels(canvas, patient):
        zc = spine.level_z(level)
        grow = 1.0 - 0.02 * level  # lumbar bodies get larger caudally
        rx, ry = spine.body_half_width * grow, spine.body_half_depth * grow
        half = spine.pitch * height_frac / 2
        body_r = _radii(_const(rx), _const(ry))
        hit = ztube_occupancy(grid, (zc - half, zc + half), body_c, body_r)
        if hit:
            canvas.paint(*hit, Tissue.BONE_CORTICAL)
            inner = ztube_occupancy(grid, (zc - half + shell, zc + half - shell), body_c, body_r, shrink=shell)
            if inner:
                canvas.paint(*inner, Tissue.BONE_CANCELLOUS)
        disc_r = _radii(_const(rx * 0.98), _const(ry * 0.98))
        hit = ztube_occupancy(grid, (zc + half, zc + spine.pitch - half), body_c, disc_r)
        if hit:
            canvas.paint(*hit, Tissue.DISC)
        # neural arch ring around the canal, spinous and transverse processes
        canal_dy = -(ry + canal_ry + 1.5)
        arch_c = _beside_spine(spine, _const(0.0), _const(canal_dy))
        arch_r = _radii(_const(canal_rx + arch), _const(canal_ry + arch))
        hit = ztube_occupancy(grid, (zc - 0.38 * spine.pitch, zc + 0.36 * spine.pitch), arch_c, arch_r)
        if hit:
            canvas.paint(*hit, Tissue.BONE_CORTICAL, hu=thin_bone)
        sx, sy = (float(v) for v in spine.center(zc))
        y_canal = sy + canal_dy
        spinous_len = s * rng.uniform(22, 32)
        spinous = Ellipsoid(
            np.array([sx, y_canal - canal_ry - arch - spinous_len / 2 + 4, zc - 0.1 * spine.pitch]),
            np.array([s * rng.uniform(3.5, 5.5), spinous_len / 2, s * rng.uniform(9, 13)]),
            np.eye(3),
        )
        hit = spinous.occupancy(grid)
        if hit:
            canvas.paint(*hit, Tissue.BONE_CORTICAL, hu=thin_bone)
        lumbar = level <= 1
        for side in (1, -1):
            length = s * (rng.uniform(12, 20) if lumbar else rng.uniform(8, 12))
            tp = Ellipsoid(
                np.array([sx + side * (canal_rx + arch + length * 0.75), y_canal + 4, zc + 0.1 * spine.pitch]),
                np.array([length, s * rng.uniform(2.5, 4.0), s * rng.uniform(4, 6)]),
                rotation(side * np.deg2rad(rng.uniform(0, 20)), 0.0, 0.0),
            )
            hit = tp.occupancy(grid)
            if hit:
                canvas.paint(*hit, Tissue.BONE_CORTICAL, hu=thin_bone)
    # spinal canal (CSF and cord), continuous through all levels
    z_axis = grid.axis(2)
    ry0 = spine.body_half_depth
    canal_c = _beside_spine(spine, _const(0.0), lambda z: -(ry0 * (1.0 - 0.02 * z / spine.pitch) + canal_ry + 1.5))
    canal_r = _radii(_const(canal_rx), _const(canal_ry))
    hit = ztube_occupancy(grid, (float(z_axis.min()) - 10, float(z_axis.max()) + 10), canal_c, canal_r)
    if hit:
        canvas.paint(*hit, Tissue.CSF)

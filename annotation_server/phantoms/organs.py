"""Abdominal organs around the kidneys: liver, spleen, stomach, gallbladder, pancreas, vessels and bowel.

These are the kidney's neighbours and confounders. In non-contrast CT the liver, spleen, bowel wall, psoas
and duodenum have HU close to the kidney's, so a model trained on phantoms must learn *shape and context*;
clutter of similar density next to the kidneys (colon flexures, duodenum, liver, spleen) is therefore
placed where it is in real patients, relative to the sampled kidneys.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from annotation_server.phantoms.anatomy import KidneySpec, Patient, harmonics
from annotation_server.phantoms.body import cavity_semi
from annotation_server.phantoms.canvas import Canvas
from annotation_server.phantoms.geometry import BBox, Ellipsoid, frame, polyline_occupancy, rotation, ztube_occupancy
from annotation_server.phantoms.intensity import Tissue

BOWEL = (
    Tissue.VISCERAL_FAT,
    Tissue.BOWEL_WALL,
    Tissue.BOWEL_FLUID,
    Tissue.BOWEL_GAS,
    Tissue.STOOL,
    Tissue.ORAL_CONTRAST,
)


def _mottle(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth unit-variance random field on a small box (stool bubbles, food, tumor heterogeneity)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="nearest")
    return field / (field.std() + 1e-6)


def _kidney(patient: Patient, side: int) -> KidneySpec | None:
    return next((k for k in patient.kidneys if k.side == side), None)


def _kidney_or_default(patient: Patient, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre and radii of the kidney on `side`, or where it would be (nephrectomy)."""
    kidney = _kidney(patient, side)
    if kidney is not None:
        return kidney.center, kidney.radii
    s = patient.scale
    _, y = patient.spine.center(0.0)
    return np.array([side * 70 * s, float(y) - 6, -8.0 if side > 0 else 5.0]), np.array([55, 28, 22]) * s


def paint_lumen(
    canvas: Canvas,
    rng: np.random.Generator,
    box: BBox,
    lumen: np.ndarray,
    content: str,
    gas_level: float | None,
    gate: np.ndarray | None,
) -> None:
    """Fill a hollow organ's lumen: fluid, oral contrast, stool (mottled with gas) or food, gas on top.

    Gas rises anteriorly in a supine patient, so everything above `gas_level` (y, mm) becomes gas.
    """
    table = canvas.table
    if content == "stool":
        field = _mottle(rng, lumen.shape, rng.uniform(0.8, 1.6))
        bubbles = np.clip((field - rng.uniform(0.0, 1.0)) * 2.0, 0.0, 1.0)
        hu = table[Tissue.STOOL] + rng.uniform(40, 90) * field * 0.4
        hu = hu + bubbles * (table[Tissue.BOWEL_GAS] - hu)
        canvas.paint(box, lumen, Tissue.STOOL, hu=hu.astype(np.float32), gate=gate)
    elif content == "food":
        field = _mottle(rng, lumen.shape, rng.uniform(1.0, 2.0))
        hu = table[Tissue.BOWEL_FLUID] + rng.uniform(10, 40) + rng.uniform(10, 30) * field
        canvas.paint(box, lumen, Tissue.BOWEL_FLUID, hu=hu.astype(np.float32), gate=gate)
    elif content == "contrast":
        canvas.paint(box, lumen, Tissue.ORAL_CONTRAST, gate=gate)
    else:
        canvas.paint(box, lumen, Tissue.BOWEL_FLUID, gate=gate)
    if gas_level is not None:
        y = canvas.grid.coords(box)[1]
        gas = lumen * np.clip(0.5 + (y - gas_level) / canvas.grid.spacing[1], 0.0, 1.0)
        canvas.paint(box, gas.astype(np.float32), Tissue.BOWEL_GAS, gate=gate)


def _tube(
    canvas: Canvas,
    rng: np.random.Generator,
    points: np.ndarray,
    radii: np.ndarray,
    wall: float,
    content: str,
    gas_fraction: float,
    gate: np.ndarray,
) -> None:
    """Hollow tube (bowel segment): wall, then content, with an air-fluid level when it holds gas."""
    hit = polyline_occupancy(canvas.grid, points, radii, wall=wall)
    if hit is None:
        return
    box, outer, lumen = hit
    canvas.paint(box, outer, Tissue.BOWEL_WALL, gate=gate)
    assert lumen is not None
    gas_level = None
    if gas_fraction > 0:
        top = float(points[:, 1].max() + radii.max())
        gas_level = top - 2 * radii.max() * gas_fraction
    paint_lumen(canvas, rng, box, lumen, content, gas_level, gate)


def paint_bowel(
    canvas: Canvas, patient: Patient, cavity: np.ndarray, rng: np.random.Generator, gas: float, oral: bool
) -> dict[str, int]:
    """Colon (with flexures next to the kidneys), duodenum and small-bowel loops."""
    s = patient.scale
    grid = canvas.grid
    (kr, kr_r), (kl, kl_r) = _kidney_or_default(patient, 1), _kidney_or_default(patient, -1)
    z_bottom = float(grid.axis(2).min()) - 40
    # ------------------------------------------------------------------ colon
    r_asc, r_tr, r_desc = s * rng.uniform(20, 30), s * rng.uniform(16, 24), s * rng.uniform(14, 21)
    hepatic = np.array(
        [kr[0] + rng.uniform(-10, 20), kr[1] + kr_r[2] + r_asc + rng.uniform(0, 25), kr[2] + rng.uniform(-25, 35)]
    )
    splenic = np.array(
        [kl[0] - rng.uniform(-5, 20), kl[1] + kl_r[2] + r_desc + rng.uniform(-5, 20), kl[2] + rng.uniform(15, 60)]
    )
    cav = cavity_semi(patient.body)
    front = patient.body.center_y + cav[1] - r_tr - rng.uniform(5, 40)
    transverse_z = min(hepatic[2], splenic[2]) - rng.uniform(-10, 70)
    ascending = np.array(
        [
            [hepatic[0] + rng.uniform(-5, 25), hepatic[1] - rng.uniform(0, 25), min(z_bottom, hepatic[2] - 60)],
            [hepatic[0] + rng.uniform(-5, 20), hepatic[1] - rng.uniform(-10, 20), (z_bottom + hepatic[2]) / 2],
            hepatic,
        ]
    )
    transverse = np.array(
        [hepatic, [rng.uniform(-30, 30), front, transverse_z], [splenic[0] + 20, front - 20, splenic[2] - 20], splenic]
    )
    descending = np.array(
        [
            splenic,
            [splenic[0] - rng.uniform(-5, 15), splenic[1] - rng.uniform(0, 30), (z_bottom + splenic[2]) / 2],
            [splenic[0] - rng.uniform(-10, 10), splenic[1] - rng.uniform(0, 30), min(z_bottom, splenic[2] - 60)],
        ]
    )
    segments = [(ascending, r_asc), (transverse, r_tr), (descending, r_desc)]
    for points, radius in segments:
        radii = radius * rng.uniform(0.8, 1.15, len(points))
        # wall first for all pieces of a segment, then the lumen, so joints have no septum
        for i in range(len(points) - 1):
            pair, pr = points[i : i + 2], radii[i : i + 2]
            content = "stool" if rng.random() < 0.8 else "fluid"
            gas_fraction = rng.uniform(0.2, 0.9) if rng.random() < gas + 0.35 else 0.0
            _tube(canvas, rng, pair, pr, s * rng.uniform(1.5, 3.0), content, gas_fraction, cavity)
    # ------------------------------------------------------------------ duodenum (C-loop around the pancreas head)
    ivc_x, ivc_y = patient.vessels.ivc(patient.spine, kr[2])
    r_d = s * rng.uniform(9, 13)
    d_x = float(ivc_x) + patient.vessels.ivc_r[0] + r_d + rng.uniform(2, 12)
    d_y = float(ivc_y) + rng.uniform(0, 15)
    ax, ay = patient.vessels.aorta(patient.spine, kr[2] - 45)
    duodenum = np.array(
        [
            [d_x - 15, d_y + 30, kr[2] + rng.uniform(25, 45)],
            [d_x, d_y + 10, kr[2] + rng.uniform(10, 25)],
            [d_x + rng.uniform(-5, 5), d_y, kr[2] - rng.uniform(15, 35)],
            [float(ax) + 10, float(ay) + patient.vessels.aorta_r + r_d + 12, kr[2] - rng.uniform(40, 60)],
            [float(ax) - 25, float(ay) + 25, kr[2] - rng.uniform(15, 35)],
        ]
    )
    d_content = "contrast" if oral and rng.random() < 0.6 else "fluid"
    for i in range(len(duodenum) - 1):
        gas_fraction = rng.uniform(0.2, 0.6) if rng.random() < gas else 0.0
        _tube(canvas, rng, duodenum[i : i + 2], np.full(2, r_d), s * 2.0, d_content, gas_fraction, cavity)
    # ------------------------------------------------------------------ small bowel loops in the anterior abdomen
    z_axis = grid.axis(2)
    z_top = min(float(z_axis.max()), patient.kidney_level_z + 40)
    z_low = float(z_axis.min()) - 20
    y_back = float(patient.spine.center(0.0)[1]) + 25
    count = int(max(0.0, z_top - z_low) / 100.0 * rng.uniform(25, 45))
    loops = 0
    for _ in range(count):
        x = rng.uniform(-0.85, 0.85) * cav[0]
        y = rng.uniform(y_back, patient.body.center_y + cav[1] * 0.9)
        if (x / cav[0]) ** 2 + ((y - patient.body.center_y) / cav[1]) ** 2 > 0.85:
            continue
        z = rng.uniform(z_low, z_top)
        r = s * rng.uniform(8, 15)
        start = np.array([x, y, z])
        d1 = rng.normal(size=3) * np.array([1, 1, 0.6])
        d1 /= np.linalg.norm(d1)
        d2 = d1 + rng.normal(size=3) * 0.8
        d2 /= np.linalg.norm(d2)
        points = np.stack([start, start + d1 * rng.uniform(20, 45), start + d1 * 30 + d2 * rng.uniform(15, 40)])
        roll = rng.random()
        wall = s * rng.uniform(1.5, 2.5)
        if oral and roll < 0.45:
            content = "contrast"
        elif roll < 0.55:  # collapsed loop: thick wall, slit-like mottled lumen
            content, wall = "food", r * rng.uniform(0.45, 0.7)
        else:
            content = "food" if roll < 0.75 else "fluid"
        gas_fraction = rng.uniform(0.15, 1.0) if rng.random() < gas else 0.0
        _tube(canvas, rng, points, np.full(3, r), wall, content, gas_fraction, cavity)
        loops += 1
    # mesenteric vessels: small bright (enhanced) or soft-tissue dots in the fat between the loops
    for _ in range(loops // 2 + 3):
        a = np.array(
            [rng.uniform(-0.6, 0.6) * cav[0], rng.uniform(y_back, y_back + 0.6 * cav[1]), rng.uniform(z_low, z_top)]
        )
        b = a + rng.normal(0, 1, 3) * np.array([30, 30, 40])
        hit = polyline_occupancy(grid, np.stack([a, b]), s * np.array([rng.uniform(1.5, 3.0), rng.uniform(1.0, 2.0)]))
        if hit:
            tissue = Tissue.PORTAL_VEIN if rng.random() < 0.6 else Tissue.ARTERY
            canvas.paint(hit[0], hit[1], tissue, gate=cavity, into=(Tissue.VISCERAL_FAT,))
    return {"small_bowel_loops": loops}


def paint_solid_organs(canvas: Canvas, patient: Patient, cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Liver (right and left lobe, hepatic veins), gallbladder, stomach, spleen and pancreas."""
    s, spine, jitter = patient.scale, patient.spine, 1.0
    grid = canvas.grid
    y0 = float(spine.center(40.0)[1])
    kr, _ = _kidney_or_default(patient, 1)
    kl, kl_r = _kidney_or_default(patient, -1)
    # stomach first: the liver's left lobe lies over it
    stomach = Ellipsoid(
        np.array([-s * rng.uniform(30, 60), y0 + s * rng.uniform(45, 80), s * rng.uniform(45, 80)]),
        s * np.array([rng.uniform(40, 60), rng.uniform(25, 40), rng.uniform(45, 65)]),
        rotation(np.deg2rad(rng.uniform(-35, 10)), np.deg2rad(rng.uniform(-30, 10)), 0.0),
        harmonics(rng, 0.08 * jitter),
    )
    hit = stomach.occupancy(grid)
    if hit:
        box, outer = hit
        canvas.paint(box, outer, Tissue.BOWEL_WALL, gate=cavity)
        wall = s * rng.uniform(3, 6)
        inner = Ellipsoid(stomach.center, stomach.radii - wall, stomach.rot, stomach.harmonics)
        distance, width = inner.sdf(grid, box)
        lumen = np.clip(0.5 - distance / width, 0, 1).astype(np.float32)
        content = str(rng.choice(["food", "fluid", "contrast"], p=[0.5, 0.35, 0.15]))
        level = float(stomach.center[1] + stomach.radii[1] * rng.uniform(-0.2, 0.9))
        paint_lumen(canvas, rng, box, lumen, content, level, cavity)
    # liver: right lobe + left lobe + an inferior tongue, then veins inside
    right = Ellipsoid(
        np.array([s * rng.uniform(55, 78), y0 + s * rng.uniform(15, 40), s * rng.uniform(45, 75)]),
        s * np.array([rng.uniform(75, 95), rng.uniform(70, 90), rng.uniform(80, 100)]),
        rotation(np.deg2rad(rng.uniform(-15, 15)), np.deg2rad(rng.uniform(-10, 10)), 0.0),
        harmonics(rng, 0.07 * jitter),
    )
    left = Ellipsoid(
        np.array([s * rng.uniform(-15, 15), y0 + s * rng.uniform(60, 85), s * rng.uniform(85, 115)]),
        s * np.array([rng.uniform(50, 70), rng.uniform(28, 42), rng.uniform(35, 55)]),
        rotation(np.deg2rad(rng.uniform(-20, 20)), 0.0, np.deg2rad(rng.uniform(-15, 15))),
        harmonics(rng, 0.08 * jitter),
    )
    tongue = Ellipsoid(  # inferior tip of the right lobe, sometimes a long Riedel lobe
        np.array(
            [
                right.center[0] + s * rng.uniform(-10, 20),
                right.center[1] + s * rng.uniform(-10, 25),
                kr[2] + rng.uniform(-10, 40),
            ]
        ),
        s * np.array([rng.uniform(30, 50), rng.uniform(30, 55), rng.uniform(20, 45)]),
        rotation(np.deg2rad(rng.uniform(-30, 30)), 0.0, 0.0),
        harmonics(rng, 0.1 * jitter),
    )
    for lobe in (right, left, tongue):
        hit = lobe.occupancy(grid)
        if hit:
            canvas.paint(*hit, Tissue.LIVER, gate=cavity)
    ivc_x, ivc_y = patient.vessels.ivc(spine, 90.0)
    top = np.array([float(ivc_x), float(ivc_y), 95.0])
    for angle in rng.uniform(-0.3, 0.3, 3) + np.array([0.2, 1.0, 1.9]):
        end = top + s * np.array([75 * np.cos(angle), 55 * np.sin(angle), -rng.uniform(40, 80)])
        hit = polyline_occupancy(grid, np.stack([top, end]), np.array([s * 6.0, s * 2.5]))
        if hit:
            box, occ, _ = hit
            canvas.paint(box, occ, Tissue.VEIN, into=(Tissue.LIVER,))
    if rng.random() < 0.85:  # gallbladder under the liver
        gb = Ellipsoid(
            np.array([s * rng.uniform(45, 75), y0 + s * rng.uniform(55, 85), kr[2] + rng.uniform(5, 45)]),
            s * np.array([rng.uniform(12, 20), rng.uniform(12, 20), rng.uniform(22, 40)]),
            rotation(0.0, np.deg2rad(rng.uniform(-30, 30)), np.deg2rad(rng.uniform(-40, 0))),
            harmonics(rng, 0.05),
        )
        hit = gb.occupancy(grid)
        if hit:
            canvas.paint(*hit, Tissue.BILE, gate=cavity)
    # spleen: against the left posterolateral wall, thin axis along the wall normal
    long_axis = np.array([-0.55, 0.45, -0.6]) + rng.normal(0, 0.15, 3)
    normal = np.array([-0.8, -0.6, 0.0])
    f = frame(long_axis, np.cross(normal, long_axis))
    spleen = Ellipsoid(
        np.array(
            [
                -s * rng.uniform(85, 105),
                float(spine.center(45.0)[1]) - s * rng.uniform(0, 25),
                kl[2] + kl_r[0] * 0.3 + rng.uniform(15, 55),
            ]
        ),
        s * np.array([rng.uniform(50, 68), rng.uniform(32, 45), rng.uniform(18, 28)]),
        f,
        harmonics(rng, 0.08 * jitter),
    )
    hit = spleen.occupancy(grid)
    if hit:
        canvas.paint(*hit, Tissue.SPLEEN, gate=cavity)
    # pancreas: head by the duodenum, body over the aorta, tail towards the splenic hilum
    ax, ay = patient.vessels.aorta(spine, kl[2] + 20)
    pz = kl[2] + rng.uniform(5, 35)
    points = np.array(
        [
            [s * rng.uniform(25, 40), float(ay) + s * rng.uniform(20, 35), pz - rng.uniform(15, 35)],
            [float(ax) + 10, float(ay) + s * rng.uniform(25, 40), pz],
            [kl[0] * 0.5, float(ay) + s * rng.uniform(10, 30), pz + rng.uniform(0, 15)],
            [spleen.center[0] + s * 25, spleen.center[1] + s * rng.uniform(10, 30), pz + rng.uniform(5, 30)],
        ]
    )
    radii = s * np.array([rng.uniform(12, 17), rng.uniform(9, 13), rng.uniform(8, 12), rng.uniform(6, 10)])
    hit = polyline_occupancy(grid, points, radii)
    if hit:
        box, occ, _ = hit
        lobules = _mottle(rng, occ.shape, 0.8)
        hu = canvas.table[Tissue.PANCREAS] + canvas.table.tex(Tissue.PANCREAS) * lobules
        canvas.paint(box, occ, Tissue.PANCREAS, hu=hu.astype(np.float32), gate=cavity)
    # splenic vein along the back of the pancreas -> portal confluence -> liver hilum
    back = points + np.array([0, -s * 12, 0])
    portal = np.array([points[1] + np.array([s * 5, -s * 10, 0]), [s * 45, y0 + s * 35, pz + 40]])
    for pts, r in ((back[1:], s * 4.5), (portal, s * 7.5)):
        hit = polyline_occupancy(grid, pts, np.full(len(pts), r))
        if hit:
            box, occ, _ = hit
            canvas.paint(box, occ, Tissue.PORTAL_VEIN, gate=cavity)


def paint_great_vessels(canvas: Canvas, patient: Patient, cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Aorta (with optional calcified plaques), iliac arteries, IVC, iliac veins, SMA and SMV."""
    grid, spine, vessels, s = canvas.grid, patient.spine, patient.vessels, patient.scale
    z_axis = grid.axis(2)
    z_lo, z_hi = float(z_axis.min()) - 10, float(z_axis.max()) + 10
    bif = vessels.bifurcation_z

    def aorta_c(z: np.ndarray) -> tuple:
        return vessels.aorta(spine, z)

    def aorta_r(z: np.ndarray) -> tuple:
        r = vessels.aorta_r * (1 + 0.0015 * (z - bif))
        return r, r

    hit = ztube_occupancy(grid, (bif, z_hi), aorta_c, aorta_r)
    if hit:
        canvas.paint(*hit, Tissue.ARTERY, gate=cavity)
    for side in (1, -1):

        def iliac_c(z: np.ndarray, side: int = side) -> tuple:
            x, y = vessels.aorta(spine, bif)
            return x + side * 0.45 * (bif - z) + side * 4, y + 0.05 * (bif - z)

        def iliac_r(z: np.ndarray) -> tuple:
            return np.full_like(z, vessels.aorta_r * 0.62), np.full_like(z, vessels.aorta_r * 0.62)

        hit = ztube_occupancy(grid, (z_lo, bif + 4), iliac_c, iliac_r)
        if hit:
            canvas.paint(*hit, Tissue.ARTERY, gate=cavity)
    ivc_bottom = bif - rng.uniform(5, 20)

    def ivc_c(z: np.ndarray) -> tuple:
        return vessels.ivc(spine, z)

    def ivc_r(z: np.ndarray) -> tuple:
        return np.full_like(z, vessels.ivc_r[0]), np.full_like(z, vessels.ivc_r[1])

    hit = ztube_occupancy(grid, (ivc_bottom, z_hi), ivc_c, ivc_r)
    if hit:
        canvas.paint(*hit, Tissue.VEIN, gate=cavity)
    for side in (1, -1):

        def iliac_v(z: np.ndarray, side: int = side) -> tuple:
            x, y = vessels.ivc(spine, ivc_bottom)
            return x - vessels.ivc_dx * 0.5 + side * (0.42 * (ivc_bottom - z) + 8), y - 3 + 0.02 * (ivc_bottom - z)

        def iliac_vr(z: np.ndarray) -> tuple:
            return np.full_like(z, vessels.ivc_r[0] * 0.7), np.full_like(z, vessels.ivc_r[1] * 0.8)

        hit = ztube_occupancy(grid, (z_lo, ivc_bottom + 4), iliac_v, iliac_vr)
        if hit:
            canvas.paint(*hit, Tissue.VEIN, gate=cavity)
    # superior mesenteric artery and vein, in front of the aorta
    sma_top = patient.kidney_level_z + rng.uniform(20, 45)
    ax, ay = vessels.aorta(spine, sma_top)
    r_a = vessels.aorta_r
    sma = np.array(
        [
            [float(ax), float(ay) + r_a * 0.5, sma_top],
            [float(ax) + 3, float(ay) + r_a + s * 14, sma_top - 25],
            [float(ax) + 6, float(ay) + r_a + s * 22, sma_top - 140],
        ]
    )
    for pts, r, tissue in ((sma, s * 3.5, Tissue.ARTERY), (sma + np.array([s * 12, 0, 0]), s * 5, Tissue.PORTAL_VEIN)):
        hit = polyline_occupancy(grid, pts, np.full(3, r))
        if hit:
            box, occ, _ = hit
            canvas.paint(box, occ, tissue, gate=cavity)
    if rng.random() < 0.45:  # atherosclerotic calcifications on the aortic wall
        for _ in range(int(rng.integers(2, 9))):
            z = rng.uniform(bif, patient.kidney_level_z + 60)
            cx, cy = vessels.aorta(spine, z)
            angle = rng.uniform(0, 2 * np.pi)
            r = vessels.aorta_r * (1 + 0.0015 * (z - bif))
            center = np.array([float(cx) + r * np.cos(angle), float(cy) + r * np.sin(angle), z])
            plaque = Ellipsoid(center, np.array([1.5, 1.5, rng.uniform(2, 6)]), np.eye(3))
            hit = plaque.occupancy(grid)
            if hit:
                canvas.paint(*hit, Tissue.BONE_CORTICAL, hu=float(rng.uniform(300, 900)))

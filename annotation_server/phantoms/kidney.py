"""Kidneys and their lesions: the labelled structures (1 kidney, 2 tumor, 3 cyst).

A kidney is an ellipsoid envelope with smooth random bumps, hollowed on its medial side by the renal sinus
(fat, renal pelvis, calyces, vessels) which opens at the hilum facing medially/anteriorly: axial slices
through the hilum show the typical C shape. Inside the parenchyma a 4-7 mm cortex surrounds medullary
pyramids separated by columns of Bertin, so the arterial phase shows corticomedullary differentiation and
the excretory phase a bright collecting system.

Label convention (issue 17): `kidney` covers everything inside the parenchymal outline (the envelope):
cortex, medulla, collecting system AND the renal sinus fat and hilar vessels inside it; only what bulges
out of the hilum (extrarenal pelvis, the vessels' course to the aorta/IVC, perirenal fat) is background.
KiTS19/KiTS21 (Heller et al., arXiv:1904.00445 and arXiv:2307.01984) annotate the kidney as one region
that masses are part of; the exact treatment of hilar fat could not be checked offline here, so the
decisive reference is the one the models are measured against: TotalSegmentator's kidney masks on the real
sample CT leave only 206 voxels (3 mm) of 2-D holes in 12,224 kidney voxels, i.e. they include the sinus.
Labelling sinus fat as background while the real references call it kidney taught the first shipped model
that a low-density region inside a kidney is something else, and it painted the real sinus as tumor and
cyst (~91 cm3).

Tumors are solid, heterogeneous, often necrotic when large, and may be exophytic; cysts are round, sharp and
water-dense. Both are placed on or in a kidney and override the kidney label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from annotation_server.phantoms.anatomy import KidneySpec, Patient, harmonics
from annotation_server.phantoms.canvas import Canvas
from annotation_server.phantoms.config import PhantomConfig
from annotation_server.phantoms.geometry import Ellipsoid, capsule_sdf, polyline_occupancy, ramp, rotation
from annotation_server.phantoms.intensity import Tissue

KIDNEY, TUMOR, CYST = 1, 2, 3
_DISPLACEABLE = (
    Tissue.VISCERAL_FAT,
    Tissue.LIVER,
    Tissue.SPLEEN,
    Tissue.PANCREAS,
    Tissue.BILE,
    Tissue.BOWEL_WALL,
    Tissue.BOWEL_FLUID,
    Tissue.BOWEL_GAS,
    Tissue.STOOL,
    Tissue.ORAL_CONTRAST,
)


@dataclass(frozen=True)
class Lesion:
    kind: str  # "tumor" or "cyst"
    side: int
    center: np.ndarray
    radius: float
    exophytic: bool
    shape: Ellipsoid
    necrosis: float  # relative radius of the necrotic core (0: none)

    def summary(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "side": "right" if self.side > 0 else "left",
            "radius_mm": round(self.radius, 1),
            "exophytic": self.exophytic,
            "center_mm": [round(float(v), 1) for v in self.center],
            "necrotic": self.necrosis > 0,
        }


def paint_perirenal_fat(canvas: Canvas, patient: Patient, cavity: np.ndarray, rng: np.random.Generator) -> None:
    """Gerota's fat pad around each kidney; its thickness follows the patient's adiposity."""
    for kidney in patient.kidneys:
        margin = kidney.perirenal_mm
        shift = np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.1, 0.35), rng.uniform(-0.3, 0.3)]) * margin
        pad = Ellipsoid(
            kidney.center + kidney.rot @ shift,
            kidney.radii + margin,
            kidney.rot,
            harmonics(rng, 0.06),
            kidney.bend * 0.7,
        )
        hit = pad.occupancy(canvas.grid)
        if hit:  # displaces organs and bowel, not muscles, vessels or lung
            canvas.paint(*hit, Tissue.PERIRENAL_FAT, gate=cavity, into=_DISPLACEABLE)


def paint_kidneys(canvas: Canvas, patient: Patient, rng: np.random.Generator) -> None:
    """Parenchyma (cortex, pyramids), renal sinus, pelvis/calyces, hilar vessels, ureter and adrenals."""
    for kidney in patient.kidneys:
        _paint_kidney(canvas, patient, kidney, rng)


def _paint_kidney(canvas: Canvas, patient: Patient, kidney: KidneySpec, rng: np.random.Generator) -> None:
    grid = canvas.grid
    envelope = kidney.envelope()
    box = envelope.box(grid, pad=12.0)
    if box is None:
        return
    d_out, w_out = envelope.sdf(grid, box)
    outer = ramp(d_out, w_out)
    sinus = Ellipsoid(
        kidney.point(np.array([0.0, kidney.sinus_offset, 0.0])),
        kidney.radii * kidney.sinus_scale,
        kidney.rot,
        harmonics(rng, 0.12),  # lobulated: papillae and columns indent the sinus
        kidney.bend * 0.5,
    )
    d_sin, w_sin = sinus.sdf(grid, box)
    in_sinus = ramp(d_sin, w_sin)
    parenchyma = outer * (1.0 - in_sinus)
    canvas.paint(box, parenchyma, Tissue.KIDNEY_CORTEX, label=KIDNEY)
    # medullary pyramids: deeper than the cortex, off the sinus, interrupted by columns of Bertin
    u, v, w = envelope.local(grid, box)
    angle = np.arctan2(w, v)
    columns = np.cos(kidney.pyramids * angle + kidney.pyramid_phase) + 0.6 * np.cos(
        np.pi * 2.2 * u + kidney.pyramid_phase
    )
    pyramid = np.clip((columns + 0.55) * 2.0, 0.0, 1.0)
    depth = ramp(d_out + kidney.cortex_mm, w_out) * ramp(-(d_sin - 1.5), w_sin)
    medulla = (parenchyma * pyramid * depth).astype(np.float32)
    canvas.paint(box, medulla, Tissue.KIDNEY_MEDULLA, label=KIDNEY)
    # renal sinus fat (continuous with the perirenal fat through the hilum)
    grown = ramp(d_out - 4.0, w_out)
    canvas.paint(box, (in_sinus * grown).astype(np.float32), Tissue.SINUS_FAT)
    # collecting system: pelvis at the hilum + calyces at the pyramid tips, joined by infundibula
    ps = kidney.pelvis_scale
    pelvis = Ellipsoid(
        kidney.point(np.array([-0.08, 0.8 + 0.15 * (ps - 1), 0.0])),
        kidney.radii * np.array([0.3, 0.32, 0.3]) * ps,
        kidney.rot,
        harmonics(rng, 0.08),
    )
    d_col, w_col = pelvis.sdf(grid, box)
    hub = kidney.point(np.array([-0.05, 0.55, 0.0]))
    for lu in (-0.55, -0.2, 0.2, 0.55):
        for lw in (-0.3, 0.3):
            if rng.random() < 0.3:
                continue
            tip = kidney.point(np.array([lu, 0.15 + rng.uniform(-0.1, 0.1), lw]))
            d_cal, _ = capsule_sdf(grid, box, hub, tip, 2.0 * patient.scale, 3.5 * patient.scale)
            d_col = np.minimum(d_col, d_cal)
    collecting = ramp(d_col, w_col)
    collecting *= ramp(d_out - 10.0, w_out)  # the extrarenal part may bulge 1 cm out of the hilum
    inside = collecting * outer
    canvas.paint(box, inside.astype(np.float32), Tissue.URINE, label=KIDNEY)
    canvas.paint(box, (collecting * (1.0 - outer)).astype(np.float32), Tissue.URINE)
    # ureter: from the pelvis down along the psoas
    s = patient.scale
    start = kidney.point(np.array([-0.25, 1.1, 0.0]))
    x_sp, y_sp = patient.spine.center(start[2] - 120)
    ureter = np.array(
        [
            start,
            start + np.array([-kidney.side * 5, 3, -35]),
            [
                float(x_sp) + kidney.side * s * rng.uniform(38, 50),
                float(y_sp) + s * rng.uniform(10, 25),
                start[2] - 120,
            ],
            [float(x_sp) + kidney.side * s * 50, float(y_sp) + s * 15, start[2] - 260],
        ]
    )
    hit = polyline_occupancy(grid, ureter, np.array([4.0, 3.0, 2.5, 2.5]) * s)
    if hit:
        ubox, uocc, _ = hit
        canvas.paint(ubox, uocc, Tissue.URINE)
    # renal artery from the aorta, renal vein to the IVC (the left vein crosses in front of the aorta)
    vessels, spine = patient.vessels, patient.spine
    hz = kidney.hilum[2] + rng.uniform(-8, 12)
    ax, ay = vessels.aorta(spine, hz)
    vx, vy = vessels.ivc(spine, hz - 5)
    entry = kidney.point(np.array([0.05, 0.45, 0.15]))
    artery = np.array([[float(ax), float(ay), hz], kidney.point(np.array([0.1, 1.2, -0.3])), entry])
    hit = polyline_occupancy(grid, artery, np.array([3.2, 2.8, 2.2]) * s)
    if hit:
        canvas.paint(hit[0], hit[1], Tissue.ARTERY)
    if kidney.side > 0:
        vein = np.array([[float(vx), float(vy), hz - 5], kidney.point(np.array([0.0, 1.25, 0.35])), entry])
    else:
        front = float(ay) + vessels.aorta_r + 6
        vein = np.array(
            [[float(vx), float(vy), hz - 5], [float(ax), front, hz], kidney.point(np.array([0.0, 1.25, 0.35])), entry]
        )
    hit = polyline_occupancy(grid, vein, np.full(len(vein), 5.0 * s))
    if hit:
        canvas.paint(hit[0], hit[1], Tissue.VEIN)
    # kidney label over the whole parenchymal outline, sinus fat and hilar vessels included (KiTS convention)
    canvas.relabel(box, outer.astype(np.float32), KIDNEY)
    # adrenal: a thin plate above and medial to the upper pole
    top = kidney.upper_pole
    adrenal = Ellipsoid(
        np.array([top[0] - kidney.side * s * rng.uniform(5, 15), top[1] + s * rng.uniform(5, 18), top[2] + 8]),
        s * np.array([rng.uniform(2.5, 4.0), rng.uniform(14, 22), rng.uniform(10, 18)]),
        rotation(np.deg2rad(kidney.side * rng.uniform(10, 50)), 0.0, np.deg2rad(rng.uniform(-30, 30))),
        harmonics(rng, 0.1),
    )
    hit = adrenal.occupancy(grid)
    if hit:
        canvas.paint(*hit, Tissue.ADRENAL)


def sample_lesions(rng: np.random.Generator, config: PhantomConfig, patient: Patient, hardness: float) -> list[Lesion]:
    """Tumors and cysts on the present kidneys, with the configured probabilities, counts and sizes."""
    lesions: list[Lesion] = []
    if not patient.kidneys:
        return lesions
    for kind, prob, counts, radii in (
        ("cyst", config.cyst_prob, config.cyst_count, config.cyst_radius_mm),
        ("tumor", config.tumor_prob, config.tumor_count, config.tumor_radius_mm),
    ):
        if rng.random() >= prob:
            continue
        count = int(rng.integers(counts[0], counts[1] + 1))
        for _ in range(count):
            kidney = patient.kidneys[int(rng.integers(len(patient.kidneys)))]
            radius = float(np.exp(rng.uniform(np.log(max(radii[0], 1.0)), np.log(max(radii[1], radii[0], 1.0)))))
            lesions.append(_place(rng, config, kidney, kind, radius, hardness))
    return lesions


def _place(
    rng: np.random.Generator, config: PhantomConfig, kidney: KidneySpec, kind: str, radius: float, hardness: float
) -> Lesion:
    # direction on the envelope, avoiding the hilum (lesions grow from the parenchyma)
    for _ in range(20):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        if direction[1] < 0.5:
            break
    surface = kidney.point(direction)
    normal = kidney.rot @ (direction / kidney.radii)
    normal /= np.linalg.norm(normal)
    exophytic = bool(rng.random() < (config.tumor_exophytic_prob if kind == "tumor" else 0.55))
    if exophytic:
        offset = radius * rng.uniform(0.0, 0.6)
    else:
        thickness = float(np.linalg.norm(surface - kidney.center))
        offset = -min(radius * rng.uniform(0.4, 1.1), 0.7 * thickness)
    center = surface + normal * offset
    if kind == "cyst":
        radii = radius * rng.uniform(0.9, 1.1, 3)
        bumps = harmonics(rng, 0.015)
        necrosis = 0.0
    else:
        radii = radius * rng.uniform(0.8, 1.2, 3)
        bumps = harmonics(rng, 0.06 + 0.08 * hardness)
        necrosis = float(rng.uniform(0.3, 0.7)) if radius > 14 and rng.random() < 0.6 else 0.0
    rot = rotation(*rng.uniform(0, 2 * np.pi, 3))
    return Lesion(kind, kidney.side, center, radius, exophytic, Ellipsoid(center, radii, rot, bumps), necrosis)


def paint_lesions(canvas: Canvas, lesions: list[Lesion], rng: np.random.Generator) -> None:
    """Cysts first, then tumors (a tumor abutting a cyst wins the overlap)."""
    grid, table = canvas.grid, canvas.table
    for lesion in sorted(lesions, key=lambda item: item.kind != "cyst"):
        hit = lesion.shape.occupancy(grid)
        if hit is None:
            continue
        box, occ = hit
        if lesion.kind == "cyst":
            canvas.paint(box, occ, Tissue.CYST, label=CYST)
            continue
        field = ndimage.gaussian_filter(rng.standard_normal(occ.shape).astype(np.float32), 1.0)
        field /= field.std() + 1e-6
        hu = table[Tissue.TUMOR] + table.tex(Tissue.TUMOR) * 1.5 * field
        canvas.paint(box, occ, Tissue.TUMOR, hu=hu.astype(np.float32), label=TUMOR)
        if lesion.necrosis > 0:
            core = Ellipsoid(lesion.center, lesion.shape.radii * lesion.necrosis, lesion.shape.rot, harmonics(rng, 0.1))
            distance, width = core.sdf(grid, box)
            canvas.paint(box, ramp(distance, width), Tissue.NECROSIS, label=TUMOR)

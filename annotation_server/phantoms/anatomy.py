"""Sampling one patient's anatomy: body habitus, spine course and kidney placement (shared by all renderers).

Priors are measured on the real TotalSegmentator example CT (3 mm, RAS) relative to the L2 vertebral body
centre and widened to population ranges:

* kidney centroids ~72-76 mm lateral of the spine, 0-10 mm posterior of the vertebral-body centre; the right
  kidney ~12 mm lower than the left (range 6-25 mm); length 10-12.5 cm, width 5-6.5 cm, thickness 4-5 cm;
  long axis tilted ~20 deg so the upper pole is medial and posterior; hilum facing medially and anteriorly.
* vertebral pitch ~35 mm (L1-L3 centres 34-36 mm apart), lordosis moving the spine ~0.3 mm anterior per mm
  caudal; vertebral bodies ~46 x 34 mm.
* posterior skin ~104 mm behind the vertebral-body centre, anterior skin ~160 mm in front; subcutaneous fat
  5-60 mm (thin to obese).

Everything organ-specific that other structures do not depend on is sampled by its own renderer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from annotation_server.phantoms.config import PhantomConfig
from annotation_server.phantoms.geometry import Ellipsoid, frame


def _unit_sphere(count: int = 120) -> np.ndarray:
    i = np.arange(count) + 0.5
    phi = np.arccos(1 - 2 * i / count)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])


_SPHERE = _unit_sphere()


def harmonics(rng: np.random.Generator, amplitude: float, count: int = 12) -> np.ndarray:
    """Random smooth-bump coefficients (see `geometry.Ellipsoid`); higher orders get smaller weights."""
    weights = np.array([1, 1, 1, 0.8, 0.8, 0.8, 0.8, 0.8, 0.6, 0.5, 0.5, 0.5])[:count]
    return (rng.standard_normal(count) * amplitude * weights).astype(np.float64)


@dataclass(frozen=True)
class Body:
    """Trunk cross-section: nested superellipses (skin, fat/muscle boundary, cavity) around the spine.

    Semi-axes are measured from the body centre line (x = 0, y = `center_y`) to the *muscle envelope*; the
    fat and wall thicknesses are added/subtracted per direction (anterior, lateral, posterior).
    """

    center_y: float
    half_width: float  # muscle envelope, lateral
    anterior: float  # muscle envelope, from center_y
    posterior: float  # muscle envelope, from center_y (positive number)
    exponent: float  # 2 = ellipse, larger = boxier
    taper: float  # relative growth of the cross-section per mm towards the feet
    fat: tuple[float, float, float]  # subcutaneous fat (anterior, lateral, posterior) mm
    wall: tuple[float, float, float]  # muscle wall thickness (anterior, lateral, posterior) mm
    skin: float

    def envelope(self, offset: tuple[float, float, float]) -> tuple[float, float, float]:
        """(half_width, anterior, posterior) of the boundary offset outward by (ant, lat, post) mm."""
        ant, lat, post = offset
        return self.half_width + lat, self.anterior + ant, self.posterior + post

    def cavity_distance(self, points: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) of patient-frame points (n, 3) to the cavity wall."""
        half_width, anterior, posterior = (
            self.half_width - self.wall[1],
            self.anterior - self.wall[0],
            self.posterior - self.wall[2],
        )
        growth = 1.0 - self.taper * points[:, 2]
        p = self.exponent
        ax = np.abs(points[:, 0]) + 1e-3
        dy = points[:, 1] - self.center_y
        ay = np.abs(dy) + 1e-3
        xt = (ax / (half_width * growth)) ** p
        yt = (ay / (np.where(dy >= 0, anterior, posterior) * growth)) ** p
        grad = np.sqrt((p * xt / ax) ** 2 + (p * yt / ay) ** 2) + 1e-9
        return (xt + yt - 1.0) / grad

    def skin_box(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the skin surface (without taper)."""
        hw, ant, post = self.envelope(tuple(f + self.skin for f in self.fat))  # type: ignore[arg-type]
        return -hw, hw, self.center_y - post, self.center_y + ant


@dataclass(frozen=True)
class Spine:
    """Course of the vertebral column: centre line (x, y) as a function of z, level pitch, body size."""

    pitch: float
    lordosis: float  # dy/dz (negative: the spine moves anteriorly towards the feet)
    curvature: float  # d2y/dz2 / 2
    scoliosis: float  # amplitude of a slow lateral deviation (mm)
    scoliosis_phase: float
    body_half_width: float
    body_half_depth: float
    level_offset: float  # z of the L2 body centre (0 by construction, jitter allowed for sub-voxel phase)

    def center(self, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(z, np.float32)
        y = self.lordosis * z + self.curvature * z * z
        x = self.scoliosis * np.sin(z / 180.0 * np.pi + self.scoliosis_phase) - self.scoliosis * np.sin(
            self.scoliosis_phase
        )
        return x.astype(np.float32), y.astype(np.float32)

    def level_z(self, index: int) -> float:
        """z of vertebral body centre `index` levels above L2 (1 = L1, 2 = T12, -1 = L3 ...)."""
        return self.level_offset + index * self.pitch


@dataclass(frozen=True)
class KidneySpec:
    """One kidney: outer envelope, renal sinus and collecting system in the kidney's own frame.

    Frame columns: (long axis pointing to the upper pole, hilum direction, third axis).
    """

    side: int  # +1 right (x > 0), -1 left
    center: np.ndarray
    radii: np.ndarray  # (length, width, thickness) semi-axes mm
    rot: np.ndarray
    shape: np.ndarray  # harmonics of the outer envelope
    cortex_mm: float
    sinus_offset: float  # sinus centre along the hilum axis, in units of radii[1]
    sinus_scale: np.ndarray  # sinus radii relative to kidney radii
    pelvis_scale: float  # size of the renal pelvis (0.6 small intrarenal .. 1.4 large extrarenal)
    pyramids: int
    pyramid_phase: float
    perirenal_mm: float
    bend: float = 0.0  # bean shape: poles curve towards the hilum

    def envelope(self) -> Ellipsoid:
        return Ellipsoid(self.center, self.radii, self.rot, self.shape, self.bend)

    def point(self, local: np.ndarray) -> np.ndarray:
        """Patient-frame point from local coordinates in units of the radii."""
        return self.center + self.rot @ (np.asarray(local) * self.radii)

    @property
    def hilum(self) -> np.ndarray:
        return self.point(np.array([0.0, 1.0, 0.0]))

    @property
    def upper_pole(self) -> np.ndarray:
        return self.point(np.array([1.0, 0.0, 0.0]))

    @property
    def lower_pole(self) -> np.ndarray:
        return self.point(np.array([-1.0, 0.0, 0.0]))


@dataclass(frozen=True)
class Vessels:
    """Aorta and IVC centre lines (x, y offsets from the spine centre line) and radii."""

    aorta_dx: float
    aorta_dy: float
    aorta_r: float
    bifurcation_z: float
    ivc_dx: float
    ivc_dy: float
    ivc_r: tuple[float, float]

    def aorta(self, spine: Spine, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        x, y = spine.center(z)
        return x + self.aorta_dx, y + self.aorta_dy

    def ivc(self, spine: Spine, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        x, y = spine.center(z)
        return x + self.ivc_dx, y + self.ivc_dy


@dataclass(frozen=True)
class Patient:
    scale: float
    body: Body
    spine: Spine
    vessels: Vessels
    kidneys: list[KidneySpec]
    absent: list[int] = field(default_factory=list)  # sides (+1/-1) of removed kidneys

    @property
    def kidney_level_z(self) -> float:
        zs = [k.center[2] for k in self.kidneys]
        return float(np.mean(zs)) if zs else 0.0


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def sample_body(rng: np.random.Generator, config: PhantomConfig, scale: float, hardness: float) -> Body:
    fat_low, fat_high = config.fat_thickness_mm
    fat = _uniform(rng, (fat_low, fat_high))
    obesity = np.clip((fat - 5.0) / 50.0, 0.0, 1.5)
    anterior_fat = fat * rng.uniform(0.8, 1.4)
    lateral_fat = fat * rng.uniform(0.7, 1.3)
    posterior_fat = fat * rng.uniform(0.45, 1.0)
    return Body(
        center_y=0.0,
        half_width=scale * rng.uniform(122, 150) + 8 * obesity,
        anterior=scale * rng.uniform(112, 140) + 25 * obesity * rng.uniform(0.3, 1.0),
        posterior=scale * rng.uniform(80, 92),
        exponent=float(rng.uniform(2.0, 2.8 + 0.4 * hardness)),
        taper=float(rng.uniform(-0.0004, 0.0012)),
        fat=(anterior_fat, lateral_fat, posterior_fat),
        wall=(float(rng.uniform(8, 15)) * scale, float(rng.uniform(10, 20)) * scale, float(rng.uniform(5, 10))),
        skin=float(rng.uniform(1.5, 2.8)),
    )


def sample_spine(rng: np.random.Generator, scale: float, hardness: float) -> Spine:
    return Spine(
        pitch=scale * rng.uniform(32, 38),
        lordosis=float(rng.uniform(-0.42, -0.15)),
        curvature=float(rng.uniform(-0.0008, 0.0004)),
        scoliosis=float(rng.uniform(0, 4 + 12 * hardness)),
        scoliosis_phase=float(rng.uniform(0, 2 * np.pi)),
        body_half_width=scale * rng.uniform(21, 26),
        body_half_depth=scale * rng.uniform(15, 19),
        level_offset=0.0,
    )


def sample_vessels(rng: np.random.Generator, scale: float, spine: Spine) -> Vessels:
    aorta_r = scale * rng.uniform(8.5, 13.0)
    ivc_r = (scale * rng.uniform(10, 15), scale * rng.uniform(6, 11))
    return Vessels(
        aorta_dx=-scale * rng.uniform(6, 15),
        aorta_dy=spine.body_half_depth + aorta_r + rng.uniform(1, 6),
        aorta_r=aorta_r,
        bifurcation_z=-scale * rng.uniform(85, 120),
        ivc_dx=scale * rng.uniform(18, 28),
        ivc_dy=spine.body_half_depth + ivc_r[1] + rng.uniform(4, 14),
        ivc_r=ivc_r,
    )


def sample_kidney(
    rng: np.random.Generator, config: PhantomConfig, scale: float, side: int, z_center: float, spine: Spine, body: Body
) -> KidneySpec:
    jitter = config.shape_jitter
    pos = config.position_jitter_mm
    radii = np.array(
        [scale * rng.uniform(48, 63), scale * rng.uniform(28, 36), scale * rng.uniform(17, 24)], np.float64
    )
    _, y_spine = spine.center(z_center)
    lateral = scale * rng.uniform(68, 82) + rng.normal(0, 0.4 * pos)
    # keep the lateral surface inside the cavity with a little room for perirenal fat
    max_lateral = body.half_width - body.wall[1] - radii[1] - 6
    lateral = float(min(lateral, max_lateral))
    y = float(y_spine) + scale * rng.uniform(-16, 2) + rng.normal(0, 0.3 * pos)
    center = np.array([side * lateral, y, z_center], np.float64)
    coronal = np.deg2rad(rng.uniform(8, 28))  # upper pole medial
    sagittal = np.deg2rad(rng.uniform(5, 25))  # upper pole posterior
    long_axis = np.array([-side * np.sin(coronal), -np.sin(sagittal), 1.0])
    hilum_angle = np.deg2rad(rng.uniform(15, 55))  # rotation of the hilum from medial towards anterior
    hilum = np.array([-side * np.cos(hilum_angle), np.sin(hilum_angle), 0.0])
    rot = frame(long_axis, hilum)
    # keep the kidney (plus a little fat) inside the abdominal cavity: slide it medially/anteriorly if needed
    surface = rot @ (_SPHERE * radii[:, None])
    target = np.array([0.0, float(y_spine) + 15.0, z_center])
    for _ in range(30):
        if body.cavity_distance((surface + center[:, None]).T).max() < -4.0:
            break
        step = target - center
        center = center + 2.0 * step / (np.linalg.norm(step) + 1e-9)
    return KidneySpec(
        side=side,
        center=center,
        radii=radii,
        rot=rot,
        shape=harmonics(rng, 0.045 * jitter),
        cortex_mm=float(rng.uniform(4.0, 7.5)),
        sinus_offset=float(rng.uniform(0.5, 0.65)),
        sinus_scale=np.array([rng.uniform(0.45, 0.6), rng.uniform(0.45, 0.6), rng.uniform(0.35, 0.5)]),
        pelvis_scale=float(rng.uniform(0.6, 1.4)),
        pyramids=int(rng.integers(5, 9)),
        pyramid_phase=float(rng.uniform(0, 2 * np.pi)),
        # thin patients: the kidney may touch liver, spleen or bowel with no visible fat plane
        perirenal_mm=float(rng.uniform(2, 8) + 0.35 * np.mean(body.fat) * rng.uniform(0.4, 1.2)),
        bend=float(rng.uniform(0.1, 0.3)),
    )


def sample_patient(rng: np.random.Generator, config: PhantomConfig, hardness: float) -> Patient:
    """Draw habitus, spine, great vessels and kidneys; `hardness` in [0, 1] widens the draws."""
    scale = _uniform(rng, config.body_scale)
    body = sample_body(rng, config, scale, hardness)
    spine = sample_spine(rng, scale, hardness)
    vessels = sample_vessels(rng, scale, spine)
    left_z = scale * rng.uniform(-10, 24) + rng.normal(0, 0.5 * config.position_jitter_mm)
    right_z = left_z - scale * rng.uniform(6, 25)
    kidneys = []
    absent = []
    removed = int(rng.choice([1, -1])) if rng.random() < config.nephrectomy_prob else 0
    for side, z in ((1, right_z), (-1, left_z)):
        spec = sample_kidney(rng, config, scale, side, z, spine, body)
        if side == removed:
            absent.append(side)
        else:
            kidneys.append(spec)
    return Patient(scale=scale, body=body, spine=spine, vessels=vessels, kidneys=kidneys, absent=absent)

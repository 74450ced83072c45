"""Entry points: `generate_phantom` (one labelled CT-like volume) and `write_phantom_dataset` (a datastore).

A phantom is deterministic in (seed, config): every component draws from its own child of
`SeedSequence(seed)`, so e.g. changing the noise range does not move the kidneys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from annotation_server.imaging.volume import Geometry
from annotation_server.phantoms import acquisition
from annotation_server.phantoms.anatomy import Patient, sample_patient
from annotation_server.phantoms.artifacts import apply_ood
from annotation_server.phantoms.body import paint_lungs, paint_ribs, paint_table, paint_trunk
from annotation_server.phantoms.canvas import Canvas
from annotation_server.phantoms.config import PhantomConfig, Phase
from annotation_server.phantoms.geometry import Grid
from annotation_server.phantoms.intensity import Tissue, sample_hu
from annotation_server.phantoms.kidney import paint_kidneys, paint_lesions, paint_perirenal_fat, sample_lesions
from annotation_server.phantoms.organs import paint_bowel, paint_great_vessels, paint_solid_organs
from annotation_server.phantoms.spine import paint_muscles, paint_spine

LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
_STREAMS = ("anatomy", "phase", "grid", "render", "lesions", "acquisition", "ood", "world")


@dataclass
class Phantom:
    """One synthetic CT: HU image and KiTS-style label on the same grid, with its voxel->RAS affine.

    `image` is int16 HU and `label` uint8 (0 background, 1 kidney, 2 tumor, 3 cyst), both indexed (i, j, k)
    like nibabel arrays; `tissue` (uint8 `intensity.Tissue` per voxel, same order) is kept for statistics.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    tissue: np.ndarray | None = None

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.image.shape, self.affine)  # type: ignore[arg-type]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def axcodes(self) -> str:
        return self.geometry.axcodes


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def _grid(rng: np.random.Generator, config: PhantomConfig, patient: Patient) -> Grid:
    """Output grid: sampled spacing and FOV, centred on the kidney level of the body (with jitter)."""
    sx = _uniform(rng, config.spacing_xy_mm)
    sy = sx if config.square_pixels else _uniform(rng, config.spacing_xy_mm)
    sz = _uniform(rng, config.spacing_z_mm)
    spacing = np.array([sx, sy, sz])
    fov = np.array(config.fov_mm) * (1.0 + rng.uniform(-config.fov_jitter, config.fov_jitter, 3))
    shape = np.maximum(np.round(fov / spacing).astype(int), 8)
    _, _, ymin, ymax = patient.body.skin_box()
    jitter = np.array(config.center_jitter_mm) * rng.uniform(-1, 1, 3)
    center = np.array([0.0, (ymin + ymax) / 2, patient.kidney_level_z]) + jitter
    origin = center - (shape - 1) / 2 * spacing
    return Grid(tuple(int(v) for v in shape), tuple(float(v) for v in spacing), tuple(float(v) for v in origin))  # type: ignore[arg-type]


def _supersampled(grid: Grid, factor: int) -> Grid:
    if factor == 1:
        return grid
    fine = tuple(h / factor for h in grid.spacing)
    origin = tuple(o - (factor - 1) / 2 * h for o, h in zip(grid.origin, fine, strict=True))
    return Grid(tuple(n * factor for n in grid.shape), fine, origin)  # type: ignore[arg-type]


def _render(
    canvas: Canvas, patient: Patient, config: PhantomConfig, rng: np.random.Generator, lesions: list, gas: float
) -> dict[str, Any]:
    """Paint every structure in anatomical layering order (later structures displace earlier ones)."""
    info: dict[str, Any] = {}
    cavity = paint_trunk(canvas, patient)
    if rng.random() < config.table_prob:
        info.update(paint_table(canvas, patient, rng))
    oral = bool(rng.random() < config.oral_contrast_prob)
    info["oral_contrast"] = oral
    info.update(paint_bowel(canvas, patient, cavity, rng, gas, oral))
    paint_solid_organs(canvas, patient, cavity, rng)
    paint_lungs(canvas, patient, cavity, rng)
    paint_great_vessels(canvas, patient, cavity, rng)
    paint_muscles(canvas, patient, cavity, rng)
    paint_perirenal_fat(canvas, patient, cavity, rng)
    paint_spine(canvas, patient, rng)
    paint_kidneys(canvas, patient, rng)
    paint_lesions(canvas, lesions, rng)
    info["rib_pieces"] = paint_ribs(canvas, patient, rng)
    return info


def _drop_fragments(label: np.ndarray, min_ml: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Remove labelled specks disconnected from the kidneys (a calyx tip cut by sinus fat, a voxel of pelvis).

    Reference segmentations (TotalSegmentator, KiTS) are connected objects; isolated voxels would only teach a
    model to predict speckle. The image keeps them, which affects a handful of voxels at most.
    """
    foreground = label > 0
    if not foreground.any():
        return label
    box = ndimage.find_objects(foreground.astype(np.uint8))[0]
    parts, count = ndimage.label(foreground[box], structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return label
    sizes = ndimage.sum(np.ones(parts.shape, np.float32), parts, range(1, count + 1))
    small = np.flatnonzero(sizes * float(np.prod(spacing)) / 1000.0 < min_ml) + 1
    if small.size:
        view = label[box]
        view[np.isin(parts, small)] = 0
    return label


def _acquire(
    canvas: Canvas, grid: Grid, config: PhantomConfig, patient: Patient, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...], np.ndarray, dict[str, Any]]:
    """Scanner simulation on the rendered object: PV averaging, texture, PSF/slice profile, noise, kernel,
    calibration drift and optional resampling. Returns image, label, tissue, spacing, origin and a summary.
    """
    hard = config.difficulty
    hu = canvas.table
    factors = (config.supersample,) * 3
    spacing: tuple[float, ...] = grid.spacing
    image = acquisition.block_average(canvas.hu, factors)
    tissue = canvas.tissue[tuple(slice(config.supersample // 2, None, config.supersample) for _ in range(3))]
    grain = rng.uniform(0.5, 1.2)
    texture, noise = acquisition.noise_fields(rng, image.shape, spacing, grain)
    image = image + hu.texture[tissue] * texture
    blur = _uniform(rng, config.blur_sigma_mm) * (1.0 + hard * rng.uniform(0.0, 0.8))
    thickness = spacing[2] * _uniform(rng, config.slice_thickness_ratio)
    image = acquisition.psf_blur(image, spacing, blur, thickness)
    # larger patients are noisier at the same dose setting
    body_factor = float(np.clip((patient.body.half_width + np.mean(patient.body.fat)) / 160.0, 0.8, 1.35))
    noise_std = _uniform(rng, config.noise_std_hu) * (1.0 + hard * rng.uniform(0.0, 1.0)) * body_factor
    image += noise_std * noise
    sharp = 0.0
    if rng.random() < config.sharp_kernel_prob:
        sharp = float(rng.uniform(0.3, 1.0))
        image = acquisition.sharpen(image, spacing, sharp)
    gain = _uniform(rng, config.intensity_scale)
    offset = _uniform(rng, config.intensity_offset_hu)
    image = image * gain + offset

    origin = np.array(grid.origin)
    resampled = config.target_spacing_mm is not None and tuple(config.target_spacing_mm) != tuple(spacing)
    if config.supersample == 1 and not resampled:
        label = canvas.label()
    else:
        frac = acquisition.block_average(canvas.frac, factors)
        if config.target_spacing_mm is not None and resampled:
            target = tuple(float(v) for v in config.target_spacing_mm)
            image, new_spacing, shift = acquisition.resample(image, spacing, target)
            frac, _, _ = acquisition.resample(frac, spacing, target)
            tissue, _, _ = acquisition.resample(tissue, spacing, target, order=0)
            origin = origin + shift
            spacing = new_spacing
        label = np.where(frac.sum(axis=0) >= 0.5, np.argmax(frac, axis=0) + 1, 0).astype(np.uint8)
    summary = {
        "slice_thickness_mm": round(thickness, 2),
        "noise_std_hu": round(noise_std, 2),
        "blur_sigma_mm": round(blur, 2),
        "sharp_kernel": round(sharp, 2),
        "intensity_gain": round(gain, 3),
        "intensity_offset_hu": round(offset, 1),
    }
    return image, label, tissue, spacing, origin, summary


def generate_phantom(seed: int, config: PhantomConfig | None = None) -> Phantom:
    """One deterministic phantom for `seed` drawn from `config` (default: `PhantomConfig.default()`)."""
    start = time.perf_counter()
    config = config or PhantomConfig.default()
    streams = dict(
        zip(
            _STREAMS, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STREAMS))), strict=True
        )
    )
    hard = config.difficulty

    patient = sample_patient(streams["anatomy"], config, hard)
    rng = streams["phase"]
    probs = config.phase_probabilities()
    phase = Phase(rng.choice([p.value for p in probs], p=list(probs.values())))
    enhancement = _uniform(rng, config.enhancement_scale)
    hu = sample_hu(rng, phase, enhancement, config.hu_jitter * (1.0 + hard))

    grid = _grid(streams["grid"], config, patient)
    fine = _supersampled(grid, config.supersample)
    lesions = sample_lesions(streams["lesions"], config, patient, hard)
    rng = streams["render"]
    gas = _uniform(rng, config.bowel_gas)
    canvas = Canvas(fine, hu)
    render_info = _render(canvas, patient, config, rng, lesions, gas)

    image, label, tissue, spacing, origin, acquired = _acquire(canvas, grid, config, patient, streams["acquisition"])
    label = _drop_fragments(label, min_ml=0.5, spacing=spacing)

    ood: list[dict[str, Any]] = []
    rng = streams["ood"]
    if config.ood_kinds and rng.random() < config.ood_prob:
        kind = config.ood_kinds[int(rng.integers(len(config.ood_kinds)))]
        ood.append(apply_ood(rng, kind, image, label, spacing))
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    # ------------------------------------------------------------------ world placement and storage order
    rng = streams["world"]
    table_offset = np.array([rng.uniform(-25, 25), rng.uniform(-40, 40), rng.uniform(-700, 250)])
    affine = acquisition.ras_affine(spacing, origin + table_offset)
    orientation = config.orientations[int(rng.integers(len(config.orientations)))]
    (image, label, tissue), affine = acquisition.reorient([image, label, tissue], affine, orientation)

    counts = {value: int((label == value).sum()) for value in (1, 2, 3)}
    voxel_ml = float(np.prod(spacing)) / 1000.0
    meta: dict[str, Any] = {
        "seed": seed,
        "phase": phase.value,
        "enhancement": round(enhancement, 3),
        "orientation": orientation,
        "shape": list(image.shape),
        "spacing": [round(v, 4) for v in spacing],
        "acquired_spacing": [round(v, 4) for v in grid.spacing],
        "supersample": config.supersample,
        **acquired,
        "kidneys": ["right" if k.side > 0 else "left" for k in patient.kidneys],
        "nephrectomy": ["right" if s > 0 else "left" for s in patient.absent],
        "kidney_centers_mm": {
            ("right" if k.side > 0 else "left"): [round(float(v), 1) for v in k.center + table_offset]
            for k in patient.kidneys
        },
        "lesions": [lesion.summary() for lesion in lesions],
        "tumor_count": sum(1 for lesion in lesions if lesion.kind == "tumor"),
        "cyst_count": sum(1 for lesion in lesions if lesion.kind == "cyst"),
        "label_volume_ml": {
            name: round(counts[v] * voxel_ml, 2) for name, v in (("kidney", 1), ("tumor", 2), ("cyst", 3))
        },
        "fat_thickness_mm": [round(v, 1) for v in patient.body.fat],
        "body_scale": round(patient.scale, 3),
        "bowel_gas": round(gas, 2),
        "hu": {
            t.name.lower(): round(hu[t], 1)
            for t in (
                Tissue.KIDNEY_CORTEX,
                Tissue.KIDNEY_MEDULLA,
                Tissue.LIVER,
                Tissue.SPLEEN,
                Tissue.MUSCLE,
                Tissue.ARTERY,
                Tissue.TUMOR,
                Tissue.CYST,
                Tissue.URINE,
                Tissue.SUBCUT_FAT,
            )
        },
        "difficulty": config.difficulty,
        "ood": ood,
        **render_info,
    }
    meta["generation_s"] = round(time.perf_counter() - start, 4)
    return Phantom(image=image, label=label, affine=affine, meta=meta, tissue=tissue)


def write_phantom_dataset(
    folder: Path, n: int, seed: int, config: PhantomConfig | None = None, label_dir: str = "labels/final"
) -> list[str]:
    """Write `n` phantoms as `<id>.nii.gz` images in `folder` and labels in `folder/<label_dir>/<id>.nii.gz`.

    This is the datastore layout the server reads (MONAI Label style). Phantom i uses seed `seed + i`;
    ids are `phantom_00000`, `phantom_00001`, ... Returns the ids in order.
    """
    folder = Path(folder)
    labels = folder / label_dir
    labels.mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(n):
        phantom = generate_phantom(seed + index, config)
        name = f"phantom_{index:05d}"
        _save(phantom.image, phantom.affine, folder / f"{name}.nii.gz")
        _save(phantom.label, phantom.affine, labels / f"{name}.nii.gz")
        ids.append(name)
    return ids


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))

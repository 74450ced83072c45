"""What a phantom generator run may vary, as one frozen, validated pydantic model, plus named presets.

Learned kidney models are trained only on phantoms and must transfer to real CT, so almost every knob is a
*range* that is sampled per phantom (domain randomisation) rather than a fixed value. Presets:

* `PhantomConfig.default()`: wide randomisation, the training distribution.
* `PhantomConfig.easy()`: clean, fixed 3 mm RAS grid, low noise: smoke tests and sanity checks.
* `PhantomConfig.hard()`: heavy noise/blur, thick slices, extreme habitus and lesions, some OOD corruptions.
* `PhantomConfig.site_variant(k)`: scanner/protocol/population profiles for federated-learning simulations.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

_AXIS_PAIRS = {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}


class Phase(StrEnum):
    """Contrast phase: decides the HU of every enhancing tissue (see `intensity.py`)."""

    NONCONTRAST = "noncontrast"
    ARTERIAL = "arterial"  # corticomedullary: bright cortex, dark medulla, very bright aorta
    VENOUS = "venous"  # portal-venous / nephrographic: homogeneously bright kidney
    EXCRETORY = "excretory"  # delayed: contrast in calyces, pelvis and ureter


class OODKind(StrEnum):
    """Deliberately unusual corruptions (active-learning / OOD-detection tests), see `artifacts.py`."""

    EXTREME_NOISE = "extreme_noise"
    METAL_STREAK = "metal_streak"
    UNUSUAL_INTENSITY = "unusual_intensity"
    MOTION = "motion"
    TRUNCATION = "truncation"
    BEAM_HARDENING = "beam_hardening"


def _check_range(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"range lower bound {low} exceeds upper bound {high}")
    return value


def _check_count(value: tuple[int, int]) -> tuple[int, int]:
    low, high = value
    if low < 0 or low > high:
        raise ValueError(f"count range must satisfy 0 <= low <= high, got {value}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_check_range)]
CountRange = Annotated[tuple[int, int], AfterValidator(_check_count)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def check_axcodes(code: str) -> str:
    """Validate a 3-letter orientation code such as 'RAS' or 'LPS' (one letter per anatomical axis)."""
    code = code.upper()
    if len(code) != 3 or any(c not in _AXIS_PAIRS for c in code):
        raise ValueError(f"orientation {code!r} must be 3 letters from L/R, A/P, S/I")
    if len({_AXIS_PAIRS[c] for c in code}) != 3:
        raise ValueError(f"orientation {code!r} uses an anatomical axis twice")
    return code


class PhantomConfig(BaseModel):
    """Distribution of phantoms. Ranges are (low, high) and sampled uniformly per phantom unless noted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # ---------------------------------------------------------------- grid / acquisition geometry
    fov_mm: tuple[float, float, float] = Field(
        (380.0, 380.0, 200.0), description="nominal field of view (x, y, z) in mm; z is the scan length"
    )
    fov_jitter: float = Field(0.08, ge=0.0, le=0.5, description="relative +- jitter of each FOV extent")
    center_jitter_mm: tuple[float, float, float] = Field(
        (15.0, 15.0, 30.0), description="+- shift of the FOV centre from the kidney-level body centre"
    )
    spacing_xy_mm: Range = Field((2.0, 3.2), description="in-plane pixel spacing range (0.5 .. 5 mm allowed)")
    spacing_z_mm: Range = Field((2.0, 5.0), description="slice spacing range (0.5 .. 8 mm allowed)")
    square_pixels: bool = Field(True, description="x and y spacing equal (False: drawn independently)")
    slice_thickness_ratio: Range = Field((1.0, 1.5), description="reconstructed slice thickness / slice spacing")
    supersample: int = Field(1, ge=1, le=3, description="internal grid refinement before area-averaging")
    target_spacing_mm: tuple[float, float, float] | None = Field(
        None, description="if set, the acquired image is resampled onto this spacing (like a preprocessed dataset)"
    )
    orientations: tuple[str, ...] = Field(("RAS", "LPS", "LAS"), description="array axis codes to choose from")

    # ---------------------------------------------------------------- contrast and intensities
    phase_weights: dict[Phase, float] = Field(
        default_factory=lambda: {
            Phase.NONCONTRAST: 0.3,
            Phase.ARTERIAL: 0.2,
            Phase.VENOUS: 0.35,
            Phase.EXCRETORY: 0.15,
        },
        description="relative probabilities of the contrast phases (normalised)",
    )
    enhancement_scale: Range = Field((0.7, 1.3), description="bolus strength: multiplies contrast enhancement")
    hu_jitter: float = Field(1.0, ge=0.0, le=4.0, description="scale of the per-tissue HU randomisation")
    intensity_scale: Range = Field((0.96, 1.04), description="global HU gain (calibration drift)")
    intensity_offset_hu: Range = Field((-12.0, 12.0), description="global HU offset (calibration drift)")
    oral_contrast_prob: Probability = 0.15

    # ---------------------------------------------------------------- image quality
    noise_std_hu: Range = Field((4.0, 30.0), description="quantum noise std in homogeneous soft tissue (HU)")
    blur_sigma_mm: Range = Field((0.3, 1.4), description="in-plane PSF Gaussian sigma (mm)")
    sharp_kernel_prob: Probability = Field(0.15, description="edge-enhancing (bone/sharp) reconstruction kernel")

    # ---------------------------------------------------------------- anatomy
    body_scale: Range = Field((0.88, 1.12), description="skeleton/organ size factor (small .. large patient)")
    fat_thickness_mm: Range = Field((4.0, 55.0), description="subcutaneous fat thickness (thin .. obese)")
    shape_jitter: float = Field(1.0, ge=0.0, le=3.0, description="scale of organ shape deformation")
    position_jitter_mm: float = Field(8.0, ge=0.0, le=40.0, description="std of extra organ position jitter")
    nephrectomy_prob: Probability = Field(0.04, description="probability that one kidney is absent")
    bowel_gas: Range = Field((0.1, 0.6), description="fraction of bowel loops holding gas")
    table_prob: Probability = Field(0.8, description="probability the patient table is in the FOV")

    # ---------------------------------------------------------------- lesions
    tumor_prob: Probability = 0.5
    tumor_count: CountRange = (1, 2)
    tumor_radius_mm: Range = (6.0, 35.0)
    tumor_exophytic_prob: Probability = 0.5
    cyst_prob: Probability = 0.4
    cyst_count: CountRange = (1, 3)
    cyst_radius_mm: Range = (3.0, 25.0)

    # ---------------------------------------------------------------- hardness / out-of-distribution
    difficulty: float = Field(0.0, ge=0.0, le=1.0, description="0 = as configured .. 1 = much harder draws")
    ood_prob: Probability = Field(0.0, description="probability of one deliberately out-of-distribution corruption")
    ood_kinds: tuple[OODKind, ...] = tuple(OODKind)

    # ------------------------------------------------------------------------------ validation
    @field_validator("spacing_xy_mm")
    @classmethod
    def _spacing_xy_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 0.5 or value[1] > 5.0:
            raise ValueError("in-plane spacing must lie within 0.5 .. 5 mm")
        return value

    @field_validator("spacing_z_mm")
    @classmethod
    def _spacing_z_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 0.5 or value[1] > 8.0:
            raise ValueError("slice spacing must lie within 0.5 .. 8 mm")
        return value

    @field_validator("slice_thickness_ratio")
    @classmethod
    def _thickness_bounds(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 0.5 or value[1] > 3.0:
            raise ValueError("slice thickness / spacing must lie within 0.5 .. 3")
        return value

    @field_validator("fov_mm")
    @classmethod
    def _fov_bounds(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < 60.0 or max(value) > 700.0:
            raise ValueError("each FOV extent must lie within 60 .. 700 mm")
        return value

    @field_validator("target_spacing_mm")
    @classmethod
    def _target_bounds(cls, value: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if value is not None and (min(value) < 0.5 or max(value) > 8.0):
            raise ValueError("target spacing must lie within 0.5 .. 8 mm")
        return value

    @field_validator("orientations")
    @classmethod
    def _orientations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one orientation is needed")
        return tuple(check_axcodes(v) for v in value)

    @field_validator("phase_weights")
    @classmethod
    def _phase_weights(cls, value: dict[Phase, float]) -> dict[Phase, float]:
        if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError("phase weights must be >= 0 with a positive sum")
        return value

    @field_validator("noise_std_hu", "blur_sigma_mm", "fat_thickness_mm", "tumor_radius_mm", "cyst_radius_mm")
    @classmethod
    def _non_negative(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("body_scale", "intensity_scale", "enhancement_scale")
    @classmethod
    def _positive_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0:
            raise ValueError("scale factors must be > 0")
        return value

    @model_validator(mode="after")
    def _lesion_sizes(self) -> PhantomConfig:
        if self.tumor_radius_mm[1] > 80 or self.cyst_radius_mm[1] > 60:
            raise ValueError("lesion radii above 80 mm (tumor) / 60 mm (cyst) are not anatomical")
        return self

    # ------------------------------------------------------------------------------ helpers
    def phase_probabilities(self) -> dict[Phase, float]:
        """Normalised phase probabilities (the config stores unnormalised weights for convenience)."""
        total = sum(self.phase_weights.values())
        return {phase: self.phase_weights.get(phase, 0.0) / total for phase in Phase}

    def with_(self, **changes: Any) -> PhantomConfig:
        """A validated copy with some fields changed (`model_copy` would skip validation)."""
        return PhantomConfig.model_validate({**self.model_dump(), **changes})

    # ------------------------------------------------------------------------------ presets
    @classmethod
    def default(cls) -> PhantomConfig:
        """The training distribution: wide randomisation of anatomy, phase, grid, noise and lesions."""
        return cls()

    @classmethod
    def easy(cls) -> PhantomConfig:
        """Clean phantoms on a fixed 3 mm RAS grid of 128x128x64 voxels (384x384x192 mm)."""
        return cls(
            fov_mm=(384.0, 384.0, 192.0),
            fov_jitter=0.0,
            center_jitter_mm=(5.0, 5.0, 10.0),
            spacing_xy_mm=(3.0, 3.0),
            spacing_z_mm=(3.0, 3.0),
            slice_thickness_ratio=(1.0, 1.0),
            orientations=("RAS",),
            phase_weights={Phase.NONCONTRAST: 0.5, Phase.VENOUS: 0.5},
            enhancement_scale=(0.9, 1.1),
            hu_jitter=0.5,
            intensity_scale=(1.0, 1.0),
            intensity_offset_hu=(0.0, 0.0),
            noise_std_hu=(3.0, 6.0),
            blur_sigma_mm=(0.4, 0.8),
            sharp_kernel_prob=0.0,
            body_scale=(0.95, 1.05),
            fat_thickness_mm=(12.0, 30.0),
            shape_jitter=0.5,
            position_jitter_mm=4.0,
            nephrectomy_prob=0.0,
            bowel_gas=(0.1, 0.3),
            oral_contrast_prob=0.0,
            tumor_prob=0.3,
            tumor_radius_mm=(10.0, 25.0),
            cyst_prob=0.3,
            cyst_radius_mm=(6.0, 15.0),
        )

    @classmethod
    def hard(cls) -> PhantomConfig:
        """Deliberately hard: noisy, blurry, thick slices, extreme habitus, big/many lesions, some OOD."""
        return cls(
            spacing_xy_mm=(1.5, 3.5),
            spacing_z_mm=(3.0, 6.0),
            slice_thickness_ratio=(1.0, 2.0),
            orientations=("RAS", "LPS", "LAS", "RPI", "PIR", "SRA"),
            enhancement_scale=(0.4, 1.6),
            hu_jitter=2.0,
            intensity_scale=(0.9, 1.1),
            intensity_offset_hu=(-30.0, 30.0),
            oral_contrast_prob=0.35,
            noise_std_hu=(30.0, 60.0),
            blur_sigma_mm=(1.0, 2.5),
            sharp_kernel_prob=0.3,
            body_scale=(0.8, 1.2),
            fat_thickness_mm=(1.0, 80.0),
            shape_jitter=2.0,
            position_jitter_mm=15.0,
            nephrectomy_prob=0.1,
            bowel_gas=(0.2, 0.9),
            tumor_prob=0.8,
            tumor_count=(1, 3),
            tumor_radius_mm=(4.0, 50.0),
            cyst_prob=0.7,
            cyst_count=(1, 4),
            cyst_radius_mm=(2.0, 35.0),
            difficulty=0.8,
            ood_prob=0.3,
        )

    @classmethod
    def site_variant(cls, k: int) -> PhantomConfig:
        """Site-like profile k (any int): scanner, protocol and population differ between sites.

        Four archetypes cycle (k % 4); k >= 4 further perturbs noise and prevalence deterministically, so
        any number of distinct sites can be simulated for federated-learning experiments.
        """
        archetypes: list[dict[str, Any]] = [
            dict(  # academic referral centre: venous-phase kidney protocol, thin slices, many tumors
                spacing_xy_mm=(1.2, 1.6),
                spacing_z_mm=(2.5, 3.0),
                orientations=("LPS",),
                phase_weights={Phase.VENOUS: 0.6, Phase.ARTERIAL: 0.3, Phase.NONCONTRAST: 0.1},
                noise_std_hu=(6.0, 14.0),
                sharp_kernel_prob=0.05,
                tumor_prob=0.85,
                cyst_prob=0.4,
            ),
            dict(  # community hospital: thick slices, non-contrast stone protocol, few tumors
                spacing_xy_mm=(2.5, 3.2),
                spacing_z_mm=(4.0, 5.0),
                orientations=("RAS",),
                phase_weights={Phase.NONCONTRAST: 0.8, Phase.VENOUS: 0.2},
                noise_std_hu=(15.0, 30.0),
                blur_sigma_mm=(0.8, 1.6),
                tumor_prob=0.15,
                cyst_prob=0.5,
                fat_thickness_mm=(15.0, 70.0),
            ),
            dict(  # urology clinic: CT urography (excretory) plus nephrographic phase
                spacing_xy_mm=(1.5, 2.0),
                spacing_z_mm=(1.5, 2.5),
                orientations=("LAS",),
                phase_weights={Phase.EXCRETORY: 0.5, Phase.VENOUS: 0.4, Phase.NONCONTRAST: 0.1},
                noise_std_hu=(8.0, 20.0),
                tumor_prob=0.5,
                cyst_prob=0.6,
            ),
            dict(  # PET/CT or low-dose site: noisy non-contrast, sharp kernel, calibration offset
                spacing_xy_mm=(2.0, 3.0),
                spacing_z_mm=(2.0, 3.0),
                orientations=("RAS", "LPS"),
                phase_weights={Phase.NONCONTRAST: 0.7, Phase.ARTERIAL: 0.3},
                noise_std_hu=(20.0, 40.0),
                sharp_kernel_prob=0.5,
                intensity_offset_hu=(-25.0, -5.0),
                tumor_prob=0.3,
                cyst_prob=0.3,
                fat_thickness_mm=(3.0, 30.0),
            ),
        ]
        fields = dict(archetypes[k % len(archetypes)])
        generation = k // len(archetypes)
        if generation:
            wobble = 1.0 + 0.15 * ((generation * 7919) % 5 - 2) / 2  # 0.85 .. 1.15, deterministic in k
            low, high = fields["noise_std_hu"]
            fields["noise_std_hu"] = (low * wobble, high * wobble)
            fields["tumor_prob"] = min(1.0, fields["tumor_prob"] * (2.0 - wobble))
        return cls(**fields)

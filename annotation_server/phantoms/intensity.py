"""HU of every tissue per contrast phase, and how much it varies between patients and within an organ.

Non-contrast values are calibrated on the real example CT (TotalSegmentator `example_ct`, 3 mm, non-contrast:
kidney median 12-20 HU, liver 46, spleen 35, aorta 43, psoas 38, autochthon 25, fat -95, vertebral
spongiosa ~115, cortical bone several hundred) widened by literature ranges; enhanced phases follow typical
multiphase renal CT (corticomedullary ~30 s, nephrographic ~100 s, excretory 5-10 min). Each phantom draws
its own values (`sample_hu`), with a shared bolus strength so organs enhance together, as in a real scan.

Where the renal ranges come from (the references, not their text; the values above are ours):
- Simple cyst: homogeneous fluid of -9 to 20 HU, thin smooth wall, no enhancement, where enhancement means a
  rise of 20 HU or more between phases: Bosniak classification, version 2019 (Silverman SG et al., Radiology
  2019;292:475-488). Hence `CYST` is clipped to [-5, 22] and kept 40 HU or more below the enhanced cortex.
- Solid renal masses enhance (Israel GM, Bosniak MA, Radiology 2005;236:441-450: "How I do it: evaluating
  renal masses"); clear-cell carcinoma, the commonest, enhances strongly and heterogeneously in the
  corticomedullary phase and less than cortex in later phases (Kim JK et al., AJR 2002;178:1499-1506).
  Hence `TUMOR` has a wide texture, is kept below cortex in the arterial phase by 15 HU and in the venous
  and excretory phases by 25 HU, and `NECROSIS` (non-enhancing) sits inside it.
- Renal sinus fat is denser than perirenal fat (partial volume with vessels and calyces at CT resolution);
  its mean here is capped 40 HU above the perirenal fat of the same phantom.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from annotation_server.phantoms.config import Phase


class Tissue(IntEnum):
    """Dominant tissue per voxel (kept next to the HU so statistics per tissue can be reported)."""

    AIR = 0
    SUBCUT_FAT = 1
    SKIN = 2
    MUSCLE = 3
    VISCERAL_FAT = 4
    BONE_CORTICAL = 5
    BONE_CANCELLOUS = 6
    DISC = 7
    CSF = 8
    LIVER = 9
    SPLEEN = 10
    PANCREAS = 11
    BILE = 12
    BOWEL_WALL = 13
    BOWEL_FLUID = 14
    BOWEL_GAS = 15
    STOOL = 16
    ORAL_CONTRAST = 17
    ARTERY = 18
    VEIN = 19
    PORTAL_VEIN = 20
    KIDNEY_CORTEX = 21
    KIDNEY_MEDULLA = 22
    SINUS_FAT = 23
    URINE = 24
    TUMOR = 25
    NECROSIS = 26
    CYST = 27
    ADRENAL = 28
    LUNG = 29
    CARTILAGE = 30
    TABLE = 31
    PARASPINAL = 32
    PERIRENAL_FAT = 33
    PSOAS = 34
    TABLE_FOAM = 35


@dataclass(frozen=True)
class TissueHU:
    """Mean HU per phase (non-contrast, arterial, venous, excretory), between-patient std, texture std."""

    phases: tuple[float, float, float, float]
    spread: float
    texture: float


_PHASE_INDEX = {Phase.NONCONTRAST: 0, Phase.ARTERIAL: 1, Phase.VENOUS: 2, Phase.EXCRETORY: 3}

T = Tissue
TABLE: dict[Tissue, TissueHU] = {
    T.AIR: TissueHU((-1000, -1000, -1000, -1000), 5, 3),
    T.SUBCUT_FAT: TissueHU((-100, -100, -98, -98), 10, 12),
    T.SKIN: TissueHU((20, 30, 45, 40), 10, 8),
    T.MUSCLE: TissueHU((42, 52, 60, 58), 7, 9),
    T.PSOAS: TissueHU((42, 52, 60, 58), 7, 8),
    T.PARASPINAL: TissueHU((28, 38, 46, 44), 14, 12),  # often fatty-infiltrated (real autochthon ~25 HU)
    T.VISCERAL_FAT: TissueHU((-95, -95, -92, -92), 10, 14),
    T.PERIRENAL_FAT: TissueHU((-95, -95, -92, -92), 10, 12),
    T.SINUS_FAT: TissueHU((-75, -70, -65, -65), 15, 18),
    T.BONE_CORTICAL: TissueHU((650, 650, 650, 650), 150, 60),
    T.BONE_CANCELLOUS: TissueHU((130, 135, 140, 140), 45, 35),
    T.DISC: TissueHU((85, 90, 95, 95), 15, 10),
    T.CSF: TissueHU((12, 12, 14, 14), 5, 6),
    T.LIVER: TissueHU((52, 70, 110, 90), 9, 7),
    T.SPLEEN: TissueHU((41, 115, 115, 95), 7, 7),
    T.PANCREAS: TissueHU((35, 100, 95, 75), 15, 14),
    T.BILE: TissueHU((6, 6, 8, 8), 6, 4),
    T.BOWEL_WALL: TissueHU((38, 80, 90, 70), 8, 8),
    T.BOWEL_FLUID: TissueHU((12, 12, 14, 14), 8, 6),
    T.BOWEL_GAS: TissueHU((-980, -980, -980, -980), 15, 15),
    T.STOOL: TissueHU((-60, -60, -55, -55), 40, 90),
    T.ORAL_CONTRAST: TissueHU((350, 350, 350, 350), 120, 30),
    T.ARTERY: TissueHU((44, 300, 165, 120), 6, 6),
    T.VEIN: TissueHU((42, 90, 150, 120), 6, 6),
    T.PORTAL_VEIN: TissueHU((42, 130, 170, 120), 6, 6),
    # Non-contrast kidney measured 16 HU median on the real sample (partial volume with sinus fat included).
    T.KIDNEY_CORTEX: TissueHU((20, 190, 175, 135), 11, 7),
    T.KIDNEY_MEDULLA: TissueHU((17, 75, 160, 150), 11, 7),
    T.URINE: TissueHU((8, 9, 14, 550), 6, 5),
    T.TUMOR: TissueHU((36, 130, 100, 85), 10, 16),
    T.NECROSIS: TissueHU((20, 24, 28, 28), 8, 10),
    T.CYST: TissueHU((8, 9, 11, 11), 5, 3),
    T.ADRENAL: TissueHU((22, 60, 70, 55), 8, 8),
    T.LUNG: TissueHU((-850, -850, -850, -850), 40, 35),
    T.CARTILAGE: TissueHU((110, 115, 120, 120), 15, 10),
    T.TABLE: TissueHU((250, 250, 250, 250), 100, 20),
    T.TABLE_FOAM: TissueHU((-850, -850, -850, -850), 60, 15),
}

# tissues whose HU follow the bolus (enhancement = phase value - non-contrast value) and may be jittered
_UNCHANGED = {T.AIR, T.BOWEL_GAS, T.LUNG, T.TABLE, T.TABLE_FOAM}


@dataclass(frozen=True)
class HUTable:
    """One phantom's HU and texture std per tissue (indexable by `Tissue`)."""

    mean: np.ndarray
    texture: np.ndarray
    phase: Phase

    def __getitem__(self, tissue: Tissue) -> float:
        return float(self.mean[int(tissue)])

    def tex(self, tissue: Tissue) -> float:
        return float(self.texture[int(tissue)])


def sample_hu(rng: np.random.Generator, phase: Phase, enhancement: float, jitter: float) -> HUTable:
    """Draw one patient's tissue HU: base + bolus-scaled enhancement + per-tissue jitter.

    `enhancement` scales all contrast uptake together (bolus size/timing); `jitter` scales the between-patient
    spread. Physical ordering constraints that the kidney tests rely on are enforced afterwards (cyst below
    cortex in enhanced phases, tumor below cortex in venous phase, fat below water).
    """
    n = max(TABLE) + 1
    mean = np.zeros(n, np.float32)
    texture = np.zeros(n, np.float32)
    index = _PHASE_INDEX[phase]
    for tissue, spec in TABLE.items():
        base = spec.phases[0]
        value = base + enhancement * (spec.phases[index] - base)
        if tissue not in _UNCHANGED:
            value += jitter * spec.spread * float(np.clip(rng.standard_normal(), -2.5, 2.5))
            if index > 0:  # enhancement itself varies per organ, not only globally
                value += jitter * 0.12 * (spec.phases[index] - base) * float(np.clip(rng.standard_normal(), -2, 2))
        else:
            value += spec.spread * float(np.clip(rng.standard_normal(), -2, 2))
        mean[int(tissue)] = value
        texture[int(tissue)] = spec.texture * float(rng.uniform(0.7, 1.4))
    if phase == Phase.ARTERIAL:
        texture[T.SPLEEN] *= 4.0  # arciform (moire) enhancement of the spleen
    for fat in (T.SUBCUT_FAT, T.VISCERAL_FAT, T.PERIRENAL_FAT):
        mean[fat] = min(mean[fat], -60.0)
    mean[T.SINUS_FAT] = min(mean[T.SINUS_FAT], mean[T.PERIRENAL_FAT] + 40.0)
    mean[T.CYST] = float(np.clip(mean[T.CYST], -5.0, 22.0))
    mean[T.URINE] = max(mean[T.URINE], -2.0)
    cortex = mean[T.KIDNEY_CORTEX]
    if phase != Phase.NONCONTRAST:
        mean[T.CYST] = min(mean[T.CYST], cortex - 40.0)
        mean[T.NECROSIS] = min(mean[T.NECROSIS], cortex - 40.0)
    if phase in (Phase.VENOUS, Phase.EXCRETORY):
        mean[T.TUMOR] = min(mean[T.TUMOR], cortex - 25.0)  # RCC washes out / enhances less than cortex
    if phase == Phase.ARTERIAL:
        mean[T.KIDNEY_MEDULLA] = min(mean[T.KIDNEY_MEDULLA], cortex - 40.0)  # corticomedullary difference
        mean[T.TUMOR] = min(mean[T.TUMOR], cortex - 15.0)
    return HUTable(mean=mean, texture=texture, phase=phase)

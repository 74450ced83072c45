"""The promotion gate: a new version serves only if it is measurably better than the one serving now.

Both versions are scored on the same validation samples (the training job and the federated import measure
the serving version themselves for exactly that reason), so the comparison is paired: per-sample Dice
differences, their mean, and a paired bootstrap 95% interval of that mean. A version is promoted only when

- the validation set holds at least `min_val_images` images (a Dice from one or two images says little), and
- its mean Dice beats the serving version's by more than `min_improvement` (an equal score is not a gain), and
- the interval's lower end is above `min_improvement - margin`: with 95% confidence the new version is not
  worse by more than `margin` Dice (a mean gain that noise alone could produce, at a real risk of a loss,
  is refused).

Every decision carries a sentence saying which of these held, shown in the job result and the registry log.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from annotation_server.registry import ModelRegistry, ModelVersion

MIN_VAL_IMAGES = 5
NONINFERIORITY_MARGIN = 0.01
BOOTSTRAP_RESAMPLES = 4000


class GateDecision(BaseModel):
    passed: bool
    candidate_dice: float
    serving_dice: float
    min_improvement: float
    val_images: int
    min_val_images: int
    mean_difference: float
    ci95_low: float
    ci95_high: float
    margin: float
    reason: str


def paired_bootstrap_ci(differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """95% percentile interval of the mean of paired differences (seeded: the same data gives the same gate)."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(differences), size=(resamples, len(differences)))
    means = differences[picks].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def decide(
    candidate_scores: Sequence[float],
    serving_scores: Sequence[float],
    val_images: int,
    min_improvement: float = 0.0,
    min_val_images: int = MIN_VAL_IMAGES,
    margin: float = NONINFERIORITY_MARGIN,
) -> GateDecision:
    """Compare per-sample Dice of the candidate and the serving version on the same validation samples."""
    candidate, serving = np.asarray(candidate_scores, float), np.asarray(serving_scores, float)
    if candidate.shape != serving.shape:
        raise ValueError("the gate needs one candidate and one serving score per validation sample")
    if candidate.size == 0:  # e.g. no usable click could be simulated on the held-out labels
        candidate = serving = np.zeros(1)
        val_images = 0
    differences = candidate - serving
    mean_difference = float(differences.mean())
    low, high = paired_bootstrap_ci(differences)
    scores = f"validation Dice {candidate.mean():.4f} vs the serving version's {serving.mean():.4f} on the same images"
    needed = f"more than {min_improvement:+g}" if min_improvement else "a gain"
    if val_images < min_val_images:
        passed = False
        why = (
            f"not promoted: only {val_images} validation image(s), the gate needs at least {min_val_images} "
            f"to tell a better model from noise (save more final labels or raise val_split)"
        )
    elif mean_difference <= min_improvement:
        passed = False
        why = f"not promoted: mean difference {mean_difference:+.4f} is not {needed}"
    elif low < min_improvement - margin:
        passed = False
        why = (
            f"not promoted: mean difference {mean_difference:+.4f} but its 95% interval [{low:+.4f}, {high:+.4f}] "
            f"allows a loss of more than {margin:g} Dice"
        )
    else:
        passed = True
        why = (
            f"promotable: mean difference {mean_difference:+.4f} (95% interval [{low:+.4f}, {high:+.4f}]) "
            f"on {val_images} validation images"
        )
    return GateDecision(
        passed=passed,
        candidate_dice=round(float(candidate.mean()), 5),
        serving_dice=round(float(serving.mean()), 5),
        min_improvement=min_improvement,
        val_images=val_images,
        min_val_images=min_val_images,
        mean_difference=round(mean_difference, 5),
        ci95_low=round(low, 5),
        ci95_high=round(high, 5),
        margin=margin,
        reason=f"{why}; {scores}",
    )


def apply_gate(registry: ModelRegistry, version: ModelVersion, gate: GateDecision, auto_promote: bool) -> bool:
    """Promote `version` if the gate passed and promotion is automatic; record a rejection otherwise."""
    if not gate.passed:
        registry.reject(version.model, version.version, gate.reason)
        return False
    if not auto_promote:
        return False
    compared = version.metrics.get("serving_version")  # the version the gate measured against
    serving = registry.serving_number(version.model)
    if compared is not None and serving != compared:  # promoted or rolled back while this version was made
        registry.reject(
            version.model,
            version.version,
            f"{gate.reason}, but v{serving} serves now, not v{compared}; promote it by hand if it should serve",
        )
        return False
    registry.promote(version.model, version.version, actor="promotion-gate", reason=gate.reason)
    return True

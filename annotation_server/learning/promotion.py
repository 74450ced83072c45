"""The promotion gate: a new version serves only if it is not worse than the one serving now.

Both Dice values must come from the same validation images (the training job and the federated import
measure the serving version themselves for exactly that reason); comparing numbers from different
validation sets would let a lucky split promote a worse model.
"""

from __future__ import annotations

from pydantic import BaseModel

from annotation_server.registry import ModelRegistry, ModelVersion


class GateDecision(BaseModel):
    passed: bool
    candidate_dice: float
    serving_dice: float
    min_improvement: float
    reason: str


def decide(candidate_dice: float, serving_dice: float, min_improvement: float = 0.0) -> GateDecision:
    needed = serving_dice + min_improvement
    passed = candidate_dice >= needed
    verdict = "not worse than" if passed else "worse than"
    reason = (
        f"validation Dice {candidate_dice:.4f} is {verdict} the serving version's {serving_dice:.4f}"
        f"{f' + {min_improvement:g}' if min_improvement else ''} on the same images"
    )
    return GateDecision(
        passed=passed,
        candidate_dice=round(candidate_dice, 5),
        serving_dice=round(serving_dice, 5),
        min_improvement=min_improvement,
        reason=reason,
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

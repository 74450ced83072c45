"""The `epistemic` and `tta` next-sample strategies: the most uncertain unlabeled image, never a wait.

A pick only reads cached scores. Images the current model version has not scored yet are handed to the
background scoring thread, and until at least one candidate has a score the strategy falls back to the
first unscored image: an annotator asking for work gets it at once, the ranking gets better as scores
arrive. The answer's `strategy.<name>` says which happened (`source`: `score` with the score, or `fallback`
with the reason).
"""

from __future__ import annotations

import logging
from typing import Any

from annotation_server.datastore import Datastore
from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.learning.scoring import ScoringService
from annotation_server.learning.strategies import Pick

logger = logging.getLogger(__name__)


class UncertaintyStrategy:
    """Highest cached `method` score among unlabeled, unlocked images; scoring of the rest runs behind."""

    def __init__(self, method: str, scoring: ScoringService) -> None:
        self.method = method
        self.scoring = scoring
        self.description = (
            f"Most uncertain unlabeled image by the '{method}' score of the current model "
            "(scored in the background; the first unscored image until scores exist)"
        )

    def select(self, datastore: Datastore, request: dict[str, Any], exclude: tuple[str, ...]) -> Pick | None:
        candidates = datastore.unlabeled_ids(exclude=exclude)
        if not candidates:
            return None
        try:
            task = self.scoring.scoring_task()
            results = self.scoring.lookup(self.method, candidates)
        except (NotFoundError, InvalidRequestError) as exc:
            return Pick(candidates[0], {"method": self.method, "source": "fallback", "reason": str(exc)})
        scores = {i: results[i].score for i in candidates if i in results and results[i].score is not None}
        unscored = [i for i in candidates if i not in results]
        job = self.scoring.ensure_scored(self.method, unscored) if unscored else None
        base = {
            "method": self.method,
            "model": task.name,
            "model_version": task.version,
            "scored": len(scores),
            "unscored": len(unscored),
        }
        if scores:
            best = max(scores, key=lambda i: scores[i])  # ties: the first by id, candidates are sorted
            return Pick(best, {**base, "source": "score", "score": round(scores[best], 6)})
        running = job or self.scoring.running()
        reason = f"no unlabeled image has a '{self.method}' score for {task.name} v{task.version} yet"
        if running is not None:
            reason += f"; scoring runs in the background ({running.done}/{running.total} done)"
        fallback = unscored[0] if unscored else candidates[0]
        return Pick(fallback, {**base, "source": "fallback", "reason": reason})


def uncertainty_strategies(scoring: ScoringService) -> dict[str, UncertaintyStrategy]:
    """One strategy per scoring method, or none when no served model can be scored."""
    try:
        task = scoring.scoring_task()
    except (NotFoundError, InvalidRequestError) as exc:
        logger.info("uncertainty strategies off: %s", exc)
        return {}
    logger.info("uncertainty strategies %s score with %s", ", ".join(scoring.scorers), task.name)
    return {method: UncertaintyStrategy(method, scoring) for method in scoring.scorers}

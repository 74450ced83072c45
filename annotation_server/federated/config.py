"""Per-app settings of the federated training queue (and, later, of the federated job itself).

An app declares them in `AppSpec(federated=FederatedConfig(...))`; the defaults suit a site that trusts its
annotators' saves without a second look.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FederatedConfig:
    """How the site's queue admits labels and how a federated round may use them.

    `review_required`: a saved final label waits as `pending_review` until a reviewer approves it, instead of
    becoming `eligible` for training at once (for consortia that want a second reader before data is used).
    The privacy options are read by the federated job, not by the queue: `exclude_vars` names model variables
    never sent to the server, `percentile_privacy` (e.g. 10.0) shares only the largest weight updates, and
    `local_steps` is the number of training iterations a site runs per round.
    """

    review_required: bool = False
    exclude_vars: tuple[str, ...] = ()
    percentile_privacy: float | None = None
    local_steps: int = 100

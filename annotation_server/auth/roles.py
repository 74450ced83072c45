"""Roles and the identity a request acts as.

The four roles are MONAI Label's (admin, reviewer, annotator, user) and are nested: each includes the ones
below it, so a user is stored with one role and an admin never needs to be listed as an annotator too.
Multi-reader projects (docs/projects.md) add two between reviewer and admin: `adjudicator` (a senior reader
who sees every reader's label of a case, builds the consensus and saves the adjudicated final; also a
reviewer) and `lead` (creates projects and sees everything in them; also an adjudicator).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    user = "user"  # look: /info/, listings, downloads, job status
    annotator = "annotator"  # work: infer, sessions, next sample, save labels
    reviewer = "reviewer"  # decide: approve or exclude labels for federated training
    adjudicator = "adjudicator"  # multi-reader projects: see readers' labels, consensus, adjudicated final
    lead = "lead"  # multi-reader projects: create them, see everything in them
    admin = "admin"  # run the site: train, promote models, delete, logs, dataset export


RANKS: dict[Role, int] = {
    Role.user: 0,
    Role.annotator: 1,
    Role.reviewer: 2,
    Role.adjudicator: 3,
    Role.lead: 4,
    Role.admin: 5,
}


def parse_role(value: str) -> Role:
    """A role from its name (case-insensitive; MONAI Label's `monailabel-` prefix is accepted)."""
    name = value.strip().lower().removeprefix("monailabel-")
    try:
        return Role(name)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role '{value}': choose one of {choices}") from None


def implied_roles(role: Role) -> list[Role]:
    """The role and every role below it, highest first (what `/auth/token/valid` lists)."""
    return sorted((r for r in Role if RANKS[r] <= RANKS[role]), key=RANKS.__getitem__, reverse=True)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. `authenticated` is False for the built-in admin used while auth is off, so
    callers can tell a proven username (which becomes a label's author) from a placeholder."""

    username: str
    role: Role
    authenticated: bool = True

    @property
    def roles(self) -> list[str]:
        return [r.value for r in implied_roles(self.role)]

    def has(self, role: Role) -> bool:
        return RANKS[self.role] >= RANKS[role]


ANONYMOUS_ADMIN = Principal(username="admin", role=Role.admin, authenticated=False)

"""What the registry knows about a model version and about each promotion or rollback."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

VersionSource = Literal["shipped", "training", "federated", "imported"]
VersionStatus = Literal["serving", "candidate", "retired"]


class ModelVersion(BaseModel):
    """One immutable version of a model: a bundle folder plus where it came from and how good it is.

    `metrics` holds what the promotion gate compares (`val_dice` of this version and `serving_val_dice`
    of the version it would replace, measured on the same validation set); `provenance` says exactly
    what produced it (label versions trained on, base version, job id, federation rounds and sites).
    """

    model: str
    version: int
    path: str = Field(description="the version's bundle folder")
    source: VersionSource
    status: VersionStatus
    created_ts: float
    sha256: str = Field(description="sha256 of the weights file, as recorded in the bundle's metadata")
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    note: str = ""

    @property
    def label(self) -> str:
        """How the version is written in /info/, labels and logs: `kidney_seg@3`."""
        return f"{self.model}@{self.version}"


class RegistryEvent(BaseModel):
    """A change of the serving version (promotion, rollback, gate rejection), kept as an audit log."""

    ts: float
    model: str
    action: Literal["register", "promote", "rollback", "reject"]
    version: int
    previous: int | None = None
    actor: str = "system"
    reason: str = ""

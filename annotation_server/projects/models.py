"""Pydantic models of projects, their assignments and cases (the REST API's requests and answers)."""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator, model_validator

_TAG_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def tag_safe(name: str) -> str:
    """A user name as it may appear in a label tag (tags are folder names: letters, digits, ._-)."""
    return _TAG_SAFE.sub("_", name)[:40] or "_"


def reader_tag(project_id: int, reader: str) -> str:
    """The label tag a reader's reads of project `project_id` are saved under: one tag per reader and project."""
    return f"reader-p{project_id}-{tag_safe(reader)}"


def consensus_tag(project_id: int) -> str:
    return f"consensus-p{project_id}"


_PROJECT_TAG = re.compile(r"^(reader|consensus)-p\d+(-|$)")


def is_project_tag(tag: str) -> bool:
    """Tags only the project routes write (a read, a consensus): never through the datastore's own routes."""
    return bool(_PROJECT_TAG.match(tag))


class ProjectCreate(BaseModel):
    """What a lead asks for. Images are chosen by exactly one of: a list, a filter (glob over ids), a strategy."""

    name: str = Field(min_length=1, max_length=200)
    app: str | None = Field(None, description="the app the project annotates with (informational)")
    images: list[str] | None = Field(None, description="image ids")
    filter: str | None = Field(None, description="glob over image ids, e.g. 'case_00*'")
    strategy: str | None = Field(None, description="an active-learning strategy ranking the images (e.g. random)")
    count: int | None = Field(None, ge=1, description="with filter/strategy: how many images")
    readers_per_image: int = Field(2, ge=1, le=20)
    readers: list[str] = Field(min_length=1, description="the reader pool (user names)")
    adjudicator: str | None = Field(None, description="who adjudicates (any adjudicator may, this one is named)")
    due: date | None = None
    seed: int = Field(0, description="assignment is reproducible: same seed and images, same assignment")
    blinded: bool = True
    require_adjudication: bool = Field(
        True, description="only adjudicated (or accepted consensus) labels become eligible for training"
    )
    agreement_threshold: float = Field(0.8, ge=0, le=1, description="cases below this Dice are flagged")

    @field_validator("readers")
    @classmethod
    def _unique_readers(cls, readers: list[str]) -> list[str]:
        if len(set(readers)) != len(readers):
            raise ValueError("the reader pool lists a reader twice")
        return readers

    @model_validator(mode="after")
    def _one_selection(self) -> ProjectCreate:
        chosen = [k for k in ("images", "filter", "strategy") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("choose the images by exactly one of 'images' (a list), 'filter' or 'strategy'")
        if self.readers_per_image > len(self.readers):
            raise ValueError(
                f"readers_per_image ({self.readers_per_image}) exceeds the reader pool ({len(self.readers)} readers)"
            )
        return self


class Project(ProjectCreate):
    id: int
    created_ts: float
    created_by: str


class AssignmentStatus(StrEnum):
    assigned = "assigned"
    done = "done"


class Assignment(BaseModel):
    project_id: int
    image_id: str
    reader: str
    tag: str
    status: AssignmentStatus
    label_version: int | None = None
    seconds: float | None = None
    done_ts: float | None = None


class CaseStatus(StrEnum):
    open = "open"  # readers are reading: blinded
    closed = "closed"  # adjudicated or consensus accepted: everyone may see every read


class CaseState(BaseModel):
    project_id: int
    image_id: str
    status: CaseStatus
    consensus_version: int | None = None
    final_version: int | None = None
    closed_by: str | None = None
    closed_ts: float | None = None


class ProjectStatus(BaseModel):
    project: Project
    cases: int
    closed: int
    reads_done: int
    reads_total: int
    per_reader: dict[str, dict[str, int]]

"""What the federated queue holds: one entry per saved `final` label version, with its effort measures."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class QueueStatus(StrEnum):
    """Where an entry stands. Only `eligible` entries are trained on, and only the newest one per image."""

    pending_review = "pending_review"  # waits for a reviewer (apps with review_required)
    eligible = "eligible"  # the site's federated job may train on it
    excluded = "excluded"  # a person took it out, with a reason
    superseded = "superseded"  # a newer final label of the same image replaced it (kept as history)


class QueueEntry(BaseModel):
    """One final label version in the queue.

    `image_id`, `label_tag` and `label_version` find the files through the site's datastore:
    `datastore.image_path(image_id)` and `datastore.label_file(datastore.label_version(image_id, label_tag,
    label_version))`; `label_sha256` lets the job check it reads the very bytes that were queued.
    """

    id: int
    image_id: str
    label_tag: str = "final"
    label_version: int
    label_relpath: str = Field(description="the version file, relative to the datastore's state folder")
    label_sha256: str
    annotator: str
    saved_ts: float = Field(description="when the label was saved (seconds since the epoch)")
    enqueued_ts: float
    status: QueueStatus
    reason: str | None = Field(None, description="why it was excluded or superseded")
    reviewer: str | None = None
    reviewed_ts: float | None = None
    ai_assisted: bool = Field(description="the label was corrected from a model's pre-annotation")
    model: str | None = Field(None, description="the model that made the pre-annotation")
    model_version: str | None = None
    dice: float | None = Field(None, description="Dice of pre-annotation vs final label (foreground)")
    voxels_changed: int | None = Field(None, description="voxels whose value differs between pre-annotation and final")
    labeled_voxels: int | None = Field(None, description="foreground voxels of the final label")
    interactions: int | None = Field(None, description="clicks/strokes, when the client reports them")
    seconds: float | None = Field(None, description="time spent, when the client reports it")


class Effort(BaseModel):
    """What it took to make one label, measured when it is saved."""

    ai_assisted: bool = False
    model: str | None = None
    model_version: str | None = None
    dice: float | None = None
    voxels_changed: int | None = None
    labeled_voxels: int | None = None
    interactions: int | None = None
    seconds: float | None = None

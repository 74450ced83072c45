"""What the datastore knows about images and label versions (pydantic, so routers return them as-is)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FINAL_TAG = "final"
ORIGINAL_TAG = "original"


class ImageRecord(BaseModel):
    """One study: a file (NIfTI/NRRD/MHA) or a folder holding a DICOM series."""

    id: str
    name: str = Field(description="file name with extension (or folder name), what clients save a download as")
    ext: str = Field(description="'.nii.gz', '.nrrd', ... or '' for a DICOM series folder")
    relpath: str
    kind: Literal["file", "dicom"]
    size: int = 0
    mtime: float = 0.0
    added_ts: float
    info: dict[str, Any] = Field(default_factory=dict)


class LabelSource(BaseModel):
    """What produced the pre-annotation that a label was corrected from, if anything."""

    model: str | None = None
    model_version: str | None = None


class LabelVersion(BaseModel):
    """One immutable saved label. Saving again creates version n+1; nothing is overwritten."""

    image_id: str
    tag: str
    version: int
    ext: str
    relpath: str = Field(description="path of the version file, relative to the datastore's state folder")
    author: str
    created_ts: float
    source: LabelSource = Field(default_factory=LabelSource)
    info: dict[str, Any] = Field(default_factory=dict)
    sha256: str
    size: int
    deleted: bool = False


class DatastoreStats(BaseModel):
    """MONAI Label's `output=stats` shape."""

    total: int
    completed: int
    label_tags: dict[str, int]


class ScanReport(BaseModel):
    total: int
    added: list[str]
    removed: list[str]
    imported_labels: int

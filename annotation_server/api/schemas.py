"""Response (and JSON request) models of the HTTP API. MONAI Label shapes where clients depend on them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from annotation_server.datastore import DatastoreStats, LabelVersion
from annotation_server.sessions import SessionInfo


class ModelDescription(BaseModel):
    """One entry of /info/ `models`: MITK requires type, labels, dimension and description."""

    type: str
    labels: dict[str, int]
    dimension: int
    description: str
    version: str
    config: dict[str, Any] = Field(default_factory=dict)


class StrategyDescription(BaseModel):
    description: str


class InfoResponse(BaseModel):
    """GET /info/. No top-level `config` key: 3D Slicer reads one as 'server too old'."""

    name: str
    description: str
    version: str
    labels: list[str] = Field(description="a list of names (MITK and OHIF require an array)")
    models: dict[str, ModelDescription]
    trainers: dict[str, Any] = Field(default_factory=dict)
    strategies: dict[str, StrategyDescription]
    scoring: dict[str, Any] = Field(default_factory=dict)
    train_stats: dict[str, Any] = Field(default_factory=dict)
    datastore: DatastoreStats
    server: dict[str, Any] = Field(default_factory=dict, description="annotation-server extras: device, app")


class ImageAdded(BaseModel):
    image: str


class LabelSaved(BaseModel):
    """PUT /datastore/label answer: MONAI Label's {image, label} plus the version created."""

    image: str
    label: str
    tag: str
    version: int
    dicom_seg: dict[str, Any] | None = Field(
        None, description="DICOMweb datastores: the SEG write-back of a final label (status stored or pending)"
    )


class LabelHistory(BaseModel):
    image: str
    versions: list[LabelVersion]


class ScanResult(BaseModel):
    total: int
    added: list[str]
    removed: list[str]
    imported_labels: int


class SessionCreated(BaseModel):
    session_id: str
    session_info: SessionInfo


class ModelChecksum(BaseModel):
    checksum: str
    modified_time: int


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    app: str
    uptime_s: float
    studies: int
    inference_pending: int

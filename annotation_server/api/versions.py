"""Model versions (ours, beside MONAI Label's /model/): list, promote, roll back, without a restart."""

from __future__ import annotations

from fastapi import Body, Depends
from pydantic import BaseModel, Field

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.strict_json import MAX_INT
from annotation_server.audit.context import Audit, request_audit
from annotation_server.errors import NotFoundError
from annotation_server.registry import ModelVersion, RegistryEvent
from annotation_server.services import Services

router = CompatRouter(tags=["model versions"])


class VersionList(BaseModel):
    model: str
    serving: int | None
    versions: list[ModelVersion]
    events: list[RegistryEvent]


class PromoteRequest(BaseModel):
    version: int = Field(ge=1, le=MAX_INT)
    reason: str = ""
    client_id: str | None = None


class RollbackRequest(BaseModel):
    to: int | None = Field(None, ge=1, le=MAX_INT, description="version to serve (default: the one that served before)")
    reason: str = ""
    client_id: str | None = None


def _known(services: Services, model: str) -> str:
    if model not in services.serving.sources:
        versioned = ", ".join(sorted(services.serving.sources)) or "none"
        raise NotFoundError(f"model '{model}' has no versions (versioned models: {versioned})")
    return model


@router.get("/models/{model}/versions", response_model=VersionList, summary="A model's versions and their history")
def list_versions(model: str, services: Services = Depends(get_services)) -> VersionList:
    _known(services, model)
    registry = services.registry
    return VersionList(
        model=model,
        serving=registry.serving_number(model),
        versions=registry.versions(model),
        events=registry.events(model),
    )


@router.post("/models/{model}/promote", response_model=ModelVersion, summary="Serve a version now (no restart)")
def promote(
    model: str,
    body: PromoteRequest,
    services: Services = Depends(get_services),
    audit: Audit = Depends(request_audit),
) -> ModelVersion:
    _known(services, model)
    actor = body.client_id or "api"
    promoted = services.serving.promote(model, body.version, actor=actor, reason=body.reason or "promoted by API")
    audit.record("model.promote", model, version=promoted.version, reason=body.reason)
    return promoted


@router.post("/models/{model}/rollback", response_model=ModelVersion, summary="Serve the previous version again")
def rollback(
    model: str,
    body: RollbackRequest = Body(default_factory=RollbackRequest),
    services: Services = Depends(get_services),
    audit: Audit = Depends(request_audit),
) -> ModelVersion:
    _known(services, model)
    actor = body.client_id or "api"
    restored = services.serving.rollback(model, body.to, actor=actor, reason=body.reason or "rolled back by API")
    audit.record("model.rollback", model, version=restored.version, reason=body.reason)
    return restored

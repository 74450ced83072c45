"""GET /audit: the audit trail, newest first, with filters and paging (admin only, see auth/policy.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Depends, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.services import Services

router = CompatRouter(tags=["audit"])


class AuditEntry(BaseModel):
    seq: int
    ts: float = Field(description="seconds since the epoch")
    actor: str = Field(description="the logged-in user, 'anonymous' with auth off, or 'NAME (cli)'")
    address: str | None = Field(description="the client's address (None for CLI commands)")
    action: str = Field(description="e.g. auth.login, label.save, model.promote, fl.approve, train.start")
    target: str | None
    details: dict[str, Any]
    prev: str = Field(description="hash of the record before (the chain)")
    hash: str


class AuditPage(BaseModel):
    total: int = Field(description="records matching the filters")
    offset: int
    limit: int
    records: list[AuditEntry]


@router.get("/audit", response_model=AuditPage, summary="Audit trail: who did what, when, from where (admin)")
async def audit_records(
    actor: str | None = Query(None, max_length=200, description="only this user"),
    action: str | None = Query(None, max_length=100, description="an action or its prefix, e.g. 'label'"),
    target: str | None = Query(None, max_length=500, description="only this target (e.g. an image id)"),
    since: datetime | None = Query(None, description="at or after (ISO 8601 or seconds since epoch)"),
    until: datetime | None = Query(None, description="at or before"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10**9),
    services: Services = Depends(get_services),
) -> AuditPage:
    total, records = await run_in_threadpool(
        services.audit.query,
        actor=actor,
        action=action,
        target=target,
        since=since.timestamp() if since is not None else None,
        until=until.timestamp() if until is not None else None,
        limit=limit,
        offset=offset,
    )
    entries = [AuditEntry(**r.as_dict()) for r in records]
    return AuditPage(total=total, offset=offset, limit=limit, records=entries)

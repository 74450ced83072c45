"""/fl/: the site's federated training queue (review, exclusion) and the annotation-effort report.

Our addition beside the MONAI Label routes. Every saved `final` label lands in the queue; reviewers
approve or exclude entries here, and the effort report answers how AI assistance changes annotation work.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import Body, Depends, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.strict_json import MAX_INT
from annotation_server.audit.context import Audit, request_audit
from annotation_server.auth.dependencies import acting_user, current_principal
from annotation_server.auth.roles import Principal
from annotation_server.federated.effort import Bucket, EffortReport, build_effort_report, render_effort_png
from annotation_server.federated.entries import QueueEntry, QueueStatus
from annotation_server.federated.queue import FederatedQueue
from annotation_server.services import Services

router = CompatRouter(tags=["federated"])


def get_queue(services: Services = Depends(get_services)) -> FederatedQueue:
    return services.fl_queue


class QueuePage(BaseModel):
    total: int = Field(description="entries matching the filters")
    offset: int
    limit: int
    entries: list[QueueEntry]


class QueueCount(BaseModel):
    total: int
    by_status: dict[QueueStatus, int]
    review_required: bool = Field(description="whether this app's entries wait for a reviewer before training")


class ApproveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reviewer: str = Field("reviewer", min_length=1, max_length=200)


class ExcludeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(..., min_length=1, max_length=2000, description="why it must not be trained on")
    reviewer: str = Field("reviewer", min_length=1, max_length=200)


EntryId = Path(..., ge=1, le=MAX_INT, description="the entry's id (from GET /fl/queue)")


@router.get("/fl/queue", response_model=QueuePage, summary="Federated training queue entries, newest first")
def list_queue(
    status: QueueStatus | None = Query(None, description="pending_review, eligible, excluded or superseded"),
    annotator: str | None = Query(None, max_length=200),
    model_version: str | None = Query(None, max_length=200, description="version of the pre-annotating model"),
    since: datetime | None = Query(None, description="labels saved at or after (ISO 8601 or seconds since epoch)"),
    image: str | None = Query(None, max_length=200, description="one image's entries"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_INT),
    queue: FederatedQueue = Depends(get_queue),
) -> QueuePage:
    total, entries = queue.list_entries(
        status=status,
        annotator=annotator,
        model_version=model_version,
        since=since.timestamp() if since is not None else None,
        image_id=image,
        limit=limit,
        offset=offset,
    )
    return QueuePage(total=total, offset=offset, limit=limit, entries=entries)


@router.get("/fl/queue/count", response_model=QueueCount, summary="Queue entries per status")
def count_queue(services: Services = Depends(get_services)) -> QueueCount:
    counts = services.fl_queue.count()
    return QueueCount(
        total=sum(counts.values()), by_status=counts, review_required=services.app.federated.review_required
    )


@router.get("/fl/queue/{entry_id}", response_model=QueueEntry, summary="One queue entry")
def get_entry(entry_id: int = EntryId, queue: FederatedQueue = Depends(get_queue)) -> QueueEntry:
    return queue.get(entry_id)


@router.post("/fl/queue/{entry_id}/approve", response_model=QueueEntry, summary="Admit an entry to training")
def approve_entry(
    entry_id: int = EntryId,
    body: ApproveRequest = Body(default_factory=ApproveRequest),
    queue: FederatedQueue = Depends(get_queue),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> QueueEntry:
    entry = queue.approve(entry_id, acting_user(principal, body.reviewer), four_eyes=principal.authenticated)
    audit.record("fl.approve", entry.image_id, entry=entry.id, version=entry.label_version, reviewer=entry.reviewer)
    return entry


@router.post("/fl/queue/{entry_id}/exclude", response_model=QueueEntry, summary="Keep an entry out of training")
def exclude_entry(
    body: ExcludeRequest,
    entry_id: int = EntryId,
    queue: FederatedQueue = Depends(get_queue),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> QueueEntry:
    entry = queue.exclude(entry_id, body.reason, acting_user(principal, body.reviewer))
    audit.record(
        "fl.exclude", entry.image_id, entry=entry.id, version=entry.label_version, reason=entry.reason,
        reviewer=entry.reviewer,
    )  # fmt: skip
    return entry


@router.get("/fl/effort", response_model=EffortReport, summary="Annotation effort: AI-assisted vs manual labels")
def effort(
    bucket: Bucket = Query("week", description="time buckets of the per-model-version series: day or week"),
    queue: FederatedQueue = Depends(get_queue),
) -> EffortReport:
    return build_effort_report(queue.current(), bucket)


@router.get(
    "/fl/effort.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
    summary="The effort report as a plot",
)
def effort_png(bucket: Bucket = Query("week"), queue: FederatedQueue = Depends(get_queue)) -> Response:
    return Response(render_effort_png(build_effort_report(queue.current(), bucket)), media_type="image/png")

"""GET /preannotation/: what the PACS watcher did with each new series (queued, done, retrying, failed)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Query

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.services import Services

router = CompatRouter(tags=["preannotation"])


@router.get("/preannotation/", summary="The PACS watcher: counts per status, backlog, recent series and errors")
def preannotation_status(
    limit: int = Query(50, ge=1, le=1000, description="how many series to list, newest first"),
    status: str | None = Query(None, description="only series in this status (queued, retry, done, failed, ...)"),
    services: Services = Depends(get_services),
) -> dict[str, Any]:
    if services.watcher is None:
        return {
            "enabled": False,
            "detail": "the PACS watcher is off: start with a DICOMweb datastore and ANNOTATE_WATCH_PACS=true",
        }
    return services.watcher.report(limit, status)

"""GET /logs/: the tail of the server log, as text or a self-refreshing HTML page."""

from __future__ import annotations

import html
from collections import deque

from fastapi import Depends, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.services import Services

router = CompatRouter(tags=["logs"])


@router.get("/logs/", summary="Last lines of the server log")
def logs(
    lines: int = Query(300, ge=1, le=100_000),
    html_output: bool = Query(False, alias="html"),
    text: bool = Query(True),
    refresh: int = Query(0, ge=0, le=86_400, description="HTML only: reload every N seconds"),
    services: Services = Depends(get_services),
) -> Response:
    path = services.settings.log_file
    tail: deque[str] = deque(maxlen=lines)
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as fh:
            tail.extend(fh)
    content = "".join(tail)
    if html_output:
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        return HTMLResponse(f"<html><head>{meta}</head><body><pre>{html.escape(content)}</pre></body></html>")
    return PlainTextResponse(content)

"""GET /health: liveness plus a few numbers an admin or a load balancer can watch; GET /: a landing page."""

from __future__ import annotations

import time

from fastapi import Depends
from fastapi.responses import HTMLResponse

from annotation_server import __version__
from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.schemas import Health
from annotation_server.services import Services

router = CompatRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness and load")
def health(services: Services = Depends(get_services)) -> Health:
    return Health(
        status="ok",
        app=services.app.name,
        uptime_s=round(time.time() - services.started_ts, 3),
        studies=services.datastore.stats().total,
        inference_pending=services.inference.pending,
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def landing(services: Services = Depends(get_services)) -> str:
    models = "".join(f"<li>{t.name} ({t.type})</li>" for t in services.inference.tasks.values())
    return (
        f"<html><head><title>annotation-server</title></head><body><h1>annotation-server {__version__}</h1>"
        f"<p>App <b>{services.app.name}</b>: {services.app.description}</p><ul>{models}</ul>"
        '<p><a href="/docs">API documentation</a> · <a href="/info/">/info/</a> · '
        '<a href="/logs/?html=true">logs</a></p></body></html>'
    )

"""The blinding guard: one router-level dependency (server.py) that refuses, on every route that reads or
writes a label by image and tag, what a reader of an open blinded case may not do: read another reader's read
or the consensus (GET/HEAD label, label info, versions; an interactive session's `from_label`), or save to a
shared tag instead of their own. `GET /datastore/?output=all` is redacted in its route instead (a listing is
not refused, it leaves out what the caller may not see)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, Request

from annotation_server.auth.dependencies import bearer, current_principal
from annotation_server.errors import ForbiddenError, NotFoundError
from annotation_server.projects.models import is_project_tag

# route template -> (query parameter naming the image, default tag; None: every tag)
_READS: dict[str, tuple[str, str | None]] = {
    "/datastore/label": ("label", "final"),
    "/datastore/label/info": ("label", "final"),
    "/datastore/updatelabelinfo": ("label", "final"),
    "/datastore/label/versions": ("image", None),
}


async def blinding_guard(request: Request, token: str | None = Depends(bearer)) -> None:
    services = request.app.state.services
    projects = getattr(services, "projects", None)
    if projects is None or not services.auth.enabled:
        return
    route = getattr(request.scope.get("route"), "path", request.url.path).rstrip("/")
    method = request.method.upper()
    params = request.query_params
    reads: list[tuple[str, str | None]] = []  # (image, tag) the request reads
    writes: list[tuple[str, str]] = []  # (image, tag) the request saves
    if route in _READS and method in ("GET", "HEAD", "PUT"):
        key, default_tag = _READS[route]
        image = params.get(key) or params.get("image")
        if image and not (route == "/datastore/label" and method == "PUT"):
            reads.append((image, params.get("tag") or default_tag))
    if route == "/datastore/label" and method == "PUT" and params.get("image"):
        writes.append((params["image"], params.get("tag") or "final"))
    elif route == "/interactive/sessions" and method == "POST":
        body = await _json_body(request)
        if body.get("from_label") and isinstance(body.get("image"), str):
            reads.append((body["image"], str(body["from_label"])))
    elif route == "/interactive/sessions/{session_id}/save" and method == "POST":
        image = _session_image(services, request.path_params.get("session_id", ""))
        if image is not None:
            writes.append((image, str((await _json_body(request)).get("tag") or "final")))
    elif route == "/infer/{model}" and method == "POST" and params.get("image"):
        options = await _form_params(request)
        if options.get("save_label"):
            writes.append((params["image"], str(options.get("label_tag") or "original")))
    if not reads and not writes:
        return
    for image, tag in writes:
        if is_project_tag(tag):
            raise ForbiddenError(
                f"label tag '{tag}' belongs to a multi-reader project: reads are saved with "
                f"PUT /projects/<id>/cases/{image}/label, the consensus with POST .../consensus"
            )
    if not projects.store.any_open():
        return
    principal = await current_principal(request, token)
    for image, tag in reads:
        projects.check_read(image, tag, principal)
    for image, _tag in writes:
        projects.check_direct_save(image, principal)


def _session_image(services: Any, session_id: str) -> str | None:
    try:
        return services.interactive.manager.get(session_id).image_id
    except NotFoundError:
        return None  # the route answers 404 itself


async def _form_params(request: Request) -> dict[str, Any]:
    """The `params` form field (JSON) of a multipart request; FastAPI has parsed and cached the form already."""
    try:
        raw = (await request.form()).get("params")
        parsed = json.loads(raw) if isinstance(raw, str) else {}
    except (ValueError, UnicodeDecodeError, AssertionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}

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
    checks: list[tuple[str, str | None]] = []  # (image, tag) reads to check
    save_image: str | None = None
    if route in _READS and not (route == "/datastore/label" and method in ("PUT", "DELETE")):
        key, default_tag = _READS[route]
        image = params.get(key) or params.get("image")
        if image:
            checks.append((image, params.get("tag") or default_tag))
    if route == "/datastore/label" and method == "PUT":
        save_image = params.get("image")
    if route == "/interactive/sessions" and method == "POST":
        body = await _json_body(request)
        if body.get("from_label") and isinstance(body.get("image"), str):
            checks.append((body["image"], str(body["from_label"])))
    if not checks and save_image is None:
        return
    if not projects.store.any_open():
        return
    principal = await current_principal(request, token)
    for image, tag in checks:
        projects.check_read(image, tag, principal)
    if save_image:
        projects.check_direct_save(save_image, principal)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}

"""OHIF v3 (with its MONAI Label mode) at /ohif/, and the read-only DICOMweb proxy it expects beside it.

The OHIF build is the one inside the installed `monailabel` wheel (`monailabel/endpoints/static/ohif/`): it
cannot be built here and is never vendored into this repository. Its config asks for QIDO and WADO at
`/proxy/dicom/qido` and `/proxy/dicom/wado` on the page's own origin, so the server relays those to the
configured PACS (GET only; the PACS credentials come from the settings and never from the browser). Being
same-origin, OHIF needs no CORS at all. Two things are changed on the fly in `index.html`:

- the web-font links (fonts.googleapis.com) are dropped, and the same `@import`s from the stylesheets:
  offline, or behind a firewall that drops packets, the page would otherwise wait on that host;
- a one-line script points OHIF's MONAI Label client at this origin (its default is `<host>:8000`), unless
  the user already chose a server in its settings (the `MONAILABEL_SERVER_URL` cookie).
"""

from __future__ import annotations

import importlib.util
import logging
import mimetypes
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import requests
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse

from annotation_server.api.deps import get_services
from annotation_server.auth.dependencies import authorize
from annotation_server.dicomweb.client import PacsAuth
from annotation_server.errors import (
    AnnotationServerError,
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
    UpstreamUnavailableError,
)
from annotation_server.services import Services
from annotation_server.settings import Settings

logger = logging.getLogger(__name__)

OHIF_PATH = "/ohif"
INSTALL_HINT = "pip install --no-deps monailabel==0.8.5"
_FONT_LINK = re.compile(r"<link[^>]*fonts\.(?:googleapis|gstatic)\.com[^>]*>", re.IGNORECASE)
_FONT_IMPORT = re.compile(
    r"@import\s+url\(\s*['\"]?https?://fonts\.(?:googleapis|gstatic)\.com[^)]*\)\s*;?", re.IGNORECASE
)
_SAME_ORIGIN = (
    "<script>if(!/(^|;) ?MONAILABEL_SERVER_URL=[^;]/.test(document.cookie))"
    "document.cookie='MONAILABEL_SERVER_URL='+escape(location.origin+'/')+'; path=/';</script>"
)
# Request headers worth relaying to the PACS (Accept decides WADO's multipart/transfer syntax); never the
# browser's Authorization or cookies, which belong to this server.
_FORWARD_REQUEST = ("accept", "accept-encoding", "if-none-match", "if-modified-since")
_FORWARD_RESPONSE = ("content-type", "content-encoding", "content-length", "etag", "last-modified", "cache-control")
_CHUNK = 1 << 16


class OhifUnavailableError(AnnotationServerError):
    """`--ohif` was asked for but the installed `monailabel` package (which carries the OHIF build) is absent."""


def ohif_bundle_dir() -> Path | None:
    """The OHIF build inside the installed `monailabel` package, found without importing it (it is heavy)."""
    spec = importlib.util.find_spec("monailabel")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "endpoints" / "static" / "ohif"
        if (folder / "index.html").is_file():
            return folder
    return None


def require_ohif_bundle() -> Path:
    folder = ohif_bundle_dir()
    if folder is None:
        raise OhifUnavailableError(
            "OHIF v3 is served from the installed monailabel package, which is missing (or has no "
            f"endpoints/static/ohif/): install it with `{INSTALL_HINT}`, or start without --ohif"
        )
    return folder


@lru_cache(maxsize=4)
def _index_html(folder: Path) -> str:
    text = (folder / "index.html").read_text(encoding="utf-8")
    text = _FONT_LINK.sub("", text)
    return text.replace("<head>", "<head>" + _SAME_ORIGIN, 1)


@lru_cache(maxsize=16)
def _stylesheet_without_web_fonts(path: Path) -> str | None:
    """A stylesheet's text without its web-font `@import`s, or None when it has none (served as the file)."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text:
        return None
    return _FONT_IMPORT.sub("", text)


def _static_route(folder: Path) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    root = folder.resolve()

    @router.get(OHIF_PATH)
    def ohif_root() -> RedirectResponse:
        return RedirectResponse("ohif/")

    @router.get(OHIF_PATH + "/{path:path}")
    def ohif_file(path: str) -> Response:
        """A file of the build, else index.html (OHIF is a single-page app: /ohif/viewer?... is a route)."""
        candidate = (root / path).resolve() if path else root
        if path and candidate.is_relative_to(root) and candidate.is_file() and candidate.name != "index.html":
            if candidate.suffix == ".css":
                stripped = _stylesheet_without_web_fonts(candidate)
                if stripped is not None:
                    return Response(stripped.encode("utf-8", errors="surrogateescape"), media_type="text/css")
            media_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
            if candidate.suffix == ".wasm":
                media_type = "application/wasm"
            return FileResponse(candidate, media_type=media_type)
        return HTMLResponse(_index_html(root), headers={"Cache-Control": "no-cache"})

    return router


# ------------------------------------------------------------------------------------------ DICOMweb proxy
proxy_router = APIRouter(include_in_schema=False)


def _pacs_target(settings: Settings, path: str, query: str) -> str:
    if not settings.dicomweb_url:
        raise NotFoundError(
            "no PACS is configured, so there is no DICOMweb to proxy: start with --studies http://pacs/dicom-web "
            "(or ANNOTATE_DICOMWEB_URL)"
        )
    if ".." in path.split("/"):
        raise InvalidRequestError("'..' is not allowed in a DICOMweb path")
    url = f"{settings.dicomweb_url.rstrip('/')}/{path.lstrip('/')}"
    return f"{url}?{query}" if query else url


def _pacs_auth(settings: Settings) -> PacsAuth:
    return PacsAuth(
        username=settings.dicomweb_username,
        password=settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else None,
        token=settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None,
    )


def _relay(request: Request, services: Services, path: str) -> Response:
    """GET the PACS resource and stream its answer back unchanged (status, type, encoding, body)."""
    settings = services.settings
    url = _pacs_target(settings, path, request.url.query)
    session = requests.Session()
    _pacs_auth(settings).apply(session)
    headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARD_REQUEST}
    try:
        upstream = session.get(url, headers=headers, stream=True, timeout=settings.dicomweb_timeout_s)
    except (requests.ConnectionError, requests.Timeout) as exc:
        session.close()
        raise UpstreamUnavailableError(
            f"the PACS at {settings.dicomweb_url} cannot be reached ({type(exc).__name__}); check that it is running"
        ) from exc
    except requests.RequestException as exc:
        session.close()
        raise UpstreamError(f"the PACS at {settings.dicomweb_url} failed: {exc}") from exc

    def body() -> Iterator[bytes]:
        try:
            yield from upstream.raw.stream(_CHUNK, decode_content=False)
        finally:
            upstream.close()
            session.close()

    kept = {k: v for k, v in upstream.headers.items() if k.lower() in _FORWARD_RESPONSE}
    return StreamingResponse(body(), status_code=upstream.status_code, headers=kept)


@proxy_router.get("/proxy/dicom/{kind}/{path:path}")
def proxy_dicomweb(kind: str, path: str, request: Request, services: Services = Depends(get_services)) -> Response:
    """QIDO-RS and WADO-RS for OHIF, relayed to the configured PACS (read-only)."""
    if kind not in ("qido", "wado"):
        raise NotFoundError(f"unknown DICOMweb service '{kind}': this proxy relays /proxy/dicom/qido and /wado only")
    return _relay(request, services, path)


@proxy_router.api_route("/proxy/dicom/{rest:path}", methods=["POST", "PUT", "PATCH", "DELETE"])
def proxy_read_only(rest: str) -> Response:
    """Everything but reads is refused: the browser must not store into or delete from the PACS through us."""
    return Response(
        content=b'{"detail": "the DICOMweb proxy is read-only: only GET (QIDO-RS, WADO-RS) is relayed to the PACS"}',
        status_code=405,
        media_type="application/json",
        headers={"Allow": "GET"},
    )


def mount_ohif(app: FastAPI, settings: Settings) -> None:
    """Serve OHIF at /ohif/ and the DICOMweb proxy when `settings.ohif` is on (raises when OHIF is absent)."""
    if not settings.ohif:
        return
    folder = require_ohif_bundle()
    app.include_router(proxy_router, dependencies=[Depends(authorize)])  # patient data: the `user` role
    app.include_router(_static_route(folder))  # the viewer's code only, open like /viewer/
    if not settings.dicomweb_url:
        logger.warning("OHIF is served at /ohif/ but no PACS is configured: it will list no studies")
    logger.info("OHIF v3 from %s at %s/ with DICOMweb proxied to %s", folder, OHIF_PATH, settings.dicomweb_url)

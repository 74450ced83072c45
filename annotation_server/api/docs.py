"""`/docs` (Swagger UI) and `/redoc` (ReDoc) that work on a site without internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN: offline they stay blank, and online every visit
tells a third party that someone opened them. The script and style files here come from the fastapi-offline
wheel (Swagger UI and ReDoc dist files, MIT) and are served by the server itself under `/docs-assets/`.
ReDoc's bundle also draws a "powered by" logo from its vendor's CDN; the copy served here points it at the
local favicon instead, so the pages make no request beyond this server.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
PREFIX = "/docs-assets"
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@cache
def _redoc_js() -> bytes:
    return (ASSETS / "redoc.standalone.js").read_bytes().replace(_REDOC_LOGO, f"{PREFIX}/favicon.png".encode())


def install_offline_docs(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets to an app created with `docs_url=None, redoc_url=None`."""
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect,
            swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/favicon.png",
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{PREFIX}/favicon.png",
            with_google_fonts=False,
        )

    @app.get(f"{PREFIX}/redoc.standalone.js", include_in_schema=False)
    def redoc_js() -> Response:  # before the static mount, which would serve the unpatched file
        return Response(_redoc_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    app.mount(PREFIX, StaticFiles(directory=ASSETS), name="docs-assets")

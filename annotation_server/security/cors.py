"""CORS: off unless the site lists the browser origins that may call the API from another site.

The old default answered every Origin with credentials allowed, so any web page a logged-in annotator
visited could drive the API in their name. Now: no `ANNOTATE_CORS_ORIGINS`, no CORS headers at all (the
built-in viewer is same-origin and needs none); listed origins may send credentials; `*` allows any
origin but never with credentials (browsers then send no cookies or auth headers it did not set itself).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """Add CORS to `app` for `origins` (nothing when the list is empty)."""
    if not origins:
        return
    wildcard = "*" in origins
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"] if wildcard else [o.rstrip("/") for o in origins],
        allow_credentials=not wildcard,
        allow_methods=["*"],
        allow_headers=["*"],
    )

"""The browser viewer (`viewer_plugins/web/`) served as static files at /viewer/.

In a clone the files are read from `viewer_plugins/web/`; installed from a wheel they are the package
data of `annotation_viewer` (pyproject maps that package to the same folder). Without either, the
server runs without the viewer and says so in the log.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

logger = logging.getLogger(__name__)

VIEWER_PATH = "/viewer"
REPO_VIEWER = Path(__file__).resolve().parents[2] / "viewer_plugins" / "web"


def viewer_dir() -> Path | None:
    """The folder holding the viewer's index.html: the clone's, else the installed package's, else None."""
    candidates = [REPO_VIEWER]
    spec = importlib.util.find_spec("annotation_viewer")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent)
    return next((folder for folder in candidates if (folder / "index.html").is_file()), None)


def mount_viewer(app: FastAPI) -> None:
    """Serve the viewer at /viewer/ (call after every API route: a mount matches its whole prefix)."""
    folder = viewer_dir()
    if folder is None:
        logger.warning("browser viewer not found (viewer_plugins/web, annotation_viewer package): /viewer/ is off")
        return

    @app.get(VIEWER_PATH, include_in_schema=False)
    def viewer_root() -> RedirectResponse:
        return RedirectResponse("viewer/")  # relative: right behind a reverse proxy's path prefix too

    app.mount(VIEWER_PATH, StaticFiles(directory=folder, html=True), name="viewer")

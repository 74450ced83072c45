"""`/docs` (Swagger UI) and `/redoc` (ReDoc) render in headless Chromium with every non-loopback request aborted.

The pages' scripts and styles come from the fastapi-offline wheel, served by the server itself; a page that
still pointed at a CDN would stay blank here, as it does on a site without internet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import TEST_APP, free_port
from tests.test_web_viewer import ARGS, CHROMIUM

pytestmark = pytest.mark.slow  # a server and a browser


@pytest.fixture
def docs_server(studies: Path, tmp_path: Path) -> Iterator[str]:
    """The real ASGI app (tiny test models) under uvicorn on 127.0.0.1, in a thread."""
    import uvicorn

    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    settings = Settings(studies=studies, data_dir=tmp_path / "data", rescan_interval_s=0, model_sync_interval_s=0)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, TEST_APP), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_docs_pages_name_no_outside_host(docs_server: str) -> None:
    for path in ("/docs", "/redoc"):
        page = httpx.get(docs_server + path)
        assert page.status_code == 200
        assert "cdn." not in page.text and "fonts.googleapis" not in page.text, page.text
        assert "/docs-assets/" in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        answer = httpx.get(f"{docs_server}/docs-assets/{asset}")
        assert answer.status_code == 200 and len(answer.content) > 1000, asset
        assert b"cdn.redoc.ly" not in answer.content, asset


def test_swagger_ui_and_redoc_render_the_operations_with_no_network(docs_server: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    blocked: list[str] = []

    def only_loopback(route) -> None:  # type: ignore[no-untyped-def]
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.route("**/*", only_loopback)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            page.goto(f"{docs_server}/docs")
            page.wait_for_selector(".opblock-summary-path")
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert len(paths) > 40 and "/info/" in {p.strip().replace("\u200b", "") for p in paths}, paths[:10]
            assert page.locator(".swagger-ui .info .title").inner_text().startswith("annotation-server")

            page.goto(f"{docs_server}/redoc")
            page.wait_for_selector("[role=menuitem]")
            menu = " ".join(page.locator("[role=menuitem]").all_inner_texts())
            assert "Serve a version now (no restart)" in menu, menu[:500]
            assert page.locator("h1").first.inner_text().startswith("annotation-server")
            assert errors == [], errors
        finally:
            browser.close()
    assert blocked == [], blocked  # nothing even tried to leave the machine

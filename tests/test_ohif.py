"""OHIF v3 served at /ohif/ from the installed monailabel package, and its read-only DICOMweb proxy.

Fast checks with the in-process app; the real browser against Orthanc is `tests/test_ohif_browser.py`.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import TEST_APP
from fastapi.testclient import TestClient

from annotation_server.api import ohif
from annotation_server.server import create_app
from annotation_server.settings import Settings


@pytest.fixture
def bundle() -> Path:
    folder = ohif.ohif_bundle_dir()
    if folder is None:
        pytest.skip(f"monailabel is not installed ({ohif.INSTALL_HINT})")
    return folder


@pytest.fixture
def ohif_client(studies: Path, tmp_path: Path, bundle: Path) -> Iterator[TestClient]:
    settings = Settings(studies=studies, data_dir=tmp_path / "data", rescan_interval_s=0, ohif=True)
    with TestClient(create_app(settings, TEST_APP)) as client:
        yield client


def test_index_has_no_font_host_and_points_ohif_at_this_origin(ohif_client: TestClient, bundle: Path) -> None:
    original = (bundle / "index.html").read_text()
    assert "fonts.googleapis.com" in original  # what the rewrite is for
    for path in ("/ohif/", "/ohif/viewer?StudyInstanceUIDs=1.2.3", "/ohif/index.html"):
        answer = ohif_client.get(path)
        assert answer.status_code == 200, path
        assert "text/html" in answer.headers["content-type"]
        assert "fonts.googleapis.com" not in answer.text and "fonts.gstatic.com" not in answer.text
        assert "MONAILABEL_SERVER_URL" in answer.text and "location.origin" in answer.text
        assert "window.PUBLIC_URL = '/ohif/'" in answer.text
    assert ohif_client.get("/ohif", follow_redirects=False).headers["location"] == "ohif/"


def test_stylesheets_import_no_web_fonts(ohif_client: TestClient, bundle: Path) -> None:
    sheets = [p for p in bundle.glob("*.css") if "fonts.googleapis.com" in p.read_text(errors="ignore")]
    assert sheets, "the bundle's stylesheets import web fonts (what the rewrite is for)"
    for sheet in sheets:
        served = ohif_client.get(f"/ohif/{sheet.name}")
        assert served.status_code == 200 and served.headers["content-type"].startswith("text/css")
        assert "fonts.googleapis.com" not in served.text and "@import" not in served.text[:200]
        assert len(served.text) > len(sheet.read_text(errors="ignore")) - 400  # only the imports went


def test_static_files_and_no_escape_from_the_bundle(ohif_client: TestClient, bundle: Path) -> None:
    config = ohif_client.get("/ohif/app-config.js")
    assert config.status_code == 200 and config.content == (bundle / "app-config.js").read_bytes()
    assert "javascript" in config.headers["content-type"]
    wasm = next(bundle.glob("*.wasm"))
    assert ohif_client.get(f"/ohif/{wasm.name}").headers["content-type"] == "application/wasm"
    # a path out of the bundle falls back to the page, never to a file outside it
    for sneaky in ("/ohif/../../settings.py", "/ohif/%2e%2e/%2e%2e/__init__.py", "/ohif/..%2F..%2F__init__.py"):
        answer = ohif_client.get(sneaky)
        assert answer.status_code == 404 or answer.text.startswith("<!doctype html>"), sneaky


def test_proxy_is_read_only_and_needs_a_pacs(ohif_client: TestClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = ohif_client.request(method, "/proxy/dicom/wado/studies")
        assert answer.status_code == 405, method
        assert "read-only" in answer.json()["detail"]
    answer = ohif_client.get("/proxy/dicom/qido/studies")
    assert answer.status_code == 404 and "no PACS is configured" in answer.json()["detail"]
    assert ohif_client.get("/proxy/dicom/stow/studies").status_code == 404


def test_ohif_off_by_default(client: TestClient) -> None:
    assert client.get("/ohif/").status_code in (401, 404)
    assert client.get("/proxy/dicom/qido/studies").status_code == 404


def test_missing_bundle_names_the_install_command(
    studies: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ohif, "ohif_bundle_dir", lambda: None)
    settings = Settings(studies=studies, data_dir=tmp_path / "data", rescan_interval_s=0, ohif=True)
    with pytest.raises(ohif.OhifUnavailableError, match=r"pip install --no-deps monailabel==0\.8\.5"):
        create_app(settings, TEST_APP)


def test_ohif_setting_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANNOTATE_OHIF", "true")
    assert Settings().ohif is True


class _RecordingPacs(ThreadingHTTPServer):
    """A stand-in DICOMweb server on 127.0.0.1 that answers `[]` and remembers each request's headers."""

    seen: list[tuple[str, dict[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))  # type: ignore[attr-defined]
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Internal", "not relayed")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recording_pacs() -> Iterator[_RecordingPacs]:
    server = _RecordingPacs(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow  # starts a (stand-in) PACS server
def test_proxy_relays_reads_with_the_pacs_credentials_only(
    recording_pacs: _RecordingPacs, tmp_path: Path, bundle: Path
) -> None:
    url = f"http://127.0.0.1:{recording_pacs.server_address[1]}/dicom-web"
    settings = Settings(
        dicomweb_url=url,
        dicomweb_username="pacs-user",
        dicomweb_password="pacs-secret",
        data_dir=tmp_path / "data",
        rescan_interval_s=0,
        ohif=True,
    )
    with TestClient(create_app(settings, TEST_APP)) as client:
        recording_pacs.seen.clear()
        answer = client.get(
            "/proxy/dicom/qido/studies?PatientID=P1&includefield=00081030",
            headers={"Authorization": "Bearer browser-token", "Accept": "application/dicom+json", "Cookie": "a=b"},
        )
        assert answer.status_code == 200 and answer.json() == []
        assert answer.headers["content-type"] == "application/dicom+json" and "x-internal" not in answer.headers
        path, headers = recording_pacs.seen[-1]
        assert path == "/dicom-web/studies?PatientID=P1&includefield=00081030"
        expected = "Basic " + base64.b64encode(b"pacs-user:pacs-secret").decode()
        assert headers["authorization"] == expected  # the PACS's credentials, never the browser's token
        assert headers["accept"] == "application/dicom+json" and "cookie" not in headers
        assert client.get("/proxy/dicom/wado/studies/1.2/series/3.4/metadata").status_code == 200
        assert recording_pacs.seen[-1][0] == "/dicom-web/studies/1.2/series/3.4/metadata"
        assert client.get("/proxy/dicom/wado/studies/../../etc/passwd").status_code in (404, 422)

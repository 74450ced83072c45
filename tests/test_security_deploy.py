"""Secure defaults (issue #12, finding 6): CORS is off unless origins are listed, never `*` with credentials,
and a server with logins off refuses to listen beyond loopback unless told `--insecure-no-auth`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from annotation_server.security.exposure import InsecureBindError, check_exposure, is_loopback
from annotation_server.settings import Settings
from tests.conftest import TEST_APP, LiveServer

EVIL = "https://evil.example"
VIEWER = "https://viewer.example.org"
PREFLIGHT = {"Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "authorization"}


def _client(studies: Path, tmp_path: Path, **settings: object) -> TestClient:
    from annotation_server.server import create_app

    config = Settings(studies=studies, data_dir=tmp_path / "data", rescan_interval_s=0, **settings)
    return TestClient(create_app(config, TEST_APP))


@pytest.fixture
def default_client(studies: Path, tmp_path: Path) -> Iterator[TestClient]:
    with _client(studies, tmp_path) as client:
        yield client


def test_cors_is_off_by_default(default_client: TestClient) -> None:
    read = default_client.get("/info/", headers={"Origin": EVIL})
    assert read.status_code == 200
    assert "access-control-allow-origin" not in read.headers
    assert "access-control-allow-credentials" not in read.headers
    preflight = default_client.options("/datastore/label", headers={"Origin": EVIL, **PREFLIGHT})
    assert "access-control-allow-origin" not in preflight.headers


def test_listed_origins_only_and_with_credentials(studies: Path, tmp_path: Path) -> None:
    with _client(studies, tmp_path, cors_origins=f"{VIEWER}/, https://other.example") as client:
        allowed = client.options("/datastore/label", headers={"Origin": VIEWER, **PREFLIGHT})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == VIEWER
        assert allowed.headers["access-control-allow-credentials"] == "true"
        refused = client.options("/datastore/label", headers={"Origin": EVIL, **PREFLIGHT})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        read = client.get("/info/", headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in read.headers


def test_wildcard_never_allows_credentials(studies: Path, tmp_path: Path) -> None:
    with _client(studies, tmp_path, cors_origins=["*"]) as client:
        read = client.get("/info/", headers={"Origin": EVIL})
        assert read.headers["access-control-allow-origin"] == "*"  # not the caller's origin echoed back
        assert "access-control-allow-credentials" not in read.headers
        preflight = client.options("/datastore/label", headers={"Origin": EVIL, **PREFLIGHT})
        assert preflight.headers.get("access-control-allow-credentials") != "true"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("no-such-host.invalid", False)],
)  # fmt: skip
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_rules(tmp_path: Path) -> None:
    check_exposure(Settings(data_dir=tmp_path))  # default: loopback, auth off
    check_exposure(Settings(data_dir=tmp_path, host="0.0.0.0", auth_enabled=True))
    check_exposure(Settings(data_dir=tmp_path, host="0.0.0.0", insecure_no_auth=True))
    with pytest.raises(InsecureBindError, match="users add NAME --role admin"):
        check_exposure(Settings(data_dir=tmp_path, host="0.0.0.0"))


@pytest.mark.slow
def test_real_server_refuses_open_bind_without_auth_and_starts_when_told(studies: Path, tmp_path: Path) -> None:
    data = tmp_path / "server-data"
    refused = subprocess.run(
        [sys.executable, "-m", "annotation_server", "--studies", str(studies), "--data-dir", str(data),
         "--host", "0.0.0.0", "--port", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert "refusing to listen on 0.0.0.0 with logins off" in message
    assert "annotate-server users add NAME --role admin" in message and "--insecure-no-auth" in message
    assert not (data / "logs").exists()  # refused before anything was loaded or written

    server = LiveServer(
        ["--studies", str(studies), "--data-dir", str(data), "--insecure-no-auth"],
        env={"ANNOTATE_CORS_ORIGINS": VIEWER},
        host="0.0.0.0",
    )
    try:
        allowed = httpx.get(f"{server.url}/info/", headers={"Origin": VIEWER})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == VIEWER
        other = httpx.get(f"{server.url}/info/", headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in other.headers
    finally:
        output = server.stop()
    assert "listening on http://0.0.0.0" in output

"""Request limits act early: 413 from Content-Length or mid-stream, 408 for slow bodies, strict JSON (422)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TEST_APP


@pytest.fixture
def small_client(studies: Path, tmp_path: Path) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    settings = Settings(
        studies=studies, data_dir=tmp_path / "data", rescan_interval_s=0, max_upload_mb=1, max_json_kb=4
    )
    with TestClient(create_app(settings, TEST_APP)) as test_client:
        yield test_client


def test_json_body_over_the_limit_is_413(small_client) -> None:  # type: ignore[no-untyped-def]
    big = {"image": "phantom_a", "client_id": "x" * 8000}
    response = small_client.post("/interactive/sessions", json=big)
    assert response.status_code == 413
    assert "ANNOTATE_MAX_JSON_KB" in response.json()["detail"]
    assert small_client.post("/interactive/sessions", json={"image": "phantom_a"}).status_code == 200


def test_upload_over_the_limit_is_413_from_content_length(small_client) -> None:  # type: ignore[no-untyped-def]
    response = small_client.put("/datastore/label?image=phantom_a", files={"label": ("a.nii.gz", b"\0" * (3 << 20))})
    assert response.status_code == 413
    assert "ANNOTATE_MAX_UPLOAD_MB" in response.json()["detail"]


def test_streamed_upload_without_length_is_cut_at_the_limit(small_client) -> None:  # type: ignore[no-untyped-def]
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        boundary = b'--xyz\r\nContent-Disposition: form-data; name="label"; filename="a.nii.gz"\r\n\r\n'
        yield boundary
        for _ in range(64):
            sent += 1 << 16
            yield b"\0" * (1 << 16)
        yield b"\r\n--xyz--\r\n"

    response = small_client.put(
        "/datastore/label?image=phantom_a",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code == 413, response.text
    assert small_client.get("/datastore/label/versions?image=phantom_a").json()["versions"] == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('{"image": "phantom_a", "from_version": NaN}', "NaN"),
        ('{"image": "phantom_a", "from_version": Infinity}', "Infinity"),
        ('{"image": "phantom_a", "from_version": 1e400}', "finite"),
        ('{"image": "phantom_a", "from_version": ' + "9" * 5000 + "}", "digits"),
        ('{"image": "phantom_a", "from_version": 1180591620717411303424}', "64 bits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a":' * 40 + "1" + "}" * 40, "nested too deeply"),
        ('{"image": ', "not valid JSON"),
    ],
)
def test_hostile_json_bodies_are_422(small_client, body: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    from annotation_server.api.strict_json import loads

    with pytest.raises(Exception, match=needle):
        loads(body)
    if len(body) > 4000:  # over the test server's JSON limit: 413 before any parsing
        response = small_client.post(
            "/interactive/sessions", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        return
    response = small_client.post("/interactive/sessions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and needle in detail


@pytest.mark.parametrize(
    "params",
    [
        '{"foreground": [[NaN, 1, 1]]}',
        '{"foreground": [[1e400, 1, 1]]}',
        '{"foreground": [[Infinity, 1, 1]]}',
        '{"x": ' + "7" * 5000 + "}",
        '{"a":' * 5000 + "1" + "}" * 5000,
    ],
)
def test_hostile_params_form_fields_are_422(client, params: str) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/infer/cube?image=phantom_a&output=json", data={"params": params})
    assert response.status_code == 422, response.text
    assert "params" in response.json()["detail"]


# ------------------------------------------------------------------------------------- a real server
def _raw_request(port: int, head: bytes, body_parts: list[bytes], pause_s: float = 0.0) -> tuple[bytes, float]:
    """Send `head` and body parts over a socket; the answer and the seconds until it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        started = time.monotonic()
        sock.sendall(head)
        try:
            for part in body_parts:
                sock.sendall(part)
                if pause_s:
                    time.sleep(pause_s)
        except OSError:
            pass  # the server closed the connection after answering: read what it said
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"}" in answer:
                break
        return answer, time.monotonic() - started


@pytest.mark.slow
def test_live_server_refuses_early_and_times_out_slow_bodies(live_server, studies: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"ANNOTATE_MAX_UPLOAD_MB": "16", "ANNOTATE_BODY_TIMEOUT_S": "1.5", "ANNOTATE_RESCAN_INTERVAL_S": "0"}
    server = live_server("--app", "kidney", "--studies", str(studies), env=env)
    port = server.port
    # 1,000 MB announced: refused from the header, nothing of the body is read.
    head = (
        b"PUT /datastore/label?image=phantom_a HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1048576000\r\n\r\n"
    )
    answer, seconds = _raw_request(port, head, [])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert seconds < 2
    # Chunked (no length): cut as soon as 16 MB have passed, not after the 64 MB sent.
    head = (
        b"PUT /datastore/label?image=phantom_a HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"\0" * (1 << 20)
    opening = b'--b\r\nContent-Disposition: form-data; name="label"; filename="a.nii.gz"\r\n\r\n'
    parts = [f"{len(opening):x}\r\n".encode() + opening + b"\r\n"]
    parts += [f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(64)]
    answer, _ = _raw_request(port, head, parts)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # A body that trickles in: 408 once the body timeout has passed.
    body = json.dumps({"image": "phantom_a"}).encode()
    head = (
        b"POST /interactive/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    answer, seconds = _raw_request(port, head, [body[:3]], pause_s=4)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"ANNOTATE_BODY_TIMEOUT_S" in answer
    assert 1.4 < seconds < 4.5


HUGE = "1180591620717411303424"


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("get", f"/datastore/label?label=phantom_a&version={HUGE}", {}),
        ("get", f"/fl/queue?offset={HUGE}", {}),
        ("get", f"/fl/queue/{HUGE}", {}),
        ("post", f"/fl/queue/{HUGE}/approve", {"json": {}}),
        ("post", f"/fl/queue/{HUGE}/exclude", {"json": {}}),
        ("post", "/models/x/promote", {"json": {"version": int(HUGE)}}),
        ("post", "/models/x/rollback", {"json": {"to": int(HUGE)}}),
        ("put", f"/session/?expiry={HUGE}", {"files": {"files": ("a.nii.gz", b"x")}}),
        ("get", "/datastore/dataset?limit_cases=" + "9" * 5000, {}),
        ("post", "/interactive/sessions", {"json": {"image": "phantom_a", "from_version": 2**64}}),
    ],
)
def test_out_of_range_integers_are_422_with_a_sentence(client, method: str, url: str, kwargs: dict) -> None:  # type: ignore[no-untyped-def]
    if "json" in kwargs:  # send the huge integer verbatim (httpx would too; the server must not trust it)
        kwargs = {"content": json.dumps(kwargs["json"]), "headers": {"content-type": "application/json"}}
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == 422, (url, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and any(s in detail for s in ("less than or equal", "64 bits", "maximum size")), (
        detail
    )


def test_interactive_upload_unknown_params_and_bad_nifti_headers_are_422(client, sample_ct: Path) -> None:  # type: ignore[no-untyped-def]
    from test_input_files import nifti_header_only

    response = client.post(
        "/interactive/sessions/upload",
        files={"file": ("ct.nii.gz", sample_ct.read_bytes())},
        data={"params": json.dumps({"modle": "cube"})},
    )
    assert response.status_code == 422 and "modle" in response.json()["detail"], response.text
    for header, needle in (
        (nifti_header_only((4, 4, 4), dim0=9), "dim[0] = 9"),
        (nifti_header_only((30000,) * 3), "GiB"),
    ):
        response = client.put("/datastore/?image=bad", files={"file": ("bad.nii", header + b"\0" * 128)})
        assert response.status_code in (413, 422), response.text
        assert needle in response.json()["detail"]


def test_openapi_documents_the_real_error_shape(client) -> None:  # type: ignore[no-untyped-def]
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["Error"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    label_put = schema["paths"]["/datastore/label"]["put"]["responses"]
    assert {"413", "415", "422"} <= set(label_put)
    assert label_put["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    wrong = client.get("/datastore/label?label=phantom_a&version=zero")
    assert wrong.status_code == 422 and isinstance(wrong.json()["detail"], str)
    assert "query 'version'" in wrong.json()["detail"]

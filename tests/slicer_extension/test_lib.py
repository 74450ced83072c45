"""AnnotationServerLib without a Slicer: prompts the server's own models accept, RAS -> IJK, deltas, retries."""

from __future__ import annotations

import slicer_support  # noqa: F401  first: puts the module folder on sys.path, as Slicer does

# isort: split

import http.server
import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from AnnotationServerLib import AnnotationServerClient, ServerError, apply_delta, decode_delta
from AnnotationServerLib.delta import DeltaError
from AnnotationServerLib.prompts import (
    box_prompt,
    lasso_from_ras,
    lasso_prompt,
    point_prompt,
    ras_to_ijk,
    scribble_prompt,
)
from AnnotationServerLib.session import EffortClock, SessionBook
from pydantic import TypeAdapter

from annotation_server.interactive.delta import encode
from annotation_server.interactive.prompts import Prompt

PROMPT = TypeAdapter(Prompt)


def test_prompts_are_what_the_servers_models_accept() -> None:
    painted = np.array([[3, 4, 5], [3, 5, 5], [4, 5, 6]])
    for body in (
        point_prompt((1, 2, 3), positive=False, label="kidney", locked={"tumor"}),
        box_prompt((1, 2, 3), (7, 8, 3)),
        lasso_prompt(2, 4, [(1, 1), (5, 1), (5, 5)], positive=False),
        scribble_prompt(painted, label="tumor"),
    ):
        parsed = PROMPT.validate_python(body)  # extra="forbid": a misspelt key fails here
        assert parsed.type == body["type"]
    point = PROMPT.validate_python(point_prompt((1, 2, 3), False, "kidney", {"tumor"}))
    assert point.point == (1, 2, 3) and point.positive is False and point.locked_labels == ["tumor"]
    scribble = PROMPT.validate_python(scribble_prompt(painted))
    assert sorted(map(tuple, scribble.voxels().tolist())) == sorted(map(tuple, painted.tolist()))


@pytest.mark.parametrize("flip", [False, True], ids=["RAS", "LPS"])
def test_ras_to_ijk_inverts_the_volume_matrix(flip: bool) -> None:
    ijk_to_ras = np.diag([0.8, 0.8, 2.5, 1.0])
    if flip:
        ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras
    ijk_to_ras[:3, 3] = [-100, 40, 12]
    voxel = np.array([10, 20, 7])
    ras = (ijk_to_ras @ [*voxel, 1])[:3] + 0.3  # a little off the voxel centre
    assert ras_to_ijk(ijk_to_ras, ras, (64, 64, 16)) == tuple(voxel)
    with pytest.raises(ValueError, match="outside the image"):
        ras_to_ijk(ijk_to_ras, (ijk_to_ras @ [70, 0, 0, 1])[:3], (64, 64, 16))
    polygon = [(ijk_to_ras @ [i, j, 5, 1])[:3] for i, j in ((2, 2), (9, 2), (9, 9), (2, 9))]
    lasso = lasso_from_ras(ijk_to_ras, polygon, (64, 64, 16))
    assert (lasso["axis"], lasso["index"]) == (2, 5) and np.allclose(lasso["polygon"][1], (9, 2))


def test_deltas_decode_into_the_box_and_bad_ones_are_refused() -> None:
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    mask = np.zeros((8, 8, 8), np.uint8)
    delta = encode(values, (1, 2, 3))
    apply_delta(mask, delta)
    assert np.array_equal(mask[1:3, 2:5, 3:7], values) and mask.sum() == values.sum()
    assert decode_delta(delta).extent == (1, 2, 2, 4, 3, 6)
    assert decode_delta(None) is None
    with pytest.raises(DeltaError, match="update the Slicer extension"):
        decode_delta({**delta, "codec": "zstd"})
    with pytest.raises(DeltaError, match="holds 24 voxels, shape \\[2, 3, 5\\] needs 30"):
        decode_delta({**delta, "shape": [2, 3, 5]})


def test_session_book_follows_answers_and_the_effort_clock_skips_idle_time() -> None:
    now = [0.0]
    book = SessionBook.from_state(
        {"session_id": "s", "image": "a", "shape": [4, 4, 4], "labels": {"kidney": 1}, "label": "kidney", "model": None}
    )
    book.effort = EffortClock(idle_s=60, clock=lambda: now[0])
    for t, undo in ((0, False), (10, True), (500, False)):
        now[0] = t
        book.answered(
            {"session_id": "s", "version": 1, "can_undo": undo, "can_redo": False, "label": "kidney"}, "point"
        )
    assert book.can_undo is False and book.effort.interactions == 3 and book.effort.seconds == 70
    assert book.save_info()["seconds"] == 70
    with pytest.raises(ValueError, match="unknown label 'liver'"):
        book.lock("liver")


class _Busy(http.server.BaseHTTPRequestHandler):
    """Answers 503 + Retry-After to the first `busy` requests, then 200; 403 with a detail on /forbidden."""

    busy = 2
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        if self.path.startswith("/forbidden"):
            status, body, headers = 403, {"detail": "role 'admin' needed"}, {}
        elif type(self).seen <= type(self).busy:
            status, body, headers = 503, {"detail": "inference queue is full"}, {"Retry-After": "0.01"}
        else:
            status, body, headers = 200, {"name": "ok"}, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy_server() -> Iterator[str]:
    _Busy.seen = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_waits_as_retry_after_asks_and_explains_refusals(busy_server: str) -> None:
    waits: list[float] = []
    client = AnnotationServerClient(busy_server, retries=2, sleep=waits.append)
    assert client.info() == {"name": "ok"} and waits == [0.01, 0.01]
    _Busy.seen = 0
    impatient = AnnotationServerClient(busy_server, retries=0, sleep=waits.append)
    with pytest.raises(ServerError) as busy:
        impatient.info()
    assert busy.value.status == 503 and busy.value.retry_after_s == 0.01
    assert "inference queue is full" in str(busy.value) and "wait 0.01 s" in str(busy.value)
    with pytest.raises(ServerError) as forbidden:
        client.json("GET", "/forbidden")
    assert "role 'admin' needed" in str(forbidden.value) and "ask an admin" in str(forbidden.value)
    with pytest.raises(ServerError, match=r"cannot reach .* check the server URL"):
        AnnotationServerClient("http://127.0.0.1:9").info()

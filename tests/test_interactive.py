"""Interactive sessions: prompts, deltas a client can apply, undo/redo, objects, save, eviction, overload."""

from __future__ import annotations

import base64
import gzip
import io
import threading
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TEST_APP, CubeTask

from annotation_server.inference.task import InferResult
from annotation_server.interactive.delta import apply_delta


class Client:
    """What a viewer does: keeps its own copy of the mask and applies each delta it receives."""

    def __init__(self, http, image: str = "phantom_a", **options) -> None:  # type: ignore[no-untyped-def]
        self.http = http
        response = http.post("/interactive/sessions", json={"image": image, **options})
        assert response.status_code == 200, response.text
        self.state = response.json()
        self.id = self.state["session_id"]
        self.mask = np.zeros(self.state["shape"], dtype=np.uint8)

    def send(self, path: str, body: dict | None = None, status: int = 200) -> dict:
        response = self.http.post(f"/interactive/sessions/{self.id}/{path}", json=body)
        assert response.status_code == status, response.text
        answer = response.json()
        if status == 200:
            apply_delta(self.mask, answer["delta"])
        return answer

    def point(self, point, positive: bool = True, **extra) -> dict:  # type: ignore[no-untyped-def]
        return self.send(
            "prompt",
            {
                "prompt": {"type": "point", "point": list(point), "positive": positive, **extra.pop("prompt", {})},
                **extra,
            },
        )

    def server_mask(self) -> np.ndarray:
        response = self.http.get(f"/interactive/sessions/{self.id}/mask")
        assert response.status_code == 200
        return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(response.content)).dataobj)


def _cube(point: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    i, j, k = point
    mask[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2] = True
    return mask


def test_points_undo_redo_and_deltas_reproduce_the_server_mask(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    assert viewer.state["model"] == "cube" and viewer.state["label"] == "kidney"
    first = viewer.point((5, 5, 5))
    assert first["version"] == 1 and first["delta"]["codec"] == "zlib" and first["delta"]["shape"] == [3, 3, 3]
    assert np.array_equal(viewer.mask == 1, _cube((5, 5, 5), viewer.mask.shape))
    viewer.point((10, 8, 6))
    viewer.point((10, 8, 6), positive=False)  # a background click removes that voxel
    assert viewer.mask[10, 8, 6] == 0 and viewer.mask[5, 5, 5] == 1
    assert np.array_equal(viewer.mask, viewer.server_mask())
    undone = viewer.send("undo")
    assert undone["version"] == 2 and viewer.mask[10, 8, 6] == 1 and undone["can_redo"]
    viewer.send("undo")
    assert viewer.mask[10, 8, 6] == 0 and viewer.mask[5, 5, 5] == 1
    viewer.send("redo")
    assert viewer.mask[10, 8, 6] == 1
    assert np.array_equal(viewer.mask, viewer.server_mask())
    state = client.get(f"/interactive/sessions/{viewer.id}").json()
    assert state["object"]["foreground"] == [[5, 5, 5], [10, 8, 6]] and state["object"]["background"] == []


def test_new_prompt_after_undo_drops_the_redo_branch(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    viewer.point((5, 5, 5))
    viewer.send("undo")
    answer = viewer.point((12, 10, 6))
    assert not answer["can_redo"] and viewer.send("redo")["delta"] is None


def test_objects_stack_and_refining_one_restores_what_was_beneath(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    viewer.point((8, 8, 6))  # kidney cube
    viewer.point((9, 8, 6), prompt={"label": "tumor"})  # a tumor object overlapping the kidney
    assert viewer.mask[9, 8, 6] == 2 and viewer.mask[7, 8, 6] == 1
    viewer.point((9, 8, 6), positive=False, prompt={"label": "tumor"})  # shrink the tumor
    assert viewer.mask[9, 8, 6] == 1  # the kidney voxel comes back, not a hole
    viewer.point((15, 12, 8), new_object=True, prompt={"label": "tumor"})  # a second lesion
    assert viewer.mask[15, 12, 8] == 2 and viewer.mask[10, 8, 6] == 2  # the first tumor is kept
    assert np.array_equal(viewer.mask, viewer.server_mask())


def test_box_scribble_and_lasso(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    box = viewer.send("prompt", {"prompt": {"type": "box", "corners": [[4, 4, 4], [5, 9, 5]]}})
    filled = np.argwhere(viewer.mask > 0)
    assert (
        box["kind"] == "box" and filled.min(axis=0).tolist() >= [4, 4, 4] and filled.max(axis=0).tolist() <= [5, 9, 5]
    )
    strokes = np.zeros((1, 6, 1), dtype=np.uint8)
    strokes[0, :, 0] = 1
    data = base64.b64encode(zlib.compress(strokes.tobytes())).decode()
    viewer.send("prompt", {"prompt": {"type": "scribble", "offset": [12, 2, 6], "shape": [1, 6, 1], "data": data}})
    assert all(viewer.mask[12, j, 6] == 1 for j in range(2, 8))  # painted voxels are always in
    viewer.send(
        "prompt",
        {
            "prompt": {
                "type": "lasso",
                "axis": 2,
                "index": 10,
                "label": "tumor",
                "polygon": [[2, 2], [2, 8], [8, 8], [8, 2]],
            }
        },
    )
    assert viewer.mask[5, 5, 10] == 2 and viewer.mask[5, 5, 9] == 0
    viewer.send(
        "prompt",
        {
            "prompt": {
                "type": "lasso",
                "axis": 2,
                "index": 10,
                "positive": False,
                "polygon": [[2, 2], [2, 5], [5, 5], [5, 2]],
            }
        },
    )
    assert viewer.mask[3, 3, 10] == 0 and viewer.mask[7, 7, 10] == 2
    assert np.array_equal(viewer.mask, viewer.server_mask())


def test_reset_is_undoable(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    viewer.point((5, 5, 5))
    viewer.send("reset")
    assert viewer.mask.sum() == 0
    viewer.send("undo")
    assert viewer.mask.sum() == 27


def test_two_sessions_on_one_image_never_see_each_other(client) -> None:  # type: ignore[no-untyped-def]
    alice, bob = Client(client, client_id="alice"), Client(client, client_id="bob")
    alice.point((5, 5, 5))
    bob.point((15, 10, 8))
    assert alice.server_mask()[15, 10, 8] == 0 and bob.server_mask()[5, 5, 5] == 0
    assert client.post("/activelearning/first").json()["id"] == "phantom_b"  # phantom_a is open: skipped


def test_save_creates_a_label_version_with_effort(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client, client_id="alice")
    viewer.point((5, 5, 5))
    viewer.point((6, 5, 5))
    saved = client.post(f"/interactive/sessions/{viewer.id}/save", json={"info": {"seconds": 42}})
    assert saved.status_code == 200 and saved.json() == {"image": "phantom_a", "tag": "final", "version": 1}
    info = client.get("/datastore/label/info?label=phantom_a&tag=final").json()
    assert info["author"] == "alice" and info["interactions"] == 2 and info["seconds"] == 42
    assert info["source"]["model"] == "cube"
    label = client.get("/datastore/label?label=phantom_a&tag=final")
    assert np.array_equal(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(label.content)).dataobj), viewer.mask)


def test_upload_session_saves_under_a_new_image_id(client, sample_ct: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post(
        "/interactive/sessions/upload", files={"file": ("C:\\x\\scan.nii.gz", sample_ct.read_bytes())}
    )
    assert response.status_code == 200, response.text
    session_id = response.json()["session_id"]
    client.post(f"/interactive/sessions/{session_id}/prompt", json={"prompt": {"type": "point", "point": [60, 50, 10]}})
    assert client.post(f"/interactive/sessions/{session_id}/save", json={}).status_code == 409
    saved = client.post(f"/interactive/sessions/{session_id}/save", json={"image": "scan_upload"})
    assert saved.json()["image"] == "scan_upload"
    assert client.get("/datastore/").json()["completed"] == 1


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"prompt": {"type": "point", "point": [999, 1, 1]}}, 422, "outside the image"),
        ({"prompt": {"type": "point", "point": [1, 1, 1], "label": "liver"}}, 422, "unknown label"),
        ({"prompt": {"type": "point", "point": [1, 1, 1], "model": "nope"}}, 404, "available models"),
        ({"prompt": {"type": "point", "point": [1, 1, 1], "model": "threshold"}}, 422, "not a click model"),
        ({"prompt": {"type": "point", "point": [1, 1, 1], "positive": False}, "new_object": True}, 422, "foreground"),
        ({"prompt": {"type": "circle"}}, 422, None),
        ({"prompt": {"type": "scribble", "offset": [0, 0, 0], "shape": [2, 2, 2], "data": "@@"}}, 422, "base64"),
        ({"prompt": {"type": "lasso", "axis": 2, "index": 99, "polygon": [[0, 0], [0, 3], [3, 3]]}}, 422, "outside"),
    ],
)
def test_prompt_mistakes_are_4xx_and_keep_the_mask(client, body: dict, status: int, needle: str | None) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    viewer.point((5, 5, 5))
    answer = viewer.send("prompt", body, status=status)
    if needle:
        assert needle in str(answer["detail"])
    assert np.array_equal(viewer.server_mask(), viewer.mask)  # nothing lost
    assert client.get(f"/interactive/sessions/{viewer.id}").json()["version"] == 1


def test_unknown_session_and_image(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/interactive/sessions/nope/undo").status_code == 404
    assert client.post("/interactive/sessions", json={"image": "missing"}).status_code == 404
    assert client.post("/interactive/sessions", json={"image": "phantom_a", "label": "liver"}).status_code == 422


def test_eviction_spills_to_disk_and_restores_everything(tmp_path: Path, studies: Path) -> None:
    from fastapi.testclient import TestClient

    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    settings = Settings(studies=studies, data_dir=tmp_path / "d", rescan_interval_s=0, session_memory_mb=1)
    with TestClient(create_app(settings, TEST_APP)) as http:
        sessions = [Client(http, image=i) for i in ("sample_ct", "phantom_a", "sample_ct", "sample_ct")]
        for index, viewer in enumerate(sessions):
            viewer.point((5 + index, 5, 5))
        manager = http.app.state.services.interactive.manager
        assert manager.evictions >= 1  # three 0.37 MB masks (and a small one) do not fit in 1 MB
        for viewer in sessions:  # every one comes back intact, undo included
            assert np.array_equal(viewer.server_mask(), viewer.mask)
            viewer.send("undo")
            assert viewer.mask.sum() == 0
        assert manager.restores >= 1
        listing = http.get("/interactive/sessions").json()
        assert len(listing) == 4
        spilled = [s for s in listing if not s["in_memory"]]
        damaged = manager.spill_dir / f"{spilled[0]['session_id']}.pickle"
        damaged.write_bytes(b"not a session")
        response = http.post(f"/interactive/sessions/{spilled[0]['session_id']}/undo")
        assert response.status_code == 404 and "could not be restored" in response.json()["detail"]


class SlowCube(CubeTask):
    def __init__(self) -> None:
        super().__init__()
        self.name = "slow"

    def infer(self, volume, params):  # type: ignore[no-untyped-def]
        time.sleep(0.5)
        return super().infer(volume, params)


def test_overload_answers_503_with_retry_after_and_info_stays_fast(tmp_path: Path, studies: Path) -> None:
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import AppSpec
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    spec = AppSpec(name="slow", description="", labels={"kidney": 1}, models=[SlowCube()])
    settings = Settings(studies=studies, data_dir=tmp_path / "d", rescan_interval_s=0, infer_queue_size=2)
    with TestClient(create_app(settings, spec)) as http:
        viewers = [Client(http) for _ in range(6)]
        statuses: list[int] = []
        headers: list[dict] = []

        def click(viewer: Client) -> None:
            response = http.post(
                f"/interactive/sessions/{viewer.id}/prompt", json={"prompt": {"type": "point", "point": [5, 5, 5]}}
            )
            statuses.append(response.status_code)
            headers.append(dict(response.headers))

        threads = [threading.Thread(target=click, args=(v,)) for v in viewers]
        for thread in threads:
            thread.start()
        time.sleep(0.1)
        started = time.perf_counter()
        assert http.get("/info/").status_code == 200
        info_s = time.perf_counter() - started
        for thread in threads:
            thread.join()
        assert statuses.count(200) >= 2 and 503 in statuses
        assert all(h.get("retry-after") for s, h in zip(statuses, headers, strict=True) if s == 503)
        assert info_s < 0.4  # /info/ did not wait behind the 0.5 s inferences


def test_delta_is_small_for_a_local_edit(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client, image="sample_ct")
    answer = viewer.point((60, 50, 10))
    delta_bytes = len(base64.b64decode(answer["delta"]["data"]))
    full = io.BytesIO(client.get(f"/interactive/sessions/{viewer.id}/mask").content).getbuffer().nbytes
    assert delta_bytes < 0.1 * full


def test_image_deleted_on_disk_under_an_open_session_is_404(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client, image="phantom_b")
    viewer.point((5, 5, 5))
    client.app.state.services.inference.cache.clear()
    (studies / "phantom_b.nii.gz").unlink()
    response = client.post(
        f"/interactive/sessions/{viewer.id}/prompt", json={"prompt": {"type": "point", "point": [6, 6, 6]}}
    )
    assert response.status_code == 404 and "rescan" in response.json()["detail"]
    assert client.get("/info/").status_code == 200


def test_delta_covers_only_the_voxels_a_refinement_altered() -> None:
    """A click that moves one edge of a big object sends that edge's box, not the object's whole box."""
    from annotation_server.interactive.service import changed_voxels_box
    from annotation_server.interactive.session import Change

    box = (slice(10, 40), slice(5, 35), slice(0, 20))
    before = np.zeros((30, 30, 20), np.uint8)
    before[2:28, 2:28, 2:18] = 1
    after = before.copy()
    after[20:28, 2:10, 2:5] = 0  # a background click trimmed one corner
    tight = changed_voxels_box(Change(box, before, after, None, None, "point"))
    assert tight == (slice(30, 38), slice(7, 15), slice(2, 5))
    client = np.zeros((50, 50, 30), np.uint8)
    client[box] = before
    server = client.copy()
    server[box] = after
    client[tight] = server[tight]  # what apply_delta does with the answer
    assert np.array_equal(client, server)
    assert changed_voxels_box(Change(box, before, before.copy(), None, None, "point")) is None


class WobbleCube(CubeTask):
    """A click model whose re-prediction also wobbles a far corner: a 5^3 cube around the first foreground
    click, minus a 3^3 cube around each background click, and (once corrected) minus the far corner voxel."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "wobble"

    def infer(self, volume, params):  # type: ignore[no-untyped-def]
        mask = np.zeros(volume.array.shape, np.uint8)
        i, j, k = params.foreground[0]
        mask[i - 2 : i + 3, j - 2 : j + 3, k - 2 : k + 3] = 1
        for a, b, c in params.background:
            mask[a - 1 : a + 2, b - 1 : b + 2, c - 1 : c + 2] = 0
        if params.background:
            mask[i - 2, j - 2, k - 2] = 0  # the wobble: far from the correction, not asked for
        return InferResult(mask=mask, label_names={params.label or "kidney": 1})


@pytest.mark.parametrize("scope", ["local", "object"])
def test_a_correction_changes_only_the_region_connected_to_the_click(tmp_path: Path, studies: Path, scope: str) -> None:
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import AppSpec
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    spec = AppSpec(name="wobble", description="", labels={"kidney": 1}, models=[WobbleCube()])
    settings = Settings(studies=studies, data_dir=tmp_path / "d", rescan_interval_s=0)
    with TestClient(create_app(settings, spec)) as http:
        viewer = Client(http)
        viewer.point((8, 8, 8))
        first = viewer.mask.copy()
        assert first.sum() == 125
        viewer.point((10, 8, 8), positive=False, prompt={"scope": scope})  # trims the cube's +i face
        expected = first.copy()
        expected[9:11, 7:10, 7:10] = 0
        if scope == "object":
            expected[6, 6, 6] = 0  # the model's whole answer, wobble included
        assert np.array_equal(viewer.mask, expected)
        assert np.array_equal(viewer.server_mask(), expected)
        viewer.send("undo")
        assert np.array_equal(viewer.mask, first)


@pytest.mark.parametrize("scope", ["local", "object"])
def test_monai_label_infer_resending_all_clicks_corrects_like_a_session(
    tmp_path: Path, studies: Path, scope: str
) -> None:
    """MONAI Label's /infer is stateless (3D Slicer's MONAILabel module resends every click): the server
    remembers the answer to the clicks before the newest one, per image, model, label and user, and keeps
    only what the newest click asks for, as a session does. Another user's clicks do not share that memory."""
    import json

    from fastapi.testclient import TestClient

    from annotation_server.app_spec import AppSpec
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    spec = AppSpec(name="wobble", description="", labels={"kidney": 1}, models=[WobbleCube()])
    settings = Settings(studies=studies, data_dir=tmp_path / "d", rescan_interval_s=0)

    def infer(http, clicks: dict, client_id: str = "reader-1") -> np.ndarray:  # type: ignore[no-untyped-def]
        params = {**clicks, "client_id": client_id, "click_scope": scope}
        response = http.post("/infer/wobble?image=phantom_a&output=image", data={"params": json.dumps(params)})
        assert response.status_code == 200, response.text
        data = response.content
        return np.asarray(
            nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).dataobj
        )

    with TestClient(create_app(settings, spec)) as http:
        first = infer(http, {"foreground": [[8, 8, 8]]})
        assert first.sum() == 125
        corrected = infer(http, {"foreground": [[8, 8, 8]], "background": [[10, 8, 8]]})
        expected = first.copy()
        expected[9:11, 7:10, 7:10] = 0  # the asked-for trim of the +i face
        if scope == "object":
            expected[6, 6, 6] = 0  # the model's whole answer, wobble included
        assert np.array_equal(corrected, expected)
        # a user who never saw the first answer gets the model's whole answer to the same two clicks
        fresh = infer(http, {"foreground": [[8, 8, 8]], "background": [[10, 8, 8]]}, client_id="reader-2")
        assert fresh[6, 6, 6] == 0


def test_a_background_click_removes_only_what_lies_nearer_to_it_than_to_the_foreground_clicks() -> None:
    """The model answered a background click by dropping the whole +i half of the object; the foreground click
    vouches for the voxels nearer to it, so only the part nearer the background click goes."""
    from annotation_server.inference.click_memory import asked_change

    previous = np.zeros((30, 10, 10), bool)
    previous[2:28, 2:8, 2:8] = True
    answer = previous.copy()
    answer[10:28] = False  # the model's over-reaction
    foreground, background = (5, 5, 5), (25, 5, 5)
    merged = asked_change(previous, answer, background, positive=False, opposite=[foreground])
    assert merged is not None
    assert merged[2:15].sum() == previous[2:15].sum()  # voxels nearer the foreground click (i <= 15) stay
    assert not merged[16:28].any()  # those nearer the background click go
    assert asked_change(previous, answer, background, positive=False)[10:28].sum() == 0  # no foreground: all


def test_click_memory_is_bounded_in_entries_and_bytes() -> None:
    from annotation_server.inference.click_memory import ClickMemory

    memory = ClickMemory(max_entries=3, max_bytes=10 * 27)
    answer = np.zeros((10, 10, 10), np.uint8)
    answer[1:4, 1:4, 1:4] = 1  # 27 bytes remembered per answer
    for k in range(5):
        memory.correct(("img", k), [(2, 2, 2)], [], answer)
    assert len(memory) == 3
    big = np.ones((10, 10, 10), np.uint8)  # 1,000 bytes: over the whole budget, not remembered
    memory.correct(("img", "big"), [(2, 2, 2)], [], big)
    assert len(memory) == 3


def test_nearest_click_rule_holds_against_hundreds_of_clicks_of_the_other_kind() -> None:
    """The rule as the docstring states it, checked voxel by voxel against every opposite click on an
    anisotropic grid: a change is kept only where it lies no farther (in mm) from the click than from each
    of the 300 opposite clicks, and face-connected to the click."""
    from scipy import ndimage

    from annotation_server.inference.click_memory import asked_change

    rng = np.random.default_rng(7)
    previous = np.zeros((40, 30, 20), bool)
    previous[5:35, 5:25, 4:16] = True
    current = previous & (rng.random(previous.shape) > 0.02)
    current[15:35] = False  # the model's over-reaction to a background click
    click = (30, 15, 10)
    opposite = [tuple(int(v) for v in p) for p in rng.integers(0, (40, 30, 20), size=(300, 3))]
    spacing = (0.8, 0.8, 2.5)
    merged = asked_change(previous, current, click, positive=False, opposite=opposite, spacing=spacing)
    assert merged is not None
    scale = np.asarray(spacing)
    grid = np.stack(np.indices(previous.shape), axis=-1)

    def squared_mm(point: tuple[int, ...]) -> np.ndarray:
        return (((grid - np.asarray(point)) * scale) ** 2).sum(axis=-1)

    to_click = squared_mm(click)
    to_opposite = np.min([squared_mm(p) for p in opposite], axis=0)
    allowed = previous & ~current & (to_click <= to_opposite)
    parts, _ = ndimage.label(allowed, structure=ndimage.generate_binary_structure(3, 1))
    expected = np.where(parts == parts[click], current, previous)
    assert 0 < (merged != previous).sum() < (current != previous).sum()  # some of the change kept, not all
    np.testing.assert_array_equal(merged, expected)


def test_click_memory_holds_fixed_size_keys_whatever_a_client_sends() -> None:
    """A client may resend tens of thousands of clicks with each /infer: the memory's budget counts masks, so
    the keys must not grow with the clicks (8 entries of 20,000 clicks each held 23 MB before, 7 kB now)."""
    import tracemalloc

    from annotation_server.inference.click_memory import ClickMemory

    clicks = [(i % 10, (i // 10) % 10, (i // 100) % 10) for i in range(20_000)]
    answer = np.zeros((10, 10, 10), np.uint8)
    answer[1:4, 1:4, 1:4] = 1
    memory = ClickMemory(max_entries=8)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(8):
            memory.correct(("img", k), clicks, clicks, answer.copy())
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(memory) == 8
    assert held < 256 * 1024, f"the memory holds {held} bytes for 8 tiny answers"


def test_keep_change_at_click_lets_an_ignored_click_keep_the_models_answer() -> None:
    from annotation_server.interactive.session import ObjectState
    from annotation_server.interactive.tools import keep_change_at_click

    previous = np.zeros((20, 20, 20), bool)
    previous[5:10, 5:10, 5:10] = True
    box = (slice(5, 10), slice(5, 10), slice(5, 10))
    obj = ObjectState(label="kidney", value=1, box=box, mask=previous[box].copy())
    answer = previous.astype(np.uint8)
    answer[5, 5, 5] = 0  # a wobble far from the click
    search = keep_change_at_click(obj, answer, None, (9, 9, 9), positive=False)  # the clicked voxel did not change
    assert answer[5, 5, 5] == 0 and search == box
    answer[9, 9, 9] = 0  # now it did: only its own component of change stays
    keep_change_at_click(obj, answer, None, (9, 9, 9), positive=False)
    assert answer[5, 5, 5] == 1 and answer[9, 9, 9] == 0


def test_a_corrective_click_keeps_only_the_change_of_its_own_polarity() -> None:
    """A foreground click adds, a background click removes: the model's other change next to the asked-for
    region (here a slab it dropped, face-connected to the voxels it added) goes back to the previous mask."""
    from annotation_server.interactive.session import ObjectState
    from annotation_server.interactive.tools import keep_change_at_click

    previous = np.zeros((20, 20, 20), bool)
    previous[5:10, 5:10, 5:10] = True
    box = (slice(4, 12), slice(4, 12), slice(4, 12))
    obj = ObjectState(label="kidney", value=1, box=box, mask=previous[box].copy())
    answer = previous.astype(np.uint8)
    answer[10:12, 5:10, 5:10] = 1  # asked for: the missed part at the +i face
    answer[8:10, 5:10, 5:10] = 0  # not asked for: the model dropped the slab next to it
    keep_change_at_click(obj, answer, None, (11, 7, 7), positive=True)
    expected = previous.copy()
    expected[10:12, 5:10, 5:10] = True
    assert np.array_equal(answer.astype(bool), expected)

    answer = previous.astype(np.uint8)
    answer[5:7, 5:10, 5:10] = 0  # asked for: trim the -i face
    answer[4, 5:10, 5:10] = 1  # not asked for: and grow past it, touching the trimmed voxels
    keep_change_at_click(obj, answer, None, (5, 7, 7), positive=False)
    expected = previous.copy()
    expected[5:7, 5:10, 5:10] = False
    assert np.array_equal(answer.astype(bool), expected)


def test_a_session_can_start_from_a_saved_label_and_save_its_correction(client) -> None:  # type: ignore[no-untyped-def]
    first = Client(client)
    first.point((8, 8, 8))
    saved = client.post(f"/interactive/sessions/{first.id}/save", json={"tag": "final"}).json()
    assert saved["version"] == 1

    second = Client(client, from_label="final")
    assert second.state["started_from"] == {"tag": "final", "version": 1}
    assert np.array_equal(second.server_mask(), first.mask)  # the saved label, not an empty mask
    second.mask = second.server_mask()
    second.point((14, 8, 8), prompt={"label": "tumor"})  # a new object on top of the saved label
    assert second.mask[8, 8, 8] == 1 and second.mask[14, 8, 8] == 2
    second.send("undo")
    assert np.array_equal(second.mask, first.mask)  # undo goes back to the saved label, not to empty
    client.post(f"/interactive/sessions/{second.id}/redo")
    again = client.post(f"/interactive/sessions/{second.id}/save", json={"tag": "final"}).json()
    assert again["version"] == 2
    info = client.get("/datastore/label/info", params={"label": "phantom_a", "tag": "final"}).json()
    assert info["version"] == 2 and info["started_from"] == {"tag": "final", "version": 1}

    older = Client(client, from_label="final", from_version=1)
    assert older.server_mask()[14, 8, 8] == 0
    # A background click on the saved blob corrects it: the blob becomes the object being refined.
    older.mask = older.server_mask()
    older.point((9, 9, 9), positive=False)
    expected = first.mask.copy()
    expected[9, 9, 9] = 0
    assert np.array_equal(older.mask, expected) and np.array_equal(older.server_mask(), expected)
    assert client.get(f"/interactive/sessions/{older.id}").json()["object"]["foreground"] == [[8, 8, 8]]
    older.send("undo")
    assert np.array_equal(older.mask, first.mask)
    nowhere = {"prompt": {"type": "point", "point": [2, 2, 2], "positive": False}}
    away = client.post(f"/interactive/sessions/{older.id}/prompt", json=nowhere)
    assert away.status_code == 422 and "already has this label" in away.json()["detail"]  # nothing there to correct
    missing = client.post("/interactive/sessions", json={"image": "phantom_b", "from_label": "final"})
    assert missing.status_code == 404 and "phantom_b" in missing.json()["detail"]


def test_mask_box_is_the_bounding_box_of_the_nonzero_voxels_inside_the_search_box() -> None:
    from annotation_server.interactive.session import mask_box

    rng = np.random.default_rng(1)
    for _ in range(300):
        mask = rng.random(tuple(rng.integers(1, 12, 3))) < rng.random() * 0.05
        starts, sizes = rng.integers(0, 3, 3), rng.integers(1, 12, 3)
        within = tuple(slice(int(a), int(a + b)) for a, b in zip(starts, sizes, strict=True))
        for search in (None, within):
            region = mask[search] if search is not None else mask
            found = mask_box(mask, search)  # type: ignore[arg-type]
            if not region.any():
                assert found is None
                continue
            hits = np.argwhere(region)
            offset = [s.start for s in search] if search is not None else [0, 0, 0]
            extents = zip(offset, hits.min(0), hits.max(0), strict=True)
            expected = tuple(slice(o + lo, o + hi + 1) for o, lo, hi in extents)
            assert found == expected

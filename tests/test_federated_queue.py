"""The federated training queue: enqueue on every save path, effort measures, review, supersede, API, CLI, report."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TEST_APP
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from annotation_server.checksums import file_sha256
from annotation_server.datastore import LocalDatastore
from annotation_server.federated import FederatedConfig, FederatedQueue, QueueStatus, open_site_queue
from annotation_server.federated.cli import fl_app
from annotation_server.federated.effort import build_effort_report, period_of
from annotation_server.federated.entries import QueueEntry
from annotation_server.federated.preannotations import PreannotationStore
from annotation_server.federated.recorder import sync_with_datastore
from annotation_server.federated.site import attach_federated_queue


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _image(studies: Path, image_id: str) -> nib.Nifti1Image:
    return nib.load(str(studies / f"{image_id}.nii.gz"))


def _put_label(client, studies: Path, image_id: str, array: np.ndarray, **params) -> dict:  # type: ignore[no-untyped-def]
    """What a viewer does after correcting a label: PUT /datastore/label with the file and params."""
    buffer = io.BytesIO(gzip.compress(nib.Nifti1Image(array, _image(studies, image_id).affine).to_bytes()))
    response = client.put(
        f"/datastore/label?image={image_id}",
        files={"label": ("label.nii.gz", buffer, "application/octet-stream")},
        data={"params": json.dumps(params)},
    )
    assert response.status_code == 200, response.text
    return response.json()


def _infer_mask(client, image_id: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    response = client.post(
        f"/infer/threshold?image={image_id}&output=image", data={"params": json.dumps({"restore_label_idx": True})}
    )
    assert response.status_code == 200, response.text
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(response.content)).dataobj)


def _entries(client, **filters) -> dict:  # type: ignore[no-untyped-def]
    response = client.get("/fl/queue", params=filters)
    assert response.status_code == 200, response.text
    return response.json()


def _client(studies: Path, data_dir: Path, app=TEST_APP) -> TestClient:  # type: ignore[no-untyped-def]
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    settings = Settings(studies=studies, data_dir=data_dir, rescan_interval_s=0, max_upload_mb=4)
    return TestClient(create_app(settings, app))


@pytest.fixture
def reviewed_client(studies: Path, tmp_path: Path) -> Iterator[TestClient]:
    app = replace(TEST_APP, federated=FederatedConfig(review_required=True))
    with _client(studies, tmp_path / "data", app) as client:
        yield client


# ----------------------------------------------------------------------------------------------- save paths
def test_put_label_after_infer_is_queued_with_effort_against_the_model_output(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    pre = _infer_mask(client, "phantom_a")
    assert np.count_nonzero(pre) > 0
    final = pre.copy()
    final[5:7] = 0  # the annotator trims the model's object ...
    final[14:17, 2:5, 2:5] = 2  # ... and adds a lesion it missed
    _put_label(client, studies, "phantom_a", final.astype(np.uint8), client_id="alice", interactions=4, seconds=31.5)

    page = _entries(client)
    assert page["total"] == 1
    entry = page["entries"][0]
    assert entry["image_id"] == "phantom_a" and entry["label_version"] == 1 and entry["status"] == "eligible"
    assert entry["annotator"] == "alice" and entry["ai_assisted"] is True
    assert (entry["model"], entry["model_version"]) == ("threshold", "1")
    assert entry["dice"] == pytest.approx(_dice(pre, final), abs=1e-6)
    assert entry["voxels_changed"] == int(np.count_nonzero(pre != final))
    assert entry["labeled_voxels"] == int(np.count_nonzero(final))
    assert (entry["interactions"], entry["seconds"]) == (4, 31.5)


def test_put_label_without_a_model_output_is_manual(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    label = np.zeros(_image(studies, "phantom_b").shape, np.uint8)
    label[2:6, 2:6, 2:6] = 1
    _put_label(client, studies, "phantom_b", label, client_id="bob")
    (entry,) = _entries(client)["entries"]
    assert entry["ai_assisted"] is False and entry["dice"] is None and entry["model"] is None
    assert entry["labeled_voxels"] == int(np.count_nonzero(label))


def test_interactive_save_is_queued_against_the_sessions_first_model_result(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    shape = _image(studies, "phantom_b").shape
    opened = client.post("/interactive/sessions", json={"image": "phantom_b", "client_id": "carol"}).json()
    session = opened["session_id"]
    for point in ((5, 5, 5), (10, 8, 6)):
        prompt = {"prompt": {"type": "point", "point": list(point), "positive": True}}
        assert client.post(f"/interactive/sessions/{session}/prompt", json=prompt).status_code == 200
    saved = client.post(f"/interactive/sessions/{session}/save", json={"info": {"seconds": 12}})
    assert saved.status_code == 200, saved.text

    first = np.zeros(shape, np.uint8)  # the cube model's answer to the first click: the pre-annotation
    first[4:7, 4:7, 4:7] = 1
    final = first.copy()
    final[9:12, 7:10, 5:8] = 1
    (entry,) = _entries(client)["entries"]
    assert entry["annotator"] == "carol" and entry["ai_assisted"] is True and entry["model"] == "cube"
    assert entry["dice"] == pytest.approx(_dice(first, final), abs=1e-6)
    assert entry["voxels_changed"] == int(np.count_nonzero(first != final))
    assert (entry["interactions"], entry["seconds"]) == (2, 12.0)


def test_interactive_save_without_model_clicks_is_manual(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    _infer_mask(client, "phantom_a")  # an older model output for the image must not count for a hand-drawn label
    session = client.post("/interactive/sessions", json={"image": "phantom_a"}).json()["session_id"]
    lasso = {"prompt": {"type": "lasso", "axis": 2, "index": 4, "polygon": [[2, 2], [2, 8], [8, 8], [8, 2]]}}
    assert client.post(f"/interactive/sessions/{session}/prompt", json=lasso).status_code == 200
    assert client.post(f"/interactive/sessions/{session}/save", json={}).status_code == 200
    (entry,) = _entries(client)["entries"]
    assert entry["ai_assisted"] is False and entry["dice"] is None and entry["interactions"] == 1


def test_infer_with_save_label_queues_the_uncorrected_model_output(client) -> None:  # type: ignore[no-untyped-def]
    params = {"save_label": True, "label_tag": "final"}
    response = client.post("/infer/threshold?image=phantom_b&output=json", data={"params": json.dumps(params)})
    assert response.status_code == 200, response.text
    (entry,) = _entries(client)["entries"]
    assert entry["annotator"] == "model" and entry["ai_assisted"] is True
    assert entry["dice"] == 1.0 and entry["voxels_changed"] == 0
    # a label under another tag is not training material
    client.post("/infer/threshold?image=phantom_a&output=json", data={"params": json.dumps({"save_label": True})})
    assert _entries(client)["total"] == 1


# -------------------------------------------------------------------------------------- lifecycle rules
def test_resave_supersedes_and_only_the_newest_version_is_eligible(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    label = np.zeros(_image(studies, "phantom_a").shape, np.uint8)
    label[1:4, 1:4, 1:4] = 1
    _put_label(client, studies, "phantom_a", label)
    label[1:6, 1:4, 1:4] = 1
    _put_label(client, studies, "phantom_a", label)

    history = _entries(client, image="phantom_a")["entries"]
    assert [(e["label_version"], e["status"]) for e in history] == [(2, "eligible"), (1, "superseded")]
    assert "version 2" in history[1]["reason"]
    old = history[1]["id"]
    refused = client.post(f"/fl/queue/{old}/approve")
    assert refused.status_code == 409 and f"entry {history[0]['id']}" in refused.json()["detail"]

    datastore, queue = open_site_queue(studies)
    try:
        (eligible,) = queue.eligible()
        assert (eligible.image_id, eligible.label_version) == ("phantom_a", 2)
        label_file = datastore.label_file(datastore.label_version(eligible.image_id, "final", eligible.label_version))
        assert file_sha256(label_file) == eligible.label_sha256
        assert np.array_equal(np.asarray(nib.load(str(label_file)).dataobj), label)
        assert datastore.image_path(eligible.image_id).name == "phantom_a.nii.gz"
    finally:
        queue.close()
        datastore.close()


def test_review_required_keeps_entries_pending_until_approved(reviewed_client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    client = reviewed_client
    label = np.zeros(_image(studies, "phantom_a").shape, np.uint8)
    label[2:5, 2:5, 2:5] = 1
    _put_label(client, studies, "phantom_a", label)
    (entry,) = _entries(client)["entries"]
    assert entry["status"] == "pending_review"
    count = client.get("/fl/queue/count").json()
    assert count["review_required"] is True and count["by_status"]["pending_review"] == 1
    assert client.app.state.services.fl_queue.eligible() == []

    approved = client.post(f"/fl/queue/{entry['id']}/approve", json={"reviewer": "dr_who"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "eligible" and approved.json()["reviewer"] == "dr_who"
    assert [e.id for e in client.app.state.services.fl_queue.eligible()] == [entry["id"]]


def test_exclude_keeps_the_reason_and_removes_from_training(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    label = np.zeros(_image(studies, "phantom_b").shape, np.uint8)
    label[3:6, 3:6, 3:6] = 1
    _put_label(client, studies, "phantom_b", label)
    entry_id = _entries(client)["entries"][0]["id"]
    excluded = client.post(f"/fl/queue/{entry_id}/exclude", json={"reason": "tumor boundary wrong"})
    assert excluded.status_code == 200, excluded.text
    assert excluded.json()["status"] == "excluded" and excluded.json()["reason"] == "tumor boundary wrong"
    assert client.app.state.services.fl_queue.eligible() == []
    assert _entries(client, status="excluded")["total"] == 1 and _entries(client, status="eligible")["total"] == 0
    # re-admitting a mistaken exclusion
    assert client.post(f"/fl/queue/{entry_id}/approve").json()["status"] == "eligible"


def test_a_label_saved_after_an_exclusion_replaces_it_in_the_effort_report(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    label = np.zeros(_image(studies, "phantom_b").shape, np.uint8)
    label[3:6, 3:6, 3:6] = 1
    _put_label(client, studies, "phantom_b", label)
    entry_id = _entries(client)["entries"][0]["id"]
    assert client.post(f"/fl/queue/{entry_id}/exclude", json={"reason": "tumor boundary wrong"}).status_code == 200
    label[3:7, 3:6, 3:6] = 1
    _put_label(client, studies, "phantom_b", label)  # the annotator redoes it
    statuses = [e["status"] for e in _entries(client, image="phantom_b")["entries"]]
    assert statuses == ["eligible", "excluded"]  # the exclusion and its reason stay in the history ...
    current = client.app.state.services.fl_queue.current()
    assert [(e.image_id, e.label_version) for e in current] == [("phantom_b", 2)]  # ... but one image is one label
    assert client.get("/fl/effort").json()["labels"] == 1


def test_retiring_a_label_or_deleting_its_image_takes_it_out_of_the_queue_at_once(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    """While the server runs, /fl/queue never shows a retired label as eligible."""
    for image in ("phantom_a", "phantom_b"):
        label = np.zeros(_image(studies, image).shape, np.uint8)
        label[3:6, 3:6, 3:6] = 1
        _put_label(client, studies, image, label)
    assert _entries(client, status="eligible")["total"] == 2
    assert client.delete("/datastore/label", params={"id": "phantom_b", "tag": "final"}).status_code == 200
    assert client.delete("/datastore/image", params={"id": "phantom_a"}).status_code == 200
    assert _entries(client, status="eligible")["total"] == 0
    reasons = {e["image_id"]: e["reason"] for e in _entries(client, status="excluded")["entries"]}
    assert set(reasons) == {"phantom_a", "phantom_b"} and all("retired" in r for r in reasons.values())


def test_retired_label_is_excluded_when_the_site_job_opens_the_queue(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    label = np.zeros(_image(studies, "phantom_b").shape, np.uint8)
    label[3:6, 3:6, 3:6] = 1
    _put_label(client, studies, "phantom_b", label)
    assert client.delete("/datastore/label?id=phantom_b&tag=final").status_code == 200
    datastore, queue = open_site_queue(studies)
    try:
        assert queue.eligible() == []
        (entry,) = queue.list_entries()[1]
        assert entry.status is QueueStatus.excluded and "retired" in (entry.reason or "")
    finally:
        queue.close()
        datastore.close()


def test_a_site_reconciling_while_the_server_saves_keeps_the_new_label_eligible(
    studies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LocalDatastore(studies)
    site = LocalDatastore(studies)
    try:
        server.rescan()
        queue, preannotations = attach_federated_queue(server, FederatedConfig())
        shape = server.image_geometry("phantom_a").shape
        server.save_label_array("phantom_a", np.ones(shape, np.uint8), author="first")
        site_queue = FederatedQueue.in_state_dir(site.state_dir)
        saved: list[int] = []

        def then_the_server_saves(read):  # type: ignore[no-untyped-def]
            def wrapped():  # type: ignore[no-untyped-def]
                result = read()
                if not saved:  # a save lands between the site's reads of the queue and of the datastore
                    saved.append(server.save_label_array("phantom_a", np.zeros(shape, np.uint8)).version)
                return result

            return wrapped

        monkeypatch.setattr(site_queue, "latest_versions", then_the_server_saves(site_queue.latest_versions))
        monkeypatch.setattr(site.index, "all_heads", then_the_server_saves(site.index.all_heads))
        sync_with_datastore(site_queue, site)
        assert saved == [2]
        history = [(e.label_version, e.status) for e in queue.list_entries()[1]]
        assert history == [(2, QueueStatus.eligible), (1, QueueStatus.superseded)]
        site_queue.close()
        preannotations.close()
        queue.close()
    finally:
        site.close()
        server.close()


def test_labels_saved_before_the_queue_existed_are_backfilled(studies: Path) -> None:
    store = LocalDatastore(studies)
    try:
        store.rescan()
        shape = store.image_geometry("phantom_a").shape
        store.save_label_array("phantom_a", np.ones(shape, np.uint8), author="early", info={"seconds": 5})
        queue, preannotations = attach_federated_queue(store, FederatedConfig())
        (entry,) = queue.eligible()
        assert (entry.image_id, entry.annotator, entry.seconds, entry.ai_assisted) == ("phantom_a", "early", 5.0, False)
        store.save_label_array("phantom_a", np.zeros(shape, np.uint8), author="later")  # the hook is live now
        assert [e.annotator for e in queue.eligible()] == ["later"]
        preannotations.close()
        queue.close()
    finally:
        store.close()


def test_preannotations_round_trip_cropped_and_are_readable_before_the_write_lands(tmp_path: Path) -> None:
    store = PreannotationStore(tmp_path / "pre")
    mask = np.zeros((30, 20, 10), np.uint16)
    mask[10:14, 3:9, 2:4] = 300
    mask[20, 15, 8] = 2
    store.record("img", mask, "seg", "7")
    assert store.get("img") is not None  # from memory, whether or not the file exists yet
    store.flush()
    assert store.path("img").is_file()
    reread = PreannotationStore(tmp_path / "pre").get("img")
    assert reread is not None and (reread.model, reread.model_version) == ("seg", "7")
    assert reread.mask.dtype == mask.dtype and np.array_equal(reread.mask, mask)
    store.close()
    assert PreannotationStore(tmp_path / "pre").get("other") is None


# ------------------------------------------------------------------------------------------ listing, errors
def test_list_filters_paging_and_count(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    before = time.time()
    _infer_mask(client, "phantom_a")
    pre = _infer_mask(client, "phantom_a")
    _put_label(client, studies, "phantom_a", pre.astype(np.uint8), client_id="alice")
    label = np.zeros(_image(studies, "phantom_b").shape, np.uint8)
    label[1:3, 1:3, 1:3] = 1
    _put_label(client, studies, "phantom_b", label, client_id="bob")

    assert [e["annotator"] for e in _entries(client)["entries"]] == ["bob", "alice"]  # newest first
    assert [e["image_id"] for e in _entries(client, annotator="alice")["entries"]] == ["phantom_a"]
    assert _entries(client, model_version="1")["total"] == 1 and _entries(client, model_version="9")["total"] == 0
    assert _entries(client, since=before - 1)["total"] == 2
    assert _entries(client, since="2999-01-01T00:00:00")["total"] == 0
    page = _entries(client, limit=1, offset=1)
    assert page["total"] == 2 and [e["annotator"] for e in page["entries"]] == ["alice"]
    count = client.get("/fl/queue/count").json()
    assert count["total"] == 2 and count["by_status"]["eligible"] == 2 and count["by_status"]["excluded"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("post", "/fl/queue/999/approve", None, 404, "GET /fl/queue"),
        ("post", "/fl/queue/999/exclude", {"reason": "blurry"}, 404, "queue entry 999 not found"),
        ("get", "/fl/queue/999", None, 404, "not found"),
        ("post", "/fl/queue/abc/approve", None, 422, ""),
        ("post", "/fl/queue/1/exclude", {}, 422, "reason"),
        ("post", "/fl/queue/1/exclude", {"reason": ""}, 422, "reason"),
        ("get", "/fl/queue?status=done", None, 422, "status"),
        ("get", "/fl/queue?since=yesterday", None, 422, "since"),
        ("get", "/fl/queue?limit=0", None, 422, "limit"),
        ("get", "/fl/effort?bucket=month", None, 422, "bucket"),
    ],
)
def test_errors_say_what_to_do(client, method: str, path: str, body: dict | None, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    response = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])


# ---------------------------------------------------------------------------------------------- effort
def _entry(entry_id: int, ai: bool, seconds: float, clicks: int, dice: float | None, day: float, **extra) -> QueueEntry:  # type: ignore[no-untyped-def]
    return QueueEntry(
        id=entry_id,
        image_id=f"img{entry_id}",
        label_version=1,
        label_relpath="x",
        label_sha256="0",
        annotator="a",
        saved_ts=day,
        enqueued_ts=day,
        status=QueueStatus.eligible,
        ai_assisted=ai,
        dice=dice,
        seconds=seconds,
        interactions=clicks,
        voxels_changed=None if dice is None else entry_id * 100,
        **extra,
    )


def test_effort_report_compares_assisted_and_manual_labels_per_model_version_and_day() -> None:
    day1, day2 = 1_700_000_000.0, 1_700_000_000.0 + 86_400
    entries = [
        _entry(1, True, 40, 3, 0.9, day1, model="seg", model_version="1"),
        _entry(2, True, 60, 5, 0.7, day1, model="seg", model_version="1"),
        _entry(3, True, 20, 2, 0.95, day2, model="seg", model_version="2"),
        _entry(4, False, 300, 40, None, day1),
        _entry(5, False, 200, 30, None, day2),
    ]
    report = build_effort_report(entries, bucket="day")
    assisted = [e for e in entries if e.ai_assisted]
    manual = [e for e in entries if not e.ai_assisted]
    assert (report.labels, report.ai_assisted.count, report.manual.count) == (5, len(assisted), len(manual))
    assert report.ai_assisted.median_seconds == np.median([e.seconds for e in assisted])
    assert report.manual.median_interactions == np.median([e.interactions for e in manual])
    assert report.ai_assisted.median_dice == pytest.approx(np.median([e.dice for e in assisted]))
    assert report.manual.median_dice is None
    assert report.seconds_ratio == pytest.approx(report.ai_assisted.median_seconds / report.manual.median_seconds)
    rows = {(r.model_version, r.period): r for r in report.by_model_version}
    assert set(rows) == {("1", period_of(day1, "day")), ("2", period_of(day2, "day"))}
    assert rows[("1", period_of(day1, "day"))].count == 2
    assert rows[("1", period_of(day1, "day"))].median_seconds == np.median([40, 60])
    assert period_of(day1, "week").startswith("2023-W")


def test_effort_api_json_and_png(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    pre = _infer_mask(client, "phantom_a")
    _put_label(client, studies, "phantom_a", pre.astype(np.uint8), seconds=20, interactions=1)
    label = np.zeros(_image(studies, "phantom_b").shape, np.uint8)
    label[1:3, 1:3, 1:3] = 1
    _put_label(client, studies, "phantom_b", label, seconds=200)
    report = client.get("/fl/effort?bucket=day").json()
    assert report["labels"] == 2 and report["ai_assisted"]["count"] == 1 and report["manual"]["count"] == 1
    assert report["ai_assisted"]["median_dice"] == 1.0 and report["seconds_ratio"] == pytest.approx(20 / 200)
    assert [(r["model"], r["count"]) for r in report["by_model_version"]] == [("threshold", 1)]
    png = client.get("/fl/effort.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and len(png.content) > 10_000


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_list_count_exclude_approve_and_effort(client, studies: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pre = _infer_mask(client, "phantom_a")
    _put_label(client, studies, "phantom_a", pre.astype(np.uint8), client_id="alice", seconds=30)
    runner = CliRunner()
    where = ["--studies", str(studies)]

    listed = runner.invoke(fl_app, ["queue", "list", *where, "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)["entries"]
    assert entry["annotator"] == "alice" and entry["status"] == "eligible"
    table = runner.invoke(fl_app, ["queue", "list", *where, "--status", "eligible"])
    assert table.exit_code == 0 and "phantom_a" in table.output

    excluded = runner.invoke(fl_app, ["queue", "exclude", str(entry["id"]), *where, "--reason", "motion", "--json"])
    assert excluded.exit_code == 0, excluded.output
    assert json.loads(excluded.output)["reason"] == "motion"
    counted = runner.invoke(fl_app, ["queue", "count", *where, "--json"])
    assert json.loads(counted.output)["by_status"]["excluded"] == 1
    assert client.get("/fl/queue/count").json()["by_status"]["excluded"] == 1  # the server sees the CLI's change
    approved = runner.invoke(fl_app, ["queue", "approve", str(entry["id"]), *where])
    assert approved.exit_code == 0 and "approved" in approved.output

    missing = runner.invoke(fl_app, ["queue", "approve", "999", *where])
    assert missing.exit_code == 1 and "not found" in missing.output
    bad = runner.invoke(fl_app, ["queue", "list", "--studies", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "no federated queue" in bad.output

    out, plot = tmp_path / "report.json", tmp_path / "effort.png"
    effort = runner.invoke(fl_app, ["effort", *where, "--out", str(out), "--plot", str(plot), "--bucket", "day"])
    assert effort.exit_code == 0, effort.output
    report = json.loads(out.read_text())
    assert report["ai_assisted"]["count"] == 1 and report["ai_assisted"]["median_seconds"] == 30
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_fl_is_a_subcommand_of_annotate_server() -> None:
    from annotation_server.cli import cli

    result = CliRunner().invoke(cli, ["fl", "queue", "--help"])
    assert result.exit_code == 0 and "approve" in result.output and "exclude" in result.output


def test_queue_file_lives_beside_the_datastore_index(client, studies: Path) -> None:  # type: ignore[no-untyped-def]
    queue = client.app.state.services.fl_queue
    assert isinstance(queue, FederatedQueue)
    assert queue.path == (studies / ".annotation-server" / "fl_queue.sqlite").resolve()
    with sqlite3.connect(queue.path) as conn:  # WAL is a property of the file: the CLI and the job get it too
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

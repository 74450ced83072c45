"""Training jobs through the API: start, 429, status, progress stream, new version, stop, crash, bad input.

CI-sized: three small phantoms with `final` labels, a few optimizer steps. The training process is real
(a child `python -m annotation_server.learning.train_job`), so is its crash.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from annotation_server.app_spec import load_app
from annotation_server.phantoms import PhantomConfig, write_phantom_dataset
from annotation_server.server import create_app
from annotation_server.settings import Settings

FAST = {"steps": 3, "val_split": 0.1, "train_batch_size": 1, "threads": 1}


@pytest.fixture
def kidney_client(tmp_path: Path) -> Iterator[TestClient]:
    studies = tmp_path / "studies"
    write_phantom_dataset(studies, n=3, seed=11, config=PhantomConfig.easy())
    settings = Settings(studies=studies, data_dir=tmp_path / "data", rescan_interval_s=0, model_sync_interval_s=0)
    with TestClient(create_app(settings, load_app("kidney"))) as client:
        yield client


def wait_finished(client: TestClient, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get("/train/").json()
        if job["status"] in ("DONE", "ERROR", "STOPPED"):
            return job
        time.sleep(0.3)
    raise TimeoutError("training job did not finish")


def wait_step(client: TestClient, timeout_s: float = 120) -> dict:
    """Until the child reports its first progress event (it is really training)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get("/train/").json()
        if job.get("progress") or job["status"] != "RUNNING":
            return job
        time.sleep(0.2)
    raise TimeoutError("no progress from the training process")


@pytest.mark.slow
def test_train_job_makes_a_version_with_provenance_and_streams_progress(kidney_client: TestClient) -> None:
    client = kidney_client
    assert client.get("/train/").status_code == 404  # Slicer reads 404 as "no job"
    info = client.get("/info/").json()
    assert "kidney_seg" in info["trainers"] and info["server"]["serving_versions"]["kidney_seg"] == 1

    started = client.post("/train/kidney_seg", json={**FAST, "client_id": "user-xyz"})
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "RUNNING"
    again = client.post("/train/kidney_seg", json=FAST)
    assert again.status_code == 429 and "already running" in again.json()["detail"]
    assert client.get("/train/", params={"check_if_running": True}).status_code == 200
    assert client.get("/health").status_code == 200  # serving is not blocked by training

    job = wait_finished(client)
    assert job["status"] == "DONE", job
    assert job["progress"]["step"] == 3 and job["progress"]["total_steps"] == 3
    result = job["result"]
    version = result["version"]
    assert version["version"] == 2 and version["source"] == "training"
    trained_on = {entry["image"] for entry in version["provenance"]["labels"]}
    validated_on = {entry["image"] for entry in version["provenance"]["validation_labels"]}
    assert len(trained_on) == 2 and len(validated_on) == 1 and not trained_on & validated_on
    assert all(entry["label_version"] == 1 for entry in version["provenance"]["labels"])
    metrics = version["metrics"]
    assert result["gate"]["serving_dice"] == metrics["serving_val_dice"]
    # one held-out image is too few to decide on: kept as a candidate, and the job result says why
    assert result["gate"]["passed"] is False and result["promoted"] is False
    assert "only 1 validation image(s), the gate needs at least 5" in result["gate"]["reason"]
    assert (Path(version["path"]) / "training_curve.png").stat().st_size > 1000

    listing = client.get("/models/kidney_seg/versions").json()
    assert [v["version"] for v in listing["versions"]] == [1, 2]
    assert client.get("/info/").json()["server"]["serving_versions"]["kidney_seg"] == 1
    stats = client.get("/info/").json()["train_stats"]["kidney_seg"]
    assert stats["status"] == "DONE" and stats["total_steps"] == 3 and stats["version"] == 2

    with client.stream("GET", "/train/events") as stream:
        body = "".join(stream.iter_text())
    kinds = [line.split(": ", 1)[1] for line in body.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "started" and kinds.count("progress") == 3 and kinds[-2:] == ["result", "end"]
    end = json.loads(body.strip().splitlines()[-1].split(": ", 1)[1])
    assert end["status"] == "DONE"


@pytest.mark.slow
def test_stop_and_kill_leave_no_version_and_the_server_serving(kidney_client: TestClient) -> None:
    client = kidney_client
    slow = {**FAST, "steps": 500}
    assert client.post("/train/kidney_seg", json=slow).status_code == 200
    wait_step(client)
    stopped = client.delete("/train/")
    assert stopped.status_code == 200 and stopped.json()["status"] == "STOPPED"
    assert client.delete("/train/").json() is None  # nothing runs any more

    job = client.post("/train/kidney_seg", json=slow).json()
    wait_step(client)
    os.kill(job["pid"], signal.SIGKILL)  # a crash (OOM killer, segfault) as the server sees it
    crashed = wait_finished(client)
    assert crashed["status"] == "ERROR" and "killed by signal 9" in crashed["error"]
    assert crashed["log_file"] in crashed["error"]
    assert client.get("/info/").status_code == 200
    assert [v["version"] for v in client.get("/models/kidney_seg/versions").json()["versions"]] == [1]
    assert len(client.get("/train/", params={"all": True}).json()) == 2


@pytest.mark.slow
def test_bad_training_requests_are_4xx_with_reasons(kidney_client: TestClient) -> None:
    client = kidney_client
    unknown = client.post("/train/kidney_click_typo", json={})
    assert unknown.status_code == 404 and "trainable models: kidney_seg, kidney_click" in unknown.json()["detail"]
    bad = client.post("/train/kidney_seg", json={"max_epochs": -1})
    assert bad.status_code == 422 and "max_epochs" in bad.json()["detail"]
    not_object = client.post("/train/kidney_seg", json=[1, 2])
    assert not_object.status_code == 422
    assert client.get("/train/").status_code == 404  # none of these started a job
    for image in ("phantom_00000", "phantom_00001"):
        assert client.delete("/datastore/label", params={"id": image, "tag": "final"}).status_code == 200
    too_few = client.post("/train/kidney_seg", json=FAST)
    assert too_few.status_code == 422 and "at least 2 images" in too_few.json()["detail"]


@pytest.mark.slow
def test_click_model_fine_tunes_on_simulated_interactions_with_corrected_labels(tmp_path: Path) -> None:
    """The click model learns from clicks simulated on the site's labels; the gate decides with real numbers."""
    from annotation_models import bundle_path
    from annotation_server.datastore import LocalDatastore
    from annotation_server.learning.finetune import FineTuneParams, fine_tune, labeled_images
    from annotation_server.registry import ModelRegistry

    write_phantom_dataset(tmp_path / "studies", n=3, seed=5, config=PhantomConfig.easy())
    store = LocalDatastore(tmp_path / "studies")
    store.rescan()
    registry = ModelRegistry(tmp_path / "registry")
    registry.ensure_registered("kidney_click", bundle_path("kidney_click"))
    params = FineTuneParams(steps=2, val_split=0.1, train_batch_size=1, min_improvement=-1.0, min_val_images=1)
    outcome = fine_tune(dict(load_app("kidney").trainers), "kidney_click", labeled_images(store), registry, params)
    assert outcome.train_images == 2 and outcome.val_images == 1 and outcome.steps == 2
    assert 0.0 < outcome.gate.serving_dice <= 1.0 and 0.0 <= outcome.gate.candidate_dice <= 1.0
    assert outcome.promoted and registry.serving_number("kidney_click") == 2  # a gate that accepts any loss
    store.close()


def test_split_never_moves_a_training_image_into_validation_as_labels_arrive(tmp_path: Path) -> None:
    """The gate after a federated job re-splits a grown queue: what a version trained on stays out of validation."""
    from annotation_server.learning.finetune import LabeledImage, split

    def items(n: int) -> list[LabeledImage]:
        return [
            LabeledImage(image_id=f"case_{i:04d}", image=tmp_path, label=tmp_path, label_version=1, label_sha256="x")
            for i in range(n)
        ]

    trained_before = {i.image_id for i in split(items(10), 0.2)[0]}
    for n in (11, 20, 60, 200):
        train_ids, val_ids = ({i.image_id for i in side} for side in split(items(n), 0.2))
        assert not trained_before & val_ids
        assert train_ids and val_ids and 0.05 < len(val_ids) / n < 0.45
    assert [len(side) for side in split(items(2), 0.2)] == [1, 1]  # both sides kept non-empty

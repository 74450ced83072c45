"""Batch inference (`/batch/infer`, MONAI Label's shape) with the in-process app's tiny threshold model.

The same against a real Orthanc (results as SEGs in the PACS) is in tests/test_pacs_preannotation.py.
"""

from __future__ import annotations

import gzip
import io
import time

import nibabel as nib
import numpy as np


def wait_done(client, timeout_s: float = 60.0) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get("/batch/infer").json()
        if job["status"] not in ("SUBMITTED", "RUNNING"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"batch job still running: {job}")


def saved_original(client, image: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    answer = client.get(f"/datastore/label?label={image}&tag=original")
    assert answer.status_code == 200, answer.text
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(answer.content)).dataobj)


def test_batch_all_saves_originals_with_provenance(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/batch/infer").status_code == 404  # no job yet: MONAI Label's 404
    started = client.post("/batch/infer/threshold?images=all")
    assert started.status_code == 200, started.text
    assert started.json()["total"] == 3 and started.json()["status"] in ("SUBMITTED", "RUNNING", "DONE")
    job = wait_done(client)
    assert job["status"] == "DONE" and job["done"] == 3 and job["failed"] == 0, job
    assert set(job["images"]) == {"sample_ct", "phantom_a", "phantom_b"}
    assert all(p["status"] == "done" and p["label_version"] == 1 for p in job["images"].values())
    info = client.get("/datastore/label/info?label=phantom_a&tag=original").json()
    assert info["source"] == {"model": "threshold", "model_version": "1"}
    assert info["model_version"] == "1" and info["batch_job"] == job["id"]
    # the saved label is the model's answer on the image (values 42 above 50 HU), not just a file
    image = client.get("/datastore/image?image=phantom_a")
    volume = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(image.content)).dataobj)
    assert np.array_equal(saved_original(client, "phantom_a") == 42, volume > 50)
    assert client.get("/datastore/").json()["completed"] == 0  # originals are not final labels
    # a second run makes version 2, history kept
    client.post("/batch/infer/threshold", json={"images": ["phantom_b"]})
    assert wait_done(client)["images"]["phantom_b"]["label_version"] == 2
    assert len(client.get("/batch/infer?all=true").json()) == 2


def test_batch_unlabeled_and_list(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    label = np.zeros((20, 16, 12), np.uint8)
    label[5:8, 4:6, 3:5] = 1
    buffer = io.BytesIO(gzip.compress(nib.Nifti1Image(label, np.eye(4)).to_bytes()))
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 20]
    buffer = io.BytesIO(gzip.compress(nib.Nifti1Image(label, affine).to_bytes()))
    saved = client.put("/datastore/label?image=phantom_a&tag=final", files={"label": ("l.nii.gz", buffer)})
    assert saved.status_code == 200, saved.text
    client.post("/batch/infer/threshold?images=unlabeled")
    assert set(wait_done(client)["images"]) == {"sample_ct", "phantom_b"}
    client.post("/batch/infer/threshold?images=labeled")
    assert set(wait_done(client)["images"]) == {"phantom_a"}
    client.post("/batch/infer/threshold?images=phantom_b,sample_ct")
    assert set(wait_done(client)["images"]) == {"phantom_b", "sample_ct"}


def test_batch_client_mistakes_are_4xx(client) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ("/batch/infer/nope", None, 404, "available models"),
        ("/batch/infer/cube", None, 422, "automatic segmentation"),
        ("/batch/infer/threshold?images=some", None, 404, "not found"),
        ("/batch/infer/threshold?images=../../etc", None, 422, "invalid image id"),
        ("/batch/infer/threshold", {"images": []}, 422, "empty"),
        ("/batch/infer/threshold", ["x"], 422, "JSON object"),
        ("/batch/infer/threshold", {"max_batch_size": -1}, 422, "max_batch_size"),
    ]
    for url, body, status, needle in cases:
        answer = client.post(url, json=body)
        assert answer.status_code == status, (url, answer.text)
        assert needle in answer.json()["detail"], (url, answer.text)
    assert client.delete("/batch/infer").json() is None  # nothing runs
    assert client.get("/batch/infer?check_if_running=true").status_code == 404


def test_batch_busy_and_stop(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    from annotation_server.inference import batch as batch_module

    gate = threading.Event()
    real = batch_module.preannotate

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        gate.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_module, "preannotate", slow)
    assert client.post("/batch/infer/threshold").status_code == 200
    busy = client.post("/batch/infer/threshold")
    assert busy.status_code == 429 and "DELETE /batch/infer" in busy.json()["detail"]
    assert client.get("/batch/infer?check_if_running=true").json()["status"] in ("SUBMITTED", "RUNNING")
    stopped = client.delete("/batch/infer")
    assert stopped.json()["status"] == "STOPPED"
    gate.set()
    time.sleep(0.3)
    job = client.get("/batch/infer").json()
    assert job["status"] == "STOPPED" and job["done"] <= 1  # ends after the image in progress


THRESHOLD_APP = """
import numpy as np
from annotation_server.app_spec import AppSpec
from annotation_server.inference.task import InferResult, InferTask


class Threshold(InferTask):
    def __init__(self):
        super().__init__(name="threshold", type="segmentation", labels={"bright": 1}, description="test")

    def infer(self, volume, params):
        if volume.array.shape[0] != 20:  # only the phantoms: the sample CT fails, to test error reporting
            raise ValueError("not a phantom")
        return InferResult(mask=(volume.array > 50).astype(np.uint8), label_names={"bright": 1})


APP = AppSpec(name="cli_test", description="", labels={"bright": 1}, models=[Threshold()])
"""


def test_batch_cli_prints_the_job_and_fails_on_errors(studies, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from typer.testing import CliRunner

    from annotation_server.cli import cli

    app = tmp_path / "threshold_app.py"
    app.write_text(THRESHOLD_APP)
    common = ["--app", str(app), "--studies", str(studies), "--data-dir", str(tmp_path / "data")]
    result = CliRunner().invoke(cli, ["batch", "infer", "--model", "threshold", "--images", "phantom_a", *common])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout[result.stdout.index("{") :])
    assert job["status"] == "DONE" and job["images"]["phantom_a"]["label_version"] == 1
    assert (studies / "labels" / "original" / "phantom_a.nii.gz").is_file()  # MONAI Label's layout
    result = CliRunner().invoke(cli, ["batch", "infer", "--model", "threshold", "--images", "all", *common])
    assert result.exit_code == 1 and "failed: sample_ct: ValueError: not a phantom" in result.output
    job = json.loads(result.stdout[result.stdout.index("{") :])
    assert job["done"] == 3 and job["failed"] == 1 and job["images"]["phantom_a"]["label_version"] == 2
    result = CliRunner().invoke(cli, ["batch", "infer", "--model", "nope", *common])
    assert result.exit_code == 2 and "available models" in result.output

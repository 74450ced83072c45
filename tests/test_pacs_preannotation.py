"""Against a real Orthanc: the PACS watcher, batch inference as SEGs, the OHIF proxy, next sample, CORS.

One real `annotate-server` process (and one restart) over an Orthanc holding the 20-slice JPEG 2000 CT
(there before the watcher first runs: the baseline, left alone) and, stored while it runs, three copies of
the dcmqi 3-slice CT under new UIDs: one is pre-annotated at once, one fails once and is retried, one
fails every time and is reported. The model is a threshold (> 50 HU), so every SEG can be checked voxel by
voxel against the CT instances it references.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from conftest import free_port
from pacs import Orthanc, load_samples, require_orthanc
from pydicom.uid import generate_uid

from annotation_server.dicomweb.seg import decode_seg

pytestmark = [pytest.mark.slow, pytest.mark.needs_shared]

WATCH_APP = """
from pathlib import Path
import os
import numpy as np
from annotation_server.app_spec import AppSpec
from annotation_server.inference.task import InferResult, InferTask
from annotation_server.preannotation import PreannotationRules

LABELS = {"kidney": 1}


class Threshold(InferTask):
    '''Voxels above 50 HU. Series moved 1 km up fail once; 2 km up fail always (to test retries).'''

    def __init__(self):
        super().__init__(name="auto", type="segmentation", labels=LABELS, description="threshold", version="7")

    def infer(self, volume, params):
        z = float(volume.geometry.affine[2, 3])
        marker = Path(os.environ["FLAKY_DIR"]) / f"failed-{round(z)}"
        if z > 1500 or (z > 500 and not marker.exists()):
            marker.touch()
            raise RuntimeError(f"simulated model failure at z={z:.0f}")
        return InferResult(mask=(volume.array > 50).astype(np.uint8), label_names=LABELS)


APP = AppSpec(
    name="watch_test",
    description="threshold model, CT only",
    labels=LABELS,
    models=[Threshold()],
    preannotation=PreannotationRules(model="auto", modalities=("CT",)),
)
"""


def copy_series(datasets: list[pydicom.Dataset], name: str, dz: float = 0.0) -> list[pydicom.Dataset]:
    """The series under new Study/Series/SOP UIDs (a new arrival), optionally moved `dz` mm along z."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    copies = []
    for ds in datasets:
        new = copy.deepcopy(ds)
        new.StudyInstanceUID, new.SeriesInstanceUID, new.FrameOfReferenceUID = study, series, frame
        new.SOPInstanceUID = generate_uid()
        new.file_meta.MediaStorageSOPInstanceUID = new.SOPInstanceUID
        new.SeriesDescription = name
        new.ImagePositionPatient = [*map(float, ds.ImagePositionPatient[:2]), float(ds.ImagePositionPatient[2]) + dz]
        copies.append(new)
    return copies


def spatial(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def expected_threshold(datasets: list[pydicom.Dataset]) -> np.ndarray:
    """What the model must give, per CT instance in spatial order: HU > 50 on the instance's own pixels."""
    return np.stack(
        [(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)) > 50 for ds in spatial(datasets)]
    ).astype(np.uint8)


def segs_in_study(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """Every SEG instance the PACS holds for a study (read back with WADO-RS)."""
    found = httpx.get(
        f"{orthanc.dicomweb_url}/studies/{study_uid}/series", params={"Modality": "SEG"}, timeout=30
    ).json()
    segs = []
    for series in found or []:
        uid = series["0020000E"]["Value"][0]
        for instance in httpx.get(f"{orthanc.dicomweb_url}/studies/{study_uid}/series/{uid}/instances").json():
            sop = instance["00080018"]["Value"][0]
            raw = httpx.get(f"{orthanc.url}/instances/{_orthanc_id(orthanc, sop)}/file", timeout=30).content
            segs.append(pydicom.dcmread(io.BytesIO(raw)))
    return segs


def _orthanc_id(orthanc: Orthanc, sop_uid: str) -> str:
    return httpx.post(f"{orthanc.url}/tools/lookup", content=sop_uid, timeout=10).json()[0]["ID"]


def wait_for(condition, timeout_s: float = 90.0, what: str = "") -> object:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def watch_report(url: str) -> dict:
    answer = httpx.get(f"{url}/preannotation/", params={"limit": 100}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def series_state(report: dict, uid: str) -> dict | None:
    return next((s for s in report["series"] if s["uid"] == uid), None)


@pytest.fixture(scope="module")
def samples(shared_data: Path) -> dict[str, list[pydicom.Dataset]]:
    return load_samples(shared_data)


@pytest.fixture
def orthanc(tmp_path: Path, samples) -> Iterator[Orthanc]:  # type: ignore[no-untyped-def]
    require_orthanc()
    folder = tmp_path / "orthanc"
    folder.mkdir()
    server = Orthanc(folder, free_port())
    try:
        server.upload(samples["j2k"])
        yield server
    finally:
        server.stop()


def test_watcher_batch_proxy_next_sample_and_cors(orthanc: Orthanc, samples, live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = tmp_path / "watch_app.py"
    app.write_text(WATCH_APP)
    (tmp_path / "flaky").mkdir()
    env = {
        "ANNOTATE_WATCH_PACS": "true",
        "ANNOTATE_WATCH_INTERVAL_S": "0.5",
        "ANNOTATE_WATCH_RETRY_S": "0.5",
        "ANNOTATE_WATCH_MAX_ATTEMPTS": "3",
        "ANNOTATE_WATCH_SETTLE_S": "1.5",
        "ANNOTATE_RESCAN_INTERVAL_S": "0",
        "ANNOTATE_OHIF": "true",
        "ANNOTATE_CORS_ORIGINS": '["http://reading-room.example"]',
        "FLAKY_DIR": str(tmp_path / "flaky"),
    }
    args = ("--app", str(app), "--studies", orthanc.dicomweb_url)
    server = live_server(*args, env=env)
    j2k_uid = str(samples["j2k"][0].SeriesInstanceUID)

    # First poll: the series already in the PACS is the baseline, not pre-annotated.
    report = wait_for(lambda: (r := watch_report(server.url))["last_poll_ts"] and r, what="the first poll")
    assert report["counts"] == {"baseline": 1} and report["model"] == "auto", report

    # Three series arrive while it runs.
    fresh = copy_series(samples["ct3"], "arrives")
    flaky = copy_series(samples["ct3"], "fails once", dz=1000)
    broken = copy_series(samples["ct3"], "fails always", dz=2000)
    stored_at = time.monotonic()
    for series in (fresh, flaky, broken):
        orthanc.upload(series)
    uid = {name: str(s[0].SeriesInstanceUID) for name, s in (("fresh", fresh), ("flaky", flaky), ("broken", broken))}
    study = {name: str(s[0].StudyInstanceUID) for name, s in (("fresh", fresh), ("flaky", flaky), ("broken", broken))}

    def settled() -> dict | None:
        r = watch_report(server.url)
        states = [series_state(r, u) for u in uid.values()]
        return r if all(s and s["status"] in ("done", "failed") for s in states) else None

    report = wait_for(settled, what="the three new series to be done or failed")
    arrival_to_seg_s = time.monotonic() - stored_at
    done, retried, failed = (series_state(report, uid[n]) for n in ("fresh", "flaky", "broken"))
    assert done["status"] == "done" and done["attempts"] == 1 and done["dicom_seg"] == "stored", done
    assert retried["status"] == "done" and retried["attempts"] == 2, retried
    assert "simulated model failure" in retried["error"]  # the failure before the retry is kept
    assert failed["status"] == "failed" and failed["attempts"] == 3 and "z=" in failed["error"], failed
    assert report["backlog"] == 0 and report["counts"]["baseline"] == 1
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert "annotation_preannotation_backlog 0.0" in metrics

    # Exactly one SEG per pre-annotated series, AUTOMATIC, by the model and version, voxel for voxel the threshold.
    for name, series in (("fresh", fresh), ("flaky", flaky)):
        segs = segs_in_study(orthanc, study[name])
        assert len(segs) == 1, (name, len(segs))
        seg = segs[0]
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid[name]
        segment = seg.SegmentSequence[0]
        assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentLabel == "kidney"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "auto" and algorithm.AlgorithmVersion == "7"
        frames = decode_seg(seg, [str(ds.SOPInstanceUID) for ds in spatial(series)])
        np.testing.assert_array_equal(frames, expected_threshold(series))
    assert segs_in_study(orthanc, study["broken"]) == []
    assert segs_in_study(orthanc, str(samples["j2k"][0].StudyInstanceUID)) == []  # the baseline is left alone
    info = httpx.get(f"{server.url}/datastore/label/info", params={"label": uid["fresh"], "tag": "original"}).json()
    assert info["source"] == {"model": "auto", "model_version": "7"} and info["trigger"] == "pacs-watcher"
    server.stop()
    log = (tmp_path / "server-data" / "logs" / "server.log").read_text()
    for name in ("fresh", "flaky"):
        assert sum(f"series {uid[name]} done with auto" in line for line in log.splitlines()) == 1, log[-3000:]
    assert f"series {uid['flaky']} failed (attempt 1 of 3), retry in" in log
    assert f"series {uid['broken']} FAILED after 3 attempts" in log

    # A restart does not redo anything: same SEGs, same label versions, after several polls.
    server = live_server(*args, env=env)
    first = wait_for(lambda: watch_report(server.url)["last_poll_ts"], what="a poll after the restart")
    wait_for(lambda: (watch_report(server.url)["last_poll_ts"] or 0) > first + 1.0, what="later polls")
    for name in ("fresh", "flaky"):
        assert len(segs_in_study(orthanc, study[name])) == 1, name
    versions = httpx.get(f"{server.url}/datastore/label/versions", params={"image": uid["fresh"]}).json()["versions"]
    assert [v["version"] for v in versions if v["tag"] == "original"] == [1]

    # Batch inference on the baseline series: an `original` version and a SEG in the PACS.
    started = time.monotonic()
    job = httpx.post(f"{server.url}/batch/infer/auto", json={"images": [j2k_uid]}, timeout=30)
    assert job.status_code == 200, job.text
    job = wait_for(
        lambda: (j := httpx.get(f"{server.url}/batch/infer", timeout=30).json())["status"] == "DONE" and j,
        what="the batch job",
    )
    batch_s = time.monotonic() - started
    assert job["images"][j2k_uid]["status"] == "done" and job["images"][j2k_uid]["dicom_seg"] == "stored", job
    segs = segs_in_study(orthanc, str(samples["j2k"][0].StudyInstanceUID))
    assert len(segs) == 1 and segs[0].SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    j2k_sops = [str(ds.SOPInstanceUID) for ds in spatial(samples["j2k"])]
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for ref in segs[0].ReferencedSeriesSequence
        for item in ref.ReferencedInstanceSequence
    }
    assert referenced == set(j2k_sops), (len(referenced), len(j2k_sops))
    np.testing.assert_array_equal(decode_seg(segs[0], j2k_sops), expected_threshold(samples["j2k"]))

    # An annotator starts from the pre-annotation; the saved final label's effort is measured against it.
    opened = httpx.post(
        f"{server.url}/interactive/sessions",
        json={"image": uid["fresh"], "from_label": "original", "client_id": "ann"},
        timeout=60,
    )
    assert opened.status_code == 200, opened.text
    session = opened.json()["session_id"]
    lasso = {"type": "lasso", "axis": 2, "index": 1, "polygon": [[10, 10], [10, 60], [60, 60], [60, 10]]}
    prompt = httpx.post(f"{server.url}/interactive/sessions/{session}/prompt", json={"prompt": lasso}, timeout=60)
    assert prompt.status_code == 200, prompt.text
    saved = httpx.post(f"{server.url}/interactive/sessions/{session}/save", json={"tag": "final"}, timeout=60)
    assert saved.status_code == 200, saved.text
    entry = httpx.get(f"{server.url}/fl/queue", params={"image": uid["fresh"]}, timeout=30).json()
    entry = (entry.get("entries") if isinstance(entry, dict) else entry)[0]
    pre = expected_threshold(fresh)
    assert entry["ai_assisted"] and entry["model"] == "auto" and entry["model_version"] == "7", entry
    assert 0 < entry["voxels_changed"] <= 51 * 51 and entry["dice"] is not None and 0.5 < entry["dice"] < 1.0, entry
    assert entry["labeled_voxels"] >= int(pre.sum())

    # The OHIF proxy: QIDO and WADO relayed from the PACS, read-only.
    qido = httpx.get(f"{server.url}/proxy/dicom/qido/studies", params={"StudyInstanceUID": study["fresh"]})
    assert qido.status_code == 200 and qido.headers["content-type"].startswith("application/dicom+json")
    assert qido.json()[0]["0020000D"]["Value"] == [study["fresh"]]
    metadata = httpx.get(f"{server.url}/proxy/dicom/wado/studies/{study['fresh']}/series/{uid['fresh']}/metadata")
    assert metadata.status_code == 200 and len(metadata.json()) == 3
    sop = str(fresh[0].SOPInstanceUID)
    frame = httpx.get(
        f"{server.url}/proxy/dicom/wado/studies/{study['fresh']}/series/{uid['fresh']}/instances/{sop}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    assert frame.status_code == 200 and frame.headers["content-type"].startswith("multipart/related")
    assert fresh[0].PixelData in frame.content  # the instance's own pixel bytes, relayed unchanged
    before = len(segs_in_study(orthanc, study["fresh"]))
    assert before == 2  # the model's `original` and the annotator's `final`
    assert httpx.post(f"{server.url}/proxy/dicom/wado/studies", content=b"x").status_code == 405
    assert httpx.delete(f"{server.url}/proxy/dicom/qido/studies/{study['fresh']}").status_code == 405
    assert len(segs_in_study(orthanc, study["fresh"])) == before

    # Next sample (OHIF's dialog and page reload need StudyInstanceUID and StudyTime).
    picked = httpx.post(f"{server.url}/activelearning/random", json={}, timeout=30).json()
    assert picked["StudyInstanceUID"] and "StudyTime" in picked, picked
    chosen = next(s for s in (fresh, flaky, broken, samples["j2k"]) if str(s[0].SeriesInstanceUID) == picked["id"])
    assert picked["StudyInstanceUID"] == str(chosen[0].StudyInstanceUID)
    assert picked["StudyTime"] == str(chosen[0].get("StudyTime", ""))

    # CORS: a preflight is answered for the configured origin only (OHIF itself is same-origin).
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = httpx.options(
        f"{server.url}/activelearning/random", headers={**preflight, "Origin": "http://reading-room.example"}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://reading-room.example"
    other = httpx.options(f"{server.url}/activelearning/random", headers={**preflight, "Origin": "http://evil.example"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    print(
        json.dumps(
            {"arrival_to_settled_s": round(arrival_to_seg_s, 2), "batch_one_series_s": round(batch_s, 2)}, indent=None
        )
    )

"""The DICOMweb datastore against a real Orthanc PACS, and DICOM SEG output (OHIF's MONAI Label plugin path).

Uses the real samples in ../shared/data: the dcmqi 3-slice CT (with its liver SEG, which must not be
listed as an image) and the 20-slice JPEG 2000 TotalSegmentator CT whose blanked UIDs are repaired
before upload.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
from conftest import free_port
from dicomweb_client.api import DICOMwebClient
from pacs import Orthanc, load_samples, require_orthanc

from annotation_server.dicomweb.client import PacsAuth, PacsClient
from annotation_server.dicomweb.seg import SEG_SOP_CLASS_UID, decode_seg
from annotation_server.errors import UpstreamError, UpstreamUnavailableError


@pytest.fixture(scope="session")
def samples(shared_data: Path) -> dict[str, list[pydicom.Dataset]]:
    return load_samples(shared_data)


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory: pytest.TempPathFactory, samples) -> Iterator[Orthanc]:  # type: ignore[no-untyped-def]
    require_orthanc()
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), free_port())
    try:
        for group in samples.values():
            server.upload(group)
        yield server
    finally:
        server.stop()


@pytest.fixture
def orthanc(orthanc_server: Orthanc, samples) -> Orthanc:  # type: ignore[no-untyped-def]
    """The session's Orthanc, running, without the SEGs earlier tests wrote (the sample liver SEG is kept)."""
    if orthanc_server.process is None:
        orthanc_server.start()
    orthanc_server.delete_modality("SEG")
    orthanc_server.upload(samples["liver_seg"])
    return orthanc_server


# The kidney app's labels with only its classic click tool: a server that starts in seconds (no UNets to load).
LIGHT_APP = """
from annotation_server.app_spec import AppSpec
from annotation_server.inference.region_growing_task import RegionGrowingTask
from annotation_server.tools.region_growing import RegionGrowingConfig

LABELS = {"kidney": 1, "tumor": 2, "cyst": 3}
APP = AppSpec(
    name="pacs_test",
    description="kidney labels, region growing only",
    labels=LABELS,
    models=[RegionGrowingTask(name="region_growing", labels=LABELS, config=RegionGrowingConfig(), description="")],
)
"""


@pytest.fixture
def pacs_server(orthanc: Orthanc, live_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real `annotate-server` process whose studies are the Orthanc PACS."""
    app = tmp_path / "pacs_app.py"
    app.write_text(LIGHT_APP)
    return live_server("--app", str(app), "--studies", orthanc.dicomweb_url, env={"ANNOTATE_RESCAN_INTERVAL_S": "0"})


def series_uid(datasets: list[pydicom.Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


def spatial_uids(datasets: list[pydicom.Dataset]) -> list[str]:
    """SOPInstanceUIDs ordered along the slice normal (the volume's k axis)."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ordered = sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))
    return [str(ds.SOPInstanceUID) for ds in ordered]


def label_upload(
    server_url: str, image: str, values: dict[int, tuple[slice, slice, int]], tmp: Path
) -> tuple[np.ndarray, np.ndarray]:
    """A labelmap on the image's grid (read from the server's NIfTI download) with boxes on given slices."""
    download = httpx.get(f"{server_url}/datastore/image", params={"image": image}, timeout=60)
    assert download.status_code == 200, download.text
    image_file = tmp / "image.nii.gz"
    image_file.write_bytes(download.content)
    reference = nib.load(str(image_file))
    mask = np.zeros(reference.shape, np.uint8)
    for value, (rows, cols, k) in values.items():
        mask[cols, rows, k] = value
    return mask, reference.affine


def put_label(server_url: str, image: str, mask: np.ndarray, affine: np.ndarray, tmp: Path) -> httpx.Response:
    path = tmp / "label.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), str(path))
    with path.open("rb") as fh:
        return httpx.put(
            f"{server_url}/datastore/label",
            params={"image": image, "tag": "final"},
            files={"label": ("label.nii.gz", fh)},
            data={"params": json.dumps({"client_id": "tester"})},
            timeout=120,
        )


def stored_seg(orthanc: Orthanc, study: str, sop_uid: str) -> pydicom.Dataset:
    client = DICOMwebClient(orthanc.dicomweb_url)
    found = client.search_for_instances(study, search_filters={"SOPInstanceUID": sop_uid})
    assert len(found) == 1, f"SEG {sop_uid} not found in the PACS"
    series = found[0]["0020000E"]["Value"][0]
    return client.retrieve_instance(study, series, sop_uid)


def expected_frames(mask: np.ndarray) -> np.ndarray:
    """(i, j, k) labelmap to (k, rows, cols) frames, the SEG's layout."""
    return np.transpose(mask, (2, 1, 0))


# ---------------------------------------------------------------------------------------- no PACS needed
def test_studies_url_selects_dicomweb() -> None:
    from annotation_server.settings import Settings

    settings = Settings(studies=Path("http://pacs:8042/dicom-web"))  # what `--studies URL` becomes via typer
    assert settings.dicomweb_url == "http://pacs:8042/dicom-web" and settings.studies is None
    assert Settings(dicomweb_url="https://p/dw").dicomweb_url == "https://p/dw"


def test_pacs_client_errors_are_actionable() -> None:
    client = PacsClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2)
    with pytest.raises(UpstreamUnavailableError, match=r"cannot be reached.*ANNOTATE_DICOMWEB_URL"):
        client.search_series()
    # A PACS that answers 200 but stored nothing (Orthanc on a file without UIDs) is a failure, not success.
    client._client.store_instances = lambda datasets: pydicom.Dataset()  # type: ignore[method-assign]
    with pytest.raises(UpstreamError, match="stored 0 of 1"):
        client.store([pydicom.Dataset()])


def test_pacs_auth_sets_basic_or_bearer() -> None:
    session = requests.Session()
    PacsAuth(username="ann", password="pw").apply(session)
    assert session.auth == ("ann", "pw")
    bearer = requests.Session()
    PacsAuth(token="t0k").apply(bearer)
    assert bearer.headers["Authorization"] == "Bearer t0k" and bearer.auth is None


# ------------------------------------------------------------------------------------------- real Orthanc
@pytest.mark.needs_shared
@pytest.mark.slow
def test_pacs_series_inference_and_seg_write_back(orthanc: Orthanc, samples, pacs_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = pacs_server
    ct3, j2k = series_uid(samples["ct3"]), series_uid(samples["j2k"])
    study = str(samples["ct3"][0].StudyInstanceUID)

    listing = httpx.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30).json()
    assert set(listing["objects"]) == {ct3, j2k}, "both CT series listed, the dcmqi liver SEG is not an image"
    assert listing["objects"][ct3]["image"]["info"]["Modality"] == "CT"
    assert "region_growing" in httpx.get(f"{server.url}/info/", timeout=30).json()["models"]

    # Inference on a PACS series (fetched with WADO-RS on first use).
    click = {"foreground": [[256, 256, 1]], "label": "kidney"}
    started = time.perf_counter()
    result = httpx.post(
        f"{server.url}/infer/region_growing",
        params={"image": ct3, "output": "image"},
        data={"params": json.dumps(click)},
        timeout=120,
    )
    first_infer_s = time.perf_counter() - started
    assert result.status_code == 200, result.text
    (tmp_path / "result.nii.gz").write_bytes(result.content)
    result_mask = np.asarray(nib.load(str(tmp_path / "result.nii.gz")).dataobj)
    assert result_mask.shape == (512, 512, 3)

    # The same request as DICOM SEG: references the source series, decodes to the same labelmap.
    seg_answer = httpx.post(
        f"{server.url}/infer/region_growing",
        params={"image": ct3, "output": "dicom_seg"},
        data={"params": json.dumps(click)},
        timeout=120,
    )
    assert seg_answer.status_code == 200, seg_answer.text
    assert seg_answer.headers["content-type"].startswith("application/dicom")
    seg = pydicom.dcmread(io.BytesIO(seg_answer.content))
    assert seg.SOPClassUID == SEG_SOP_CLASS_UID and seg.StudyInstanceUID == study
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct3
    np.testing.assert_array_equal(decode_seg(seg, spatial_uids(samples["ct3"])), expected_frames(result_mask))

    # Saving a final label: version 1 locally and a SEG in the PACS that decodes to exactly the mask.
    mask, affine = label_upload(
        server.url, ct3, {1: (slice(100, 140), slice(200, 260), 0), 2: (slice(300, 320), slice(50, 90), 2)}, tmp_path
    )
    started = time.perf_counter()
    saved = put_label(server.url, ct3, mask, affine, tmp_path)
    save_s = time.perf_counter() - started
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["version"] == 1 and body["dicom_seg"]["status"] == "stored", body
    first = stored_seg(orthanc, study, body["dicom_seg"]["sop_instance_uid"])
    frames = decode_seg(first, spatial_uids(samples["ct3"]))
    np.testing.assert_array_equal(frames, expected_frames(mask))
    assert frames[1].max() == 0 and frames[0].max() == 1 and frames[2].max() == 2  # the right slices
    labels = {item.SegmentNumber: item.SegmentLabel for item in first.SegmentSequence}
    assert labels[1] == "kidney" and labels[2] == "tumor"

    # A second save: version 2 and a new SEG instance in the same SEG series; version 1 still in the PACS.
    mask[:, :, 1] = 0
    mask[10:20, 10:20, 1] = 3
    second = put_label(server.url, ct3, mask, affine, tmp_path).json()
    assert second["version"] == 2 and second["dicom_seg"]["status"] == "stored"
    assert second["dicom_seg"]["sop_instance_uid"] != body["dicom_seg"]["sop_instance_uid"]
    assert second["dicom_seg"]["series_instance_uid"] == body["dicom_seg"]["series_instance_uid"]
    client = DICOMwebClient(orthanc.dicomweb_url)
    instances = client.search_for_instances(study, body["dicom_seg"]["series_instance_uid"])
    assert len(instances) == 2
    newer = stored_seg(orthanc, study, second["dicom_seg"]["sop_instance_uid"])
    np.testing.assert_array_equal(decode_seg(newer, spatial_uids(samples["ct3"])), expected_frames(mask))

    # OHIF v3 sends raw voxels as label.bin (column fastest, then row, then slice): version 3.
    raw = httpx.put(
        f"{server.url}/datastore/label",
        params={"image": ct3},
        files={"label": ("label.bin", np.ascontiguousarray(mask.transpose(2, 1, 0)).tobytes())},
        data={"params": "{}"},
        timeout=60,
    )
    assert raw.status_code == 200 and raw.json()["version"] == 3, raw.text
    from_bin = stored_seg(orthanc, study, raw.json()["dicom_seg"]["sop_instance_uid"])
    np.testing.assert_array_equal(decode_seg(from_bin, spatial_uids(samples["ct3"])), expected_frames(mask))
    short = httpx.put(
        f"{server.url}/datastore/label", params={"image": ct3}, files={"label": ("label.bin", b"\0" * 10)}, timeout=60
    )
    assert short.status_code == 422 and "voxels" in short.json()["detail"]

    history = httpx.get(f"{server.url}/datastore/label/versions", params={"image": ct3, "tag": "final"}).json()
    assert [v["version"] for v in history["versions"]] == [1, 2, 3]
    print(
        f"first infer (WADO fetch + region growing) {first_infer_s:.2f}s, save request {save_s:.2f}s "
        f"of which SEG build + STOW {body['dicom_seg']['seconds']:.3f}s"
    )


@pytest.mark.needs_shared
@pytest.mark.slow
def test_pacs_down_keeps_labels_and_retries(orthanc: Orthanc, samples, pacs_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = pacs_server
    ct3, j2k = series_uid(samples["ct3"]), series_uid(samples["j2k"])
    study = str(samples["ct3"][0].StudyInstanceUID)
    mask, affine = label_upload(server.url, ct3, {1: (slice(5, 50), slice(5, 60), 1)}, tmp_path)  # fetches ct3

    orthanc.stop()
    try:
        # Not yet fetched: a clear 503 naming the PACS and what to check.
        down = httpx.post(
            f"{server.url}/infer/region_growing", params={"image": j2k}, data={"params": "{}"}, timeout=60
        )
        assert down.status_code == 503, down.text
        assert "cannot be reached" in down.json()["detail"] and orthanc.dicomweb_url in down.json()["detail"]
        rescan = httpx.post(f"{server.url}/datastore/rescan", timeout=60)
        assert rescan.status_code == 503 and "ANNOTATE_DICOMWEB_URL" in rescan.json()["detail"]

        # A save while the PACS is down: saved locally (version 1), write-back reported pending.
        saved = put_label(server.url, ct3, mask, affine, tmp_path)
        assert saved.status_code == 200, saved.text
        body = saved.json()
        assert body["version"] == 1 and body["dicom_seg"]["status"] == "pending"
        assert "cannot be reached" in body["dicom_seg"]["error"]
        back = httpx.get(f"{server.url}/datastore/label", params={"label": ct3, "tag": "final"}, timeout=30)
        assert back.status_code == 200 and back.headers["x-label-version"] == "1"
        listing = httpx.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=30)
        assert listing.status_code == 200 and set(listing.json()["objects"]) == {ct3, j2k}
        assert httpx.get(f"{server.url}/info/", timeout=30).status_code == 200
    finally:
        orthanc.start()

    # The PACS is back: the next rescan writes the pending SEG.
    assert httpx.post(f"{server.url}/datastore/rescan", timeout=60).status_code == 200
    info = httpx.get(f"{server.url}/datastore/label/info", params={"label": ct3, "tag": "final"}, timeout=30).json()
    assert info["dicom_seg"]["status"] == "stored", info
    seg = stored_seg(orthanc, study, info["dicom_seg"]["sop_instance_uid"])
    np.testing.assert_array_equal(decode_seg(seg, spatial_uids(samples["ct3"])), expected_frames(mask))

    # The JPEG 2000 series (blank UIDs repaired on upload) is fetched and served once the PACS is back.
    result = httpx.post(
        f"{server.url}/infer/region_growing",
        params={"image": j2k, "output": "json"},
        data={"params": json.dumps({"foreground": [[256, 256, 10]]})},
        timeout=120,
    )
    assert result.status_code == 200, result.text

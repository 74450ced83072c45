"""The DICOMweb path for a sampled case: the standard axial series of the real CT's kidney box in a real
Orthanc, read through the server's DICOMweb datastore, asked for exactly as OHIF v3 asks.

Sampled (one acquisition of the four in test_paths.py, kidney_seg only) because the PACS adds start-up and
transfer time, not new geometry: the series is fetched into a local folder and read by the same reader.
Checks: the OHIF byte contract (raw NRRD bytes poured into the series in OHIF's order land on the RAS
answer's voxels) and `output=dicom_seg` decoded by highdicom in world space.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pacs import Orthanc, require_orthanc

from annotation_server.inference.params import InferParams
from geometry.geometry_cases import Case, dice, ohif_expected, read_bytes, seg_world, to_grid, write_dicom_series

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


OHIF_PARAMS = {
    "result_extension": ".nrrd",
    "result_dtype": "uint8",
    "result_compress": False,
    "restore_label_idx": False,
}


@pytest.fixture(scope="module")
def pacs_client(crop_case: Case, tmp_path_factory) -> Iterator[tuple[object, Path, str]]:  # type: ignore[no-untyped-def]
    require_orthanc()
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import load_app
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    root = tmp_path_factory.mktemp("geometry-pacs")
    series = root / "series"
    write_dicom_series(crop_case, series, "axial")
    datasets = [pydicom.dcmread(p) for p in sorted(series.glob("*.dcm"))]
    (root / "orthanc").mkdir()
    orthanc = Orthanc(root / "orthanc", free_port())
    try:
        orthanc.start()
        assert orthanc.upload(datasets) == len(datasets)
        settings = Settings(dicomweb_url=orthanc.dicomweb_url, data_dir=root / "data", rescan_interval_s=0)
        with TestClient(create_app(settings, load_app("kidney"))) as client:
            yield client, series, str(datasets[0].SeriesInstanceUID)
    finally:
        orthanc.stop()


def test_ohif_request_through_dicomweb(pacs_client, crop_case: Case, kidney_seg) -> None:  # type: ignore[no-untyped-def]
    client, series, series_uid = pacs_client
    ras_answer = kidney_seg.infer(crop_case.volume, InferParams()).mask
    assert dice(ras_answer, crop_case.truth) >= 0.85
    response = client.post(
        f"/infer/kidney_seg?image={series_uid}&output=image", data={"params": json.dumps(OHIF_PARAMS)}
    )
    assert response.status_code == 200, response.text
    header, raw = response.content.split(b"\n\n", 1)
    assert b"encoding: raw" in header
    expected = ohif_expected(series, ras_answer, crop_case.geometry)
    poured = np.frombuffer(raw, dtype=np.uint8).reshape(expected.shape)
    assert np.array_equal(poured, expected), "OHIF would paint the kidneys elsewhere"
    seg = client.post(f"/infer/kidney_seg?image={series_uid}&output=dicom_seg")
    assert seg.status_code == 200, seg.text
    assert np.array_equal(seg_world(seg.content, crop_case.geometry) > 0, ras_answer > 0)


def test_ohif_label_bin_save_lands_in_world_space(pacs_client, crop_case: Case, kidney_seg) -> None:  # type: ignore[no-untyped-def]
    """OHIF saves its labelmap as raw bytes in the same order it pours them: they must land on those voxels."""
    client, series, series_uid = pacs_client
    ras_answer = kidney_seg.infer(crop_case.volume, InferParams()).mask
    frames = ohif_expected(series, ras_answer, crop_case.geometry)
    saved = client.put(
        f"/datastore/label?image={series_uid}&tag=final",
        files={"label": ("label.bin", np.ascontiguousarray(frames, dtype=np.uint8).tobytes())},
    )
    assert saved.status_code == 200, saved.text
    download = client.get(f"/datastore/label?label={series_uid}&tag=final")
    assert download.status_code == 200, download.text
    array, geometry = read_bytes(download.content, download.headers.get("content-disposition", ""))
    assert np.array_equal(to_grid(array, geometry, crop_case.geometry), ras_answer)

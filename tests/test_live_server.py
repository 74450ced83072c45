"""A real `annotate-server` process on 127.0.0.1, driven by MONAI Label's own Python client.

`MONAILabelClient` is the code 3D Slicer's extension shares: if it works unchanged, so does Slicer's
transport (hand-built multipart with its odd boundary, full local paths as file names, cgi parsing).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from annotation_server.imaging import read_volume

RIGHT_KIDNEY_CLICK = [81, 38, 8]  # voxel inside the right kidney of the embedded sample CT


@pytest.fixture
def monailabel_client():  # type: ignore[no-untyped-def]
    client_module = pytest.importorskip(
        "monailabel.client", reason="install the real client: pip install --no-deps monailabel==0.8.5"
    )
    return client_module.MONAILabelClient


@pytest.mark.slow
def test_default_command_serves_sample_quickly(live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`annotate-server --app kidney` with no data of one's own: sample study copied out, /info/ within 30 s."""
    server = live_server("--app", "kidney")
    assert server.ready_after_s < 30
    info = httpx.get(f"{server.url}/info/").json()
    assert info["datastore"]["total"] == 1 and "region_growing" in info["models"]
    sample = tmp_path / "server-data" / "studies" / "sample" / "example_ct_sm.nii.gz"
    assert sample.is_file()
    output = server.stop()
    assert f"listening on http://127.0.0.1:{server.port}" in output
    assert "app:     kidney" in output and "region_growing (deepgrow" in output and "studies: 1 in" in output
    assert server.process.returncode is not None  # stopped by its PID


@pytest.mark.slow
def test_monailabel_client_round_trip(live_server, monailabel_client, studies: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = live_server("--app", "kidney", "--studies", str(studies))
    client = monailabel_client(server.url, tmpdir=str(tmp_path / "client"), client_id="user-xyz")
    (tmp_path / "client").mkdir()

    info = client.info()
    assert info["labels"] == ["kidney", "tumor", "cyst"] and "region_growing" in info["models"]
    listing = client.datastore()
    assert set(listing["objects"]) == {"phantom_a", "phantom_b", "sample_ct"}

    started = time.perf_counter()
    result_file, params = client.infer(
        "region_growing",
        "sample_ct",
        {"foreground": [RIGHT_KIDNEY_CLICK], "background": [], "result_extension": ".nrrd", "result_dtype": "uint8"},
    )
    elapsed = time.perf_counter() - started
    assert result_file is not None and result_file.endswith(".nrrd"), params
    mask = read_volume(result_file)
    image = read_volume(studies / "sample_ct.nii.gz")
    assert mask.geometry.matches(image.geometry)
    assert 500 < int(mask.array.sum()) < 10_000 and mask.array[tuple(RIGHT_KIDNEY_CLICK)] == 1
    assert params["label_names"] and elapsed < 30

    saved = client.save_label("sample_ct", result_file, params={"label_info": [{"name": "kidney", "idx": 1}]})
    assert saved["image"] == "sample_ct"
    assert client.datastore()["objects"]["sample_ct"]["labels"]["final"]["info"]["client_id"] == "user-xyz"
    downloaded = client.download_label("sample_ct", "final")
    assert np.array_equal(read_volume(downloaded).array, mask.array)

    sample = client.next_sample("first", {})
    assert sample["id"] == "phantom_a"  # sample_ct is now labeled, so it is skipped

    uploaded = client.upload_image(str(studies / "phantom_a.nii.gz"), image_id="uploaded_copy")
    assert uploaded["image"] == "uploaded_copy"
    session = client.create_session(str(studies / "phantom_b.nii.gz"))
    session_id = session["session_id"]
    assert client.get_session(session_id)["name"] == session_id
    result_file, _ = client.infer("region_growing", "", {"foreground": [[10, 8, 5]]}, session_id=session_id)
    assert read_volume(result_file).geometry.matches(read_volume(studies / "phantom_b.nii.gz").geometry)
    client.remove_session(session_id)


@pytest.mark.slow
def test_client_sees_errors_and_server_keeps_running(
    live_server, monailabel_client, studies: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    server = live_server("--app", "kidney", "--studies", str(studies))
    client = monailabel_client(server.url, tmpdir=str(tmp_path))
    from monailabel.client.client import MONAILabelClientException

    with pytest.raises(MONAILabelClientException, match="404"):
        client.infer("no_such_model", "sample_ct", {})
    with pytest.raises(MONAILabelClientException, match="outside the image"):
        client.infer("region_growing", "sample_ct", {"foreground": [[500, 1, 1]]})
    bad = tmp_path / "bad.nii.gz"
    shutil.copy(studies / "sample_ct.nii.gz", bad)
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(MONAILabelClientException, match="422"):
        client.save_label("sample_ct", str(bad))
    assert client.info()["name"].startswith("annotation-server")


@pytest.mark.slow
def test_monailabel_client_runs_the_learned_models(
    live_server, monailabel_client, studies: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Both shipped kidney models through MONAI Label's own client: files come back on the image's grid."""
    server = live_server("--app", "kidney", "--studies", str(studies))
    (tmp_path / "client").mkdir()
    client = monailabel_client(server.url, tmpdir=str(tmp_path / "client"))
    image = read_volume(studies / "sample_ct.nii.gz")
    seg_file, seg_params = client.infer("kidney_seg", "sample_ct", {"restore_label_idx": True})
    seg = read_volume(seg_file)
    assert seg.geometry.matches(image.geometry) and seg_params["label_names"] == {"kidney": 1, "tumor": 2, "cyst": 3}
    assert int((seg.array > 0).sum()) > 2000  # two kidneys of ~3,900 voxels each in this crop
    click_file, click_params = client.infer("kidney_click", "sample_ct", {"foreground": [RIGHT_KIDNEY_CLICK]})
    click = read_volume(click_file)
    assert click.geometry.matches(image.geometry) and click.array[tuple(RIGHT_KIDNEY_CLICK)] == 1
    assert 1000 < int(click.array.sum()) < 12_000 and click_params["model"] == "kidney_click"


@pytest.mark.slow
def test_https_for_mitk(live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """MITK's MONAI Label tool only speaks HTTPS: the server serves TLS with a site's certificate."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no test certificate can be made")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = live_server("--app", "kidney", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), scheme="https")
    info = httpx.get(f"{server.url}/info/", verify=False).json()
    assert info["labels"] == ["kidney", "tumor", "cyst"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/info/", timeout=5)


@pytest.mark.slow
def test_monailabel_client_trains_and_asks_for_uncertain_images(live_server, monailabel_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """3D Slicer's Train / Stop buttons and its next-sample strategy list, through MONAI Label's own client."""
    from annotation_server.phantoms import PhantomConfig, write_phantom_dataset

    studies = tmp_path / "phantoms"
    write_phantom_dataset(studies, n=3, seed=21, config=PhantomConfig.easy())
    shutil.copy(Path(__file__).parents[1] / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz", studies)
    server = live_server("--app", "kidney", "--studies", str(studies))
    client = monailabel_client(server.url, tmpdir=str(tmp_path), client_id="user-xyz")
    info = client.info()
    assert {"kidney_seg", "kidney_click"} <= set(info["trainers"]) and {"epistemic", "tta"} <= set(info["strategies"])
    assert client.train_status(check_if_running=True) is False
    job = client.train_start("kidney_seg", {"max_epochs": 50, "val_split": 0.1})
    assert job["status"] == "RUNNING" and job["request"]["client_id"] == "user-xyz"
    assert client.train_status(check_if_running=True) is True
    assert client.train_status()["id"] == job["id"]
    assert client.train_stop()["status"] == "STOPPED"
    assert client.train_status(check_if_running=True) is False
    picked = client.next_sample("epistemic", {})
    assert picked["id"] == "example_ct_sm"  # the only image without a final label
    assert picked["strategy"]["epistemic"]["source"] in ("score", "fallback")

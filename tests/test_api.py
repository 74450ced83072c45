"""Every MONAI Label route (and ours) through the real FastAPI app, including the ways clients get it wrong."""

from __future__ import annotations

import cgi
import io
import json
import zipfile
from email.message import Message
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_nifti

from annotation_server.imaging import read_volume


def _parse_multipart(response) -> tuple[dict, dict[str, bytes], list[bytes]]:  # type: ignore[no-untyped-def]
    """Parse as 3D Slicer and MONAILabelClient do (cgi.FieldStorage), and return the raw parts as MITK sees them."""
    headers = Message()
    headers["content-type"] = response.headers["content-type"]
    headers["content-length"] = response.headers["content-length"]
    storage = cgi.FieldStorage(
        fp=io.BytesIO(response.content), environ={"REQUEST_METHOD": "POST"}, headers=headers, keep_blank_values=True
    )
    form, files = {}, {}
    for item in storage.list:
        if item.filename:
            files[item.filename] = item.value
        else:
            form[item.name] = item.value
    boundary = response.headers["content-type"].split("boundary=")[1]
    raw_parts = response.content.split(f"--{boundary}".encode())
    return form, files, raw_parts


def _label_for(client, image_id: str, value: int = 1) -> bytes:  # type: ignore[no-untyped-def]
    """Bytes of a .nii.gz label on `image_id`'s own grid."""
    store = client.app.state.services.datastore
    image = nib.load(str(store.image_path(image_id)))
    array = np.zeros(image.shape, np.uint8)
    array[1:4, 1:4, 1:3] = value
    path = write_nifti(store.new_upload_path("t.nii.gz"), array, image.affine)
    data = path.read_bytes()
    path.unlink()
    return data


# ------------------------------------------------------------------------------------------------------ info
def test_info_shape_for_slicer_mitk_ohif(client) -> None:  # type: ignore[no-untyped-def]
    info = client.get("/info/").json()
    assert "config" not in info  # 3D Slicer treats a top-level config as a too-old server
    assert info["labels"] == ["kidney", "tumor"] and isinstance(info["labels"], list)
    for name, model in info["models"].items():
        assert {"type", "labels", "dimension", "description", "config"} <= set(model), name
        assert isinstance(model["dimension"], int) and isinstance(model["labels"], dict)
    assert info["models"]["cube"]["type"] == "deepgrow"
    assert set(info["strategies"]) >= {"random", "first", "last"}
    assert info["datastore"] == {"total": 3, "completed": 0, "label_tags": {}}


@pytest.mark.parametrize(
    "path",
    [
        "/info",
        "/info/",
        "/datastore",
        "/datastore/",
        "/logs",
        "/logs/",
        "/health",
        "/health/",
        "/datastore/label/versions?image=phantom_a",
        "/datastore/label/versions/?image=phantom_a",
    ],
)
def test_paths_answer_with_and_without_slash_never_redirect(client, path: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 200, response.text


@pytest.mark.slow
def test_landing_and_openapi(client) -> None:  # type: ignore[no-untyped-def]
    assert "annotation-server" in client.get("/").text
    paths = client.get("/openapi.json").json()["paths"]
    assert "/infer/{model}" in paths and "/infer/{model}/" not in paths


# ----------------------------------------------------------------------------------------------------- infer
def test_infer_default_is_multipart_params_first(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/infer/threshold?image=sample_ct", data={"params": json.dumps({"client_id": "x"})})
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=") and '"' not in content_type
    assert int(response.headers["content-length"]) == len(response.content)
    form, files, raw = _parse_multipart(response)
    params = json.loads(form["params"])
    assert params["label_names"] == {"air": 1, "bright": 2}  # positions 1..N, not 7/42 (Slicer's convention)
    assert set(params["latencies"]) >= {"pre", "infer", "write", "total"}
    # MITK: part 1 has the JSON content type, part 2 the octet-stream one; the file name keeps the extension.
    assert b"Content-Type: application/json" in raw[1] and b"filename=" not in raw[1]
    assert b"Content-Type: application/octet-stream" in raw[2]
    ((filename, data),) = files.items()
    assert filename.endswith(".nii.gz") and "/" not in filename
    assert data[:2] == b"\x1f\x8b"  # the gzip NIfTI bytes, intact


def test_infer_result_is_on_input_grid(client, tmp_path: Path, sample_ct: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/infer/threshold?image=sample_ct&output=image")
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    assert 'filename="' in response.headers["content-disposition"]
    out = tmp_path / "r.nii.gz"
    out.write_bytes(response.content)
    result, image = read_volume(out), read_volume(sample_ct)
    assert result.geometry.matches(image.geometry, atol=0)
    assert np.array_equal(result.array == 2, image.array > 50)


@pytest.mark.parametrize("ext", [".nrrd", ".seg.nrrd", ".nii"])
def test_result_extension_and_dtype(client, tmp_path: Path, sample_ct: Path, ext: str) -> None:  # type: ignore[no-untyped-def]
    params = {"result_extension": ext, "result_dtype": "uint16", "restore_label_idx": True}
    response = client.post("/infer/threshold?image=sample_ct", data={"params": json.dumps(params)})
    form, files, _ = _parse_multipart(response)
    ((filename, data),) = files.items()
    assert filename.endswith(ext)
    out = tmp_path / f"r{ext}"
    out.write_bytes(data)
    result = read_volume(out)
    assert result.array.dtype == np.uint16
    assert set(np.unique(result.array)) <= {0, 7, 42}  # restore_label_idx: the configured values
    assert json.loads(form["params"])["label_names"] == {"air": 7, "bright": 42}
    assert result.geometry.matches(read_volume(sample_ct).geometry)


def test_infer_json_output_and_clicks(client) -> None:  # type: ignore[no-untyped-def]
    params = {"foreground": [[10, 10, 5]], "background": [[10, 10, 5]], "label": "tumor"}
    response = client.post("/infer/cube?image=phantom_a&output=json", data={"params": json.dumps(params)})
    assert response.status_code == 200
    assert response.json()["label_names"] == {"tumor": 1}


def test_infer_by_upload_like_mitk(client, sample_ct: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with sample_ct.open("rb") as fh:
        response = client.post(
            "/infer/cube",
            files={"file": ("post_from_mitk.nii.gz", fh, "application/octet-stream")},
            data={"params": json.dumps({"foreground": [[60, 50, 10]], "reset_state": True})},
        )
    assert response.status_code == 200
    _, files, _ = _parse_multipart(response)
    ((filename, data),) = files.items()
    assert filename.endswith(".nii.gz")  # MITK writes the bytes to *.nii.gz
    out = tmp_path / "m.nii.gz"
    out.write_bytes(data)
    assert read_volume(out).array.sum() == 27


def test_infer_with_empty_body_and_urlencoded(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/infer/threshold?image=phantom_a&output=json").status_code == 200
    response = client.post(
        "/infer/threshold?image=phantom_a&output=json",
        content=b"params=%7B%7D",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


def test_infer_save_label_records_source_model(client) -> None:  # type: ignore[no-untyped-def]
    params = {"save_label": True, "client_id": "model-runner"}
    assert (
        client.post("/infer/threshold?image=phantom_a&output=json", data={"params": json.dumps(params)}).status_code
        == 200
    )
    info = client.get("/datastore/label/info?label=phantom_a&tag=original").json()
    assert info["source"] == {"model": "threshold", "model_version": "1"} and info["model"] == "threshold"
    assert client.get("/datastore/").json()["completed"] == 0  # an 'original' pre-annotation is not 'final'


@pytest.mark.parametrize(
    ("url", "data", "status", "needle"),
    [
        ("/infer/nope?image=sample_ct", None, 404, "available models"),
        ("/infer/threshold?image=missing", None, 404, "not found"),
        ("/infer/threshold?image=../../etc/passwd", None, 422, "invalid image id"),
        ("/infer/threshold?image=sample_ct", {"params": "{not json"}, 422, "not valid JSON"),
        ("/infer/threshold?image=sample_ct", {"params": "[1, 2]"}, 422, "JSON object"),
        ("/infer/cube?image=sample_ct", {"params": '{"foreground": [[1, 2]]}'}, 422, "[i, j, k]"),
        ("/infer/cube?image=sample_ct", {"params": '{"foreground": [[999, 2, 3]]}'}, 422, "outside the image"),
        ("/infer/threshold?image=sample_ct", {"params": '{"result_extension": ".png"}'}, 422, "result_extension"),
        ("/infer/threshold?image=sample_ct", {"params": '{"result_dtype": "complex"}'}, 422, "result_dtype"),
        ("/infer/threshold", None, 422, "no input image"),
        ("/infer/threshold?image=sample_ct&output=foo", None, 422, None),
        ("/infer/threshold?image=sample_ct&output=dicom_seg", None, 422, "DICOMweb"),
        ("/infer/threshold?session_id=00000000-0000-0000-0000-000000000000", None, 404, "Session"),
    ],
)
def test_infer_client_mistakes_are_4xx(client, url: str, data, status: int, needle: str | None) -> None:  # type: ignore[no-untyped-def]
    response = client.post(url, data=data)
    assert response.status_code == status, response.text
    if needle:
        assert needle in response.json()["detail"]
    assert client.get("/info/").status_code == 200  # the server keeps serving


def test_infer_unsupported_and_truncated_uploads(client, sample_ct: Path) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/infer/threshold", files={"file": ("scan.jpg", b"\xff\xd8\xff", "image/jpeg")})
    assert response.status_code == 415 and ".nii.gz" in response.json()["detail"]
    truncated = sample_ct.read_bytes()[:5000]
    response = client.post("/infer/threshold", files={"file": ("ct.nii.gz", truncated)})
    assert response.status_code == 422 and "truncated" in response.json()["detail"]


def test_upload_size_limit_is_413(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/infer/threshold", files={"file": ("big.nii.gz", b"\0" * (5 << 20))})
    assert response.status_code == 413 and "MB limit" in response.json()["detail"]


# ------------------------------------------------------------------------------------------------- datastore
def test_datastore_listings(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/datastore/").json() == {"total": 3, "completed": 0, "label_tags": {}}
    client.put("/datastore/label?image=phantom_a", files={"label": ("a.nii.gz", _label_for(client, "phantom_a"))})
    everything = client.get("/datastore/?output=all").json()
    objects = everything["objects"]
    assert set(objects) == {"phantom_a", "phantom_b", "sample_ct"}
    assert objects["phantom_a"]["image"]["info"]["name"] == "phantom_a.nii.gz"
    assert objects["phantom_a"]["labels"]["final"]["ext"] == ".nii.gz"
    train = client.get("/datastore/?output=train").json()
    assert len(train) == 1 and Path(train[0]["image"]).name == "phantom_a.nii.gz" and Path(train[0]["label"]).is_file()
    assert client.get("/datastore/?output=bogus").status_code == 422


def test_label_save_download_versions_and_delete(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url = "/datastore/label?image=phantom_a"
    first = client.put(
        url,
        files={"label": ("C:\\Temp\\a.nii.gz", _label_for(client, "phantom_a", 1))},
        data={"params": json.dumps({"client_id": "ann1", "label_info": [{"name": "kidney", "idx": 1}]})},
    )
    assert first.status_code == 200 and first.json() == {
        "image": "phantom_a",
        "label": "phantom_a",
        "tag": "final",
        "version": 1,
    }
    second = client.put(
        url + "&tag=",
        files={"label": ("a.nii.gz", _label_for(client, "phantom_a", 2))},
        data={"params": json.dumps({"client_id": "ann2", "model": "cube"})},
    )
    assert second.json()["version"] == 2 and second.json()["tag"] == "final"
    assert client.head("/datastore/label?image=phantom_a&tag=final").status_code == 200
    assert client.head("/datastore/label?image=phantom_a&tag=original").status_code == 404
    latest = client.get("/datastore/label?label=phantom_a&tag=final")
    assert (
        latest.headers["x-label-version"] == "2"
        and 'filename="phantom_a.nii.gz"' in latest.headers["content-disposition"]
    )
    old = client.get("/datastore/label?label=phantom_a&tag=final&version=1")
    (tmp_path / "v1.nii.gz").write_bytes(old.content)
    assert read_volume(tmp_path / "v1.nii.gz").array.max() == 1
    history = client.get("/datastore/label/versions?image=phantom_a").json()["versions"]
    assert [(v["version"], v["author"], v["source"]["model"]) for v in history] == [
        (1, "ann1", None),
        (2, "ann2", "cube"),
    ]
    info = client.get("/datastore/label/info?label=phantom_a&tag=final").json()
    assert info["version"] == 2 and info["author"] == "ann2"
    assert (
        client.put("/datastore/label/info?label=phantom_a&tag=final", data={"info": '{"reviewed": true}'}).json()
        is None
    )
    assert (
        client.put("/datastore/updatelabelinfo?label=phantom_a&tag=final", data={"params": '{"score": 3}'}).json()
        is None
    )
    info = client.get("/datastore/label/info?label=phantom_a&tag=final").json()
    assert info["reviewed"] is True and info["score"] == 3
    assert client.delete("/datastore/label?id=phantom_a&tag=final").json() == {}
    assert client.get("/datastore/label?label=phantom_a&tag=final").status_code == 404
    assert len(client.get("/datastore/label/versions?image=phantom_a").json()["versions"]) == 2  # history kept


def test_label_mistakes_are_4xx_and_keep_saved_labels(client, sample_ct: Path) -> None:  # type: ignore[no-untyped-def]
    ok = client.put("/datastore/label?image=phantom_a", files={"label": ("a.nii.gz", _label_for(client, "phantom_a"))})
    assert ok.status_code == 200
    wrong_grid = _label_for(client, "sample_ct")
    cases = [
        ("/datastore/label?image=phantom_a", {"label": ("a.nii.gz", wrong_grid)}, None, 422, "voxel grid"),
        ("/datastore/label?image=phantom_a", {"label": ("a.nii.gz", wrong_grid[:300])}, None, 422, "truncated"),
        ("/datastore/label?image=phantom_a", {"label": ("a.bin", b"\0" * 64)}, None, 415, "supported"),
        ("/datastore/label?image=nobody", {"label": ("a.nii.gz", wrong_grid)}, None, 404, "not found"),
        ("/datastore/label?image=..%2F..%2Fetc%2Fpasswd", {"label": ("a.nii.gz", wrong_grid)}, None, 422, "invalid"),
        ("/datastore/label?image=phantom_a&tag=..%2Fx", {"label": ("a.nii.gz", wrong_grid)}, None, 422, "tag"),
        ("/datastore/label?image=phantom_a", {"label": ("a.nii.gz", wrong_grid)}, {"params": "{oops"}, 422, "JSON"),
    ]
    for url, files, data, status, needle in cases:
        response = client.put(url, files=files, data=data)
        assert response.status_code == status, (url, response.text)
        assert needle in response.json()["detail"]
    assert client.put("/datastore/label?image=phantom_a").status_code == 422  # no file at all
    versions = client.get("/datastore/label/versions?image=phantom_a").json()["versions"]
    assert [v["version"] for v in versions] == [1]  # nothing saved before was lost or replaced
    assert client.get("/datastore/label?label=phantom_a&tag=final").status_code == 200


def test_image_upload_download_info_delete(client, sample_ct: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = sample_ct.read_bytes()
    # 3D Slicer's deprecated form: PUT /datastore/?image=<node name> with its full local path as file name.
    up = client.put(
        "/datastore/?image=6: CT abdomen",
        files={"file": ("/tmp/slicer/tmp123.nii.gz", data)},
        data={"params": json.dumps({"client_id": "user-xyz"})},
    )
    assert up.status_code == 200 and up.json() == {"image": "6: CT abdomen"}
    assert client.put("/datastore/image", files={"file": ("fresh.nrrd", b"garbage")}).status_code == 422
    assert client.put("/datastore/image", files={"file": ("fresh.png", b"garbage")}).status_code == 415
    by_stem = client.put("/datastore/image", files={"file": ("case_007.nii.gz", data)})
    assert by_stem.json() == {"image": "case_007"}
    download = client.get("/datastore/image?image=case_007")
    assert download.content == data and 'filename="case_007.nii.gz"' in download.headers["content-disposition"]
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    assert client.head(f"/datastore/image?image=case_007&check_sum=SHA256:{digest}").status_code == 200
    assert client.head(f"/datastore/image?image=case_007&check_sum={digest}").status_code == 200
    assert client.head("/datastore/image?image=case_007&check_sum=SHA256:00").status_code == 404
    assert client.head("/datastore/image?image=nobody").status_code == 404
    info = client.get("/datastore/image/info?image=case_007").json()
    assert info["name"] == "case_007.nii.gz" and Path(info["path"]).is_file()
    assert client.put("/datastore/image/info?image=case_007", data={"info": '{"site": "A"}'}).json() is None
    assert client.get("/datastore/image/info?image=case_007").json()["site"] == "A"
    assert client.delete("/datastore/image?id=case_007").json() == {}
    assert client.delete("/datastore/?id=6: CT abdomen").json() == {}
    assert client.get("/datastore/image?image=case_007").status_code == 404
    assert client.delete("/datastore/image?id=case_007").status_code == 404


def test_dataset_zip_and_rescan(client, studies: Path, sample_ct: Path) -> None:  # type: ignore[no-untyped-def]
    client.put("/datastore/label?image=phantom_a", files={"label": ("a.nii.gz", _label_for(client, "phantom_a"))})
    archive = zipfile.ZipFile(io.BytesIO(client.get("/datastore/dataset").content))
    assert sorted(archive.namelist()) == ["image/phantom_a.nii.gz", "label/phantom_a.nii.gz", "metadata.json"]
    (studies / "added_later.nii.gz").write_bytes(sample_ct.read_bytes())
    report = client.post("/datastore/rescan").json()
    assert report["added"] == ["added_later"] and report["total"] == 4


# ---------------------------------------------------------------------------------------------- activelearning
def test_activelearning_first_last_random(client) -> None:  # type: ignore[no-untyped-def]
    first = client.post("/activelearning/first", json={"client_id": "ann1"}).json()
    assert first["id"] == "phantom_a" and first["name"] == "phantom_a.nii.gz" and Path(first["path"]).is_file()
    assert first["strategy"]["first"]["client_id"] == "ann1"
    assert client.post("/activelearning/last").json()["id"] == "sample_ct"
    assert client.post("/activelearning/random", json={}).json()["id"] in {"phantom_a", "phantom_b", "sample_ct"}
    for image_id in ("phantom_a", "phantom_b", "sample_ct"):
        client.put(f"/datastore/label?image={image_id}", files={"label": ("l.nii.gz", _label_for(client, image_id))})
    assert client.post("/activelearning/random").json() == {}
    response = client.post("/activelearning/nope")
    assert response.status_code == 404 and "random" in response.json()["detail"]
    assert (
        client.post("/activelearning/first", content=b"[1]", headers={"content-type": "application/json"}).status_code
        == 422
    )


def test_next_sample_offers_each_annotator_a_different_image(client) -> None:  # type: ignore[no-untyped-def]
    def ask(who: str | None) -> str | None:
        return client.post("/activelearning/first", json={"client_id": who} if who else {}).json().get("id")

    assert [ask("ann1"), ask("ann2")] == ["phantom_a", "phantom_b"]
    assert ask("ann1") == "sample_ct"  # asking again means ann1 moved on from phantom_a ...
    assert ask("ann3") == "phantom_a"  # ... which is free for others again
    assert ask("ann4") is None and ask(None) is None  # every image is reserved for someone
    assert ask("ann1") == "sample_ct"  # nothing but what ann1 skipped is left for ann1: offered again
    answer = client.post("/activelearning/first", json={"client_id": "ann2"}).json()
    assert answer["id"] == "phantom_b" and answer["strategy"]["first"]["reserved_for"] == "ann2"
    # a saved final label ends the question for everyone: phantom_b is not offered again, even to ann2
    client.put("/datastore/label?image=phantom_b", files={"label": ("l.nii.gz", _label_for(client, "phantom_b"))})
    assert ask("ann2") is None


def test_reservations_expire_and_are_released_when_the_annotator_moves_on() -> None:
    from annotation_server.learning.reservations import Reservations

    now = [0.0]
    reservations = Reservations(ttl_s=60, clock=lambda: now[0])
    reservations.reserve("img1", "ann1")
    assert reservations.held_by_others("ann2") == {"img1"} and reservations.held_by_others("ann1") == set()
    now[0] = 59.0
    assert reservations.held_by_others("ann2") == {"img1"}
    now[0] = 60.0
    assert reservations.held_by_others("ann2") == set()  # expired: ann1 went home
    reservations.reserve("img2", "ann1")
    assert reservations.release_for("ann1") == {"img2"} and reservations.snapshot() == []


# --------------------------------------------------------------------------------------------------- sessions
def test_session_lifecycle_and_infer_by_session(client, sample_ct: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    created = client.put(
        "/session/", files=[("files", ("C:\\x\\vol.nii.gz", sample_ct.read_bytes()))], data={"client_id": "user-xyz"}
    )
    assert created.status_code == 200
    session_id = created.json()["session_id"]
    info = client.get(f"/session/{session_id}").json()
    assert (
        info["name"] == session_id and info["image"].endswith("vol.nii.gz") and info["meta"]["client_id"] == "user-xyz"
    )
    image = client.get(f"/session/{session_id}?image=true")
    assert image.content == sample_ct.read_bytes()
    response = client.post(
        f"/infer/cube?image=anything&session_id={session_id}", data={"params": json.dumps({"foreground": [[5, 5, 5]]})}
    )
    assert response.status_code == 200
    assert client.delete(f"/session/{session_id}").json()["name"] == session_id
    assert client.get(f"/session/{session_id}").status_code == 404
    assert client.get("/session/not-a-uuid").status_code == 404


@pytest.mark.slow
def test_session_from_dicom_series_and_bad_uploads(client, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    slices = sorted((shared_data / "dcmqi_ct-3slice").glob("0*.dcm"))
    created = client.put("/session/", files=[("files", (p.name, p.read_bytes())) for p in slices])
    assert created.status_code == 200
    session_id = created.json()["session_id"]
    response = client.post(f"/infer/threshold?session_id={session_id}&output=json")
    assert response.status_code == 200
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in slices:
            zf.write(p, f"series/{p.name}")
    zipped = client.put("/session/?uncompress=true", files=[("files", ("series.zip", archive.getvalue()))])
    assert zipped.status_code == 200
    assert client.put("/session/", files=[("files", ("x.nii.gz", b"junk"))]).status_code == 422
    assert client.put("/session/").status_code == 422


# ------------------------------------------------------------------------------------------ model, logs, health
def test_model_download_of_classic_tool_is_404(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/model/threshold")
    assert response.status_code == 404 and "no weights" in response.json()["detail"]
    assert client.get("/model/nope").status_code == 404
    assert client.get("/model/info/threshold").status_code == 404


def test_logs_show_requests_and_errors(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/activelearning/nope")
    text = client.get("/logs/?lines=50").text
    assert "strategy 'nope' not found" in text
    page = client.get("/logs/?html=true&refresh=5")
    assert page.headers["content-type"].startswith("text/html") and 'http-equiv="refresh"' in page.text


def test_health(client) -> None:  # type: ignore[no-untyped-def]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["studies"] == 3 and health["inference_pending"] == 0


def test_auth_route_absent_when_auth_disabled(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/auth/").status_code == 404  # clients read any non-200 as 'auth disabled'


def test_prometheus_metrics(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/infer/threshold?image=sample_ct&output=json")
    client.post("/infer/threshold?image=sample_ct&output=json")
    text = client.get("/metrics").text
    assert 'annotation_http_request_seconds_count{method="POST",route="/infer/{model}",status="200"} 2.0' in text
    assert 'annotation_inference_seconds_count{kind="infer",model="threshold"} 2.0' in text
    assert "annotation_volume_cache_hits 1.0" in text and "annotation_volume_cache_misses 1.0" in text
    assert "annotation_inference_queue_depth 0.0" in text and "process_resident_memory_bytes" in text

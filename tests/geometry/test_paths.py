"""Every input path and output of the API, checked in world space, with the real kidney app in process.

The kidney box of the real CT (see test_orientations.py) is served as: RAS NIfTI (the reference), LPS NIfTI,
LPS NRRD, RPI MHA, and four DICOM series written at test time with pydicom: standard axial
(ImageOrientationPatient 1\\0\\0\\0\\1\\0), axial with the files ordered head to feet, coronal and sagittal.
Every answer is brought back onto the RAS grid through its own affine and must equal the RAS answer voxel for
voxel (all of these differ from RAS by axis permutations and flips only, so the lookup is exact).

Paths x outputs covered (kidney_seg unless said):
- datastore images (all 8 above) -> NIfTI (`output=image`);
- LPS NIfTI -> NRRD (`result_extension`), multipart (default output);
- upload `file=` (LPS NIfTI) and MONAI Label `PUT /session/` + `session_id=` (RPI MHA);
- DICOM series -> `output=dicom_seg`, decoded with highdicom as a volume with its own affine;
- OHIF v3's request (NRRD, uint8, raw, `restore_label_idx: false`) with the bytes poured into the series as
  OHIF does (x fastest, slices ascending along the normal), checked against the DICOM files' own positions;
- `save_label` -> `GET /datastore/label`;
- interactive sessions (kidney_click, region_growing) on the axial and coronal series: deltas, `/mask`,
  save, and a session opened `from_label`;
- `/infer` with MONAI Label click params (kidney_click, region_growing) on LPS NRRD, the feet-first and the
  sagittal series (Dice >= 0.99 vs the RAS answer);
- a Model Zoo-layout bundle (its own LoadImaged/Invertd/SaveImaged) served by path (`model_dirs`).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from annotation_server.imaging import Geometry, read_volume, write_volume
from annotation_server.interactive.delta import apply_delta
from geometry.geometry_cases import (
    ACQUISITIONS,
    Case,
    dice,
    ohif_expected,
    reorient,
    seg_world,
    to_grid,
    write_dicom_series,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FILES = {"ras": ("RAS", ".nii.gz"), "lps": ("LPS", ".nii.gz"), "lps_nrrd": ("LPS", ".nrrd"), "rpi_mha": ("RPI", ".mha")}
OHIF_PARAMS = {
    "result_extension": ".nrrd",
    "result_dtype": "uint8",
    "result_compress": False,
    "restore_label_idx": False,
}

# Real exports drop or blank Type 2 attributes; a tilted gantry shears the slice stack.
MESSY_SERIES: dict[str, dict] = {
    "dicom_no_thickness": {"drop": ("SliceThickness",)},
    "dicom_no_frame": {"drop": ("FrameOfReferenceUID",)},
    "dicom_blank_frame": {"blank": ("FrameOfReferenceUID", "SliceThickness")},
    "dicom_no_patient_study": {
        "drop": ("PatientName", "PatientID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID")
    },
    "dicom_tilted": {"tilt_mm_per_slice": 0.5},  # ~9.5 degrees
}


def zoo_bundle(folder: Path) -> Path:
    """kidney_seg's network and weights in a Model Zoo bundle's own terms: file I/O and Invertd in its config."""
    source = REPO / "models" / "kidney_seg"
    shutil.copytree(source / "models", folder / "models")
    (folder / "configs").mkdir(parents=True)
    config = json.loads((source / "configs" / "inference.json").read_text())
    metadata = json.loads((source / "configs" / "metadata.json").read_text())
    metadata.pop("annotation_server", None)  # a Zoo bundle carries none of our extras
    config["preprocessing"]["transforms"].insert(0, {"_target_": "LoadImaged", "keys": "image", "image_only": True})
    config["postprocessing"] = {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "$@bundle_root + '/eval'"},
        ],
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def served(crop_case: Case, tmp_path_factory) -> Iterator[tuple[object, dict[str, Case], Path]]:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import load_app
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    root = tmp_path_factory.mktemp("geometry-api")
    studies = root / "studies"
    studies.mkdir()
    cases: dict[str, Case] = {}
    for name, (axcodes, ext) in FILES.items():
        case = reorient(crop_case, axcodes)
        write_volume(case.image, case.geometry, studies / f"{name}{ext}")
        cases[name] = case
    for acquisition in ACQUISITIONS:
        cases[f"dicom_{acquisition}"] = write_dicom_series(crop_case, studies / f"dicom_{acquisition}", acquisition)
    for name, options in MESSY_SERIES.items():
        cases[name] = write_dicom_series(crop_case, studies / name, "axial", **options)
    bundle = zoo_bundle(root / "zoo_kidney")
    settings = Settings(
        studies=studies, data_dir=root / "data", rescan_interval_s=0, model_dirs=[bundle], session_expiry_s=600
    )
    with TestClient(create_app(settings, load_app("kidney"))) as client:
        yield client, cases, studies


def _result(response) -> tuple[np.ndarray, Geometry]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    disposition = response.headers.get("content-disposition", "")
    ext = next((e for e in (".nii.gz", ".nrrd", ".mha", ".nii") if e in disposition), ".nii.gz")
    return _read_bytes(response.content, ext)


def _read_bytes(data: bytes, ext: str) -> tuple[np.ndarray, Geometry]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"result{ext}"
        path.write_bytes(data)
        volume = read_volume(path)
        return volume.array, volume.geometry


@pytest.fixture(scope="module")
def ras_answer(served) -> np.ndarray:  # type: ignore[no-untyped-def]
    client, cases, _ = served
    array, geometry = _result(client.post("/infer/kidney_seg?image=ras&output=image"))
    assert geometry.matches(cases["ras"].geometry)
    assert dice(array, cases["ras"].truth) >= 0.85
    return array


def _in_ras(array: np.ndarray, geometry: Geometry, cases: dict[str, Case]) -> np.ndarray:
    return to_grid(array, geometry, cases["ras"].geometry)


@pytest.mark.parametrize("image", [*FILES, *(f"dicom_{a}" for a in ACQUISITIONS)])
def test_datastore_images_nifti_answer_world_exact(served, ras_answer, image: str) -> None:  # type: ignore[no-untyped-def]
    client, cases, _ = served
    array, geometry = _result(client.post(f"/infer/kidney_seg?image={image}&output=image"))
    assert geometry.matches(cases[image].geometry), "the answer is not on the image's own grid"
    assert np.array_equal(_in_ras(array, geometry, cases), ras_answer), f"{image}: not where the RAS answer is"


def test_nrrd_and_multipart_outputs(served, ras_answer) -> None:  # type: ignore[no-untyped-def]
    client, cases, _ = served
    response = client.post(
        "/infer/kidney_seg?image=lps&output=image", data={"params": json.dumps({"result_extension": ".nrrd"})}
    )
    assert response.status_code == 200
    array, geometry = _read_bytes(response.content, ".nrrd")
    assert np.array_equal(_in_ras(array, geometry, cases), ras_answer)
    multipart = client.post("/infer/kidney_seg?image=lps")
    assert multipart.status_code == 200 and multipart.headers["content-type"].startswith("multipart/form-data")
    boundary = multipart.headers["content-type"].split("boundary=")[1].encode()
    parts = [p for p in multipart.content.split(b"--" + boundary) if b"\r\n\r\n" in p]
    image_part = next(p for p in parts if b"filename=" in p)
    body = image_part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    array, geometry = _read_bytes(body, ".nii.gz")
    assert np.array_equal(_in_ras(array, geometry, cases), ras_answer)


def test_upload_and_monai_label_session(served, ras_answer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client, cases, studies = served
    upload = client.post(
        "/infer/kidney_seg?output=image", files={"file": ("scan.nii.gz", (studies / "lps.nii.gz").read_bytes())}
    )
    array, geometry = _result(upload)
    assert geometry.matches(cases["lps"].geometry)
    assert np.array_equal(_in_ras(array, geometry, cases), ras_answer)
    session = client.put("/session/", files={"files": ("scan.mha", (studies / "rpi_mha.mha").read_bytes())})
    assert session.status_code == 200, session.text
    session_id = session.json()["session_id"]
    array, geometry = _result(client.post(f"/infer/kidney_seg?session_id={session_id}&output=image"))
    assert geometry.matches(cases["rpi_mha"].geometry)
    assert np.array_equal(_in_ras(array, geometry, cases), ras_answer)


@pytest.mark.parametrize("acquisition", list(ACQUISITIONS))
def test_dicom_seg_decoded_in_world_space(served, ras_answer, acquisition: str) -> None:  # type: ignore[no-untyped-def]
    client, cases, _ = served
    response = client.post(f"/infer/kidney_seg?image=dicom_{acquisition}&output=dicom_seg")
    assert response.status_code == 200, response.text
    assert np.array_equal(seg_world(response.content, cases["ras"].geometry) > 0, ras_answer > 0)


@pytest.mark.parametrize("acquisition", ["axial", "axial_feet_first", "coronal"])
def test_ohif_byte_contract(served, ras_answer, acquisition: str) -> None:  # type: ignore[no-untyped-def]
    client, cases, studies = served
    response = client.post(
        f"/infer/kidney_seg?image=dicom_{acquisition}&output=image", data={"params": json.dumps(OHIF_PARAMS)}
    )
    assert response.status_code == 200, response.text
    header, raw = response.content.split(b"\n\n", 1)
    assert b"encoding: raw" in header, "result_compress: false must give raw NRRD bytes (OHIF reads them as is)"
    assert b"type: uint8" in header or b"type: unsigned char" in header
    expected = ohif_expected(studies / f"dicom_{acquisition}", ras_answer, cases["ras"].geometry)
    poured = np.frombuffer(raw, dtype=np.uint8)
    assert poured.size == expected.size, "OHIF pours exactly one byte per voxel of the series"
    assert np.array_equal(poured.reshape(expected.shape), expected), f"{acquisition}: bytes land on other voxels"
    assert (expected > 0).sum() > 1000


def test_saved_label_lands_in_world_space(served, ras_answer) -> None:  # type: ignore[no-untyped-def]
    client, cases, _ = served
    params = {"save_label": True, "label_tag": "original"}
    response = client.post("/infer/kidney_seg?image=dicom_axial&output=json", data={"params": json.dumps(params)})
    assert response.status_code == 200, response.text
    array, geometry = _result(client.get("/datastore/label?label=dicom_axial&tag=original"))
    assert np.array_equal(_in_ras(array, geometry, cases) > 0, ras_answer > 0)


def _kidney_centres(case: Case) -> list[list[int]]:
    labels, _ = ndimage.label(case.truth)
    sizes = ndimage.sum(case.truth, labels, range(1, labels.max() + 1))
    centres = []
    for blob in np.argsort(sizes)[::-1][:2] + 1:
        distance = ndimage.distance_transform_edt(labels == blob)
        centres.append([int(v) for v in np.unravel_index(int(np.argmax(distance)), distance.shape)])
    return centres


@pytest.mark.parametrize("model", ["kidney_click", "region_growing"])
def test_interactive_sessions_on_dicom_series(served, model: str) -> None:  # type: ignore[no-untyped-def]
    """Clicks on the same kidney voxel, stored RAS, axial DICOM and coronal DICOM: same mask in world space."""
    client, cases, _ = served
    ras_click = _kidney_centres(cases["ras"])[0]
    masks = {}
    for image in ("ras", "dicom_axial", "dicom_coronal"):
        case = cases[image]
        point = np.rint(np.linalg.inv(case.affine) @ cases["ras"].affine @ np.array([*ras_click, 1.0]))[:3]
        opened = client.post("/interactive/sessions", json={"image": image, "model": model, "label": "kidney"})
        assert opened.status_code == 200, opened.text
        session = opened.json()["id"] if "id" in opened.json() else opened.json()["session_id"]
        mask = np.zeros(case.image.shape, np.uint8)
        answer = client.post(
            f"/interactive/sessions/{session}/prompt", json={"prompt": {"type": "point", "point": point.tolist()}}
        )
        assert answer.status_code == 200, answer.text
        apply_delta(mask, answer.json()["delta"])
        whole = client.get(f"/interactive/sessions/{session}/mask")
        server_mask, geometry = _result(whole)
        assert geometry.matches(case.geometry) and np.array_equal(server_mask, mask)
        masks[image] = to_grid(mask, case.geometry, cases["ras"].geometry)
        assert dice(masks[image], cases["ras"].truth) > 0.3  # one kidney of two
        saved = client.post(f"/interactive/sessions/{session}/save", json={"tag": f"s_{model}"})
        assert saved.status_code == 200, saved.text
        label, label_geometry = _result(client.get(f"/datastore/label?label={image}&tag=s_{model}"))
        assert np.array_equal(to_grid(label, label_geometry, cases["ras"].geometry), masks[image])
        client.delete(f"/interactive/sessions/{session}")
        # from_label: a new session starts from the saved label, on the same voxels
        again = client.post(
            "/interactive/sessions", json={"image": image, "model": model, "from_label": f"s_{model}"}
        ).json()
        again_id = again["id"] if "id" in again else again["session_id"]
        restored, restored_geometry = _result(client.get(f"/interactive/sessions/{again_id}/mask"))
        assert np.array_equal(to_grid(restored, restored_geometry, cases["ras"].geometry), masks[image])
        client.delete(f"/interactive/sessions/{again_id}")
    assert dice(masks["dicom_axial"], masks["ras"]) >= 0.99
    assert dice(masks["dicom_coronal"], masks["ras"]) >= 0.99


def test_model_zoo_bundle_by_path(served, ras_answer) -> None:  # type: ignore[no-untyped-def]
    """A bundle whose own postprocessing inverts (Invertd) is not inverted twice, and lands like kidney_seg."""
    client, cases, _ = served
    assert "zoo_kidney" in client.get("/info/").json()["models"]
    for image in ("ras", "lps", "dicom_axial"):
        array, geometry = _result(client.post(f"/infer/zoo_kidney?image={image}&output=image"))
        assert geometry.matches(cases[image].geometry)
        in_ras = _in_ras(array, geometry, cases)
        # Its postprocessing keeps every blob (no KeepLargestConnectedComponent), so compare by Dice.
        assert dice(in_ras, ras_answer) >= 0.95, image
        assert dice(in_ras, cases["ras"].truth) >= 0.8, image


def test_nifti_reference_has_the_same_world_as_every_copy(served) -> None:  # type: ignore[no-untyped-def]
    """The generated files themselves: each stores the same voxels at the same world points as the RAS file."""
    _, cases, studies = served
    ras = cases["ras"]
    for name, (_, ext) in FILES.items():
        volume = read_volume(studies / f"{name}{ext}")
        assert np.array_equal(to_grid(volume.array, volume.geometry, ras.geometry), ras.image), name
    for acquisition in ACQUISITIONS:
        volume = read_volume(studies / f"dicom_{acquisition}")
        assert np.array_equal(to_grid(volume.array, volume.geometry, ras.geometry), ras.image), acquisition
    assert nib.aff2axcodes(read_volume(studies / "dicom_axial").geometry.affine) == ("L", "P", "S")


@pytest.mark.parametrize("image", [name for name in MESSY_SERIES if name != "dicom_tilted"])
def test_dicom_seg_of_series_missing_type2_attributes(served, ras_answer, image: str) -> None:  # type: ignore[no-untyped-def]
    """Missing / empty SliceThickness, FrameOfReferenceUID, patient and study attributes: a SEG, not a 500."""
    client, cases, _ = served
    response = client.post(f"/infer/kidney_seg?image={image}&output=dicom_seg")
    assert response.status_code == 200, response.text
    assert np.array_equal(seg_world(response.content, cases["ras"].geometry) > 0, ras_answer > 0)
    seg = pydicom.dcmread(io.BytesIO(response.content))
    assert seg.FrameOfReferenceUID  # derived from the series when the source has none
    image_answer, geometry = _result(client.post(f"/infer/kidney_seg?image={image}&output=image"))
    assert np.array_equal(_in_ras(image_answer, geometry, cases), ras_answer)


def test_gantry_tilt_is_refused_with_what_to_do(served) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = served
    for url in (
        "/infer/kidney_seg?image=dicom_tilted&output=image",
        "/infer/kidney_seg?image=dicom_tilted&output=dicom_seg",
    ):
        response = client.post(url)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "tilt" in detail and "resample" in detail, detail
    opened = client.post("/interactive/sessions", json={"image": "dicom_tilted", "model": "region_growing"})
    assert opened.status_code == 422 and "tilt" in opened.json()["detail"]


@pytest.mark.parametrize("model", ["kidney_click", "region_growing"])
def test_click_models_through_infer_on_every_storage(served, model: str) -> None:  # type: ignore[no-untyped-def]
    """MONAI Label's click request (`params.foreground`, stored voxel indices) on sampled storages."""
    client, cases, _ = served
    ras_click = _kidney_centres(cases["ras"])[1]

    def answer(image: str) -> np.ndarray:
        case = cases[image]
        point = np.rint(np.linalg.inv(case.affine) @ cases["ras"].affine @ np.array([*ras_click, 1.0]))[:3]
        params = {"foreground": [[int(v) for v in point]], "background": [], "label": "kidney"}
        array, geometry = _result(
            client.post(f"/infer/{model}?image={image}&output=image", data={"params": json.dumps(params)})
        )
        assert geometry.matches(case.geometry)
        return _in_ras(array, geometry, cases)

    reference = answer("ras")
    assert dice(reference, cases["ras"].truth) > 0.3  # one kidney of two
    for image in ("lps_nrrd", "dicom_axial_feet_first", "dicom_sagittal"):
        assert dice(answer(image), reference) >= 0.99, image

"""Hostile volume files: headers that name other server files, lie about their size, or are malformed.

The first test is the exact attack of issue #12: a `.seg.nrrd` label whose header's `data file:` names the
server's token secret was saved and could be downloaded. Every route that accepts a volume must refuse it
with a 4xx before any library opens the named file, and nothing may be saved.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotation_server.errors import CorruptFileError, TooLargeError, UnsupportedFormatError
from annotation_server.imaging import read_geometry, read_volume
from annotation_server.imaging.headers import ReadLimits, inspect_nifti

SECRET = b"TOKEN-SECRET-0123456789abcdef-must-never-leave-the-server"


def detached_nrrd(target: Path, n: int = 64, field: str = "data file") -> bytes:
    """An NRRD header of n x 1 x 1 voxels at the origin whose voxels are read from `target`."""
    return (
        f"NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\nsizes: {n} 1 1\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nencoding: raw\n"
        f"space origin: (0,0,0)\n{field}: {target}\n\n"
    ).encode()


def detached_mha(target: Path | str, n: int = 64) -> bytes:
    return (
        f"ObjectType = Image\nNDims = 3\nDimSize = {n} 1 1\nElementType = MET_UCHAR\nElementSpacing = 1 1 1\n"
        f"Offset = 0 0 0\nElementDataFile = {target}\n"
    ).encode()


def nifti_header_only(dims: tuple[int, ...], dim0: int | None = None, datatype: int = 4, bitpix: int = 16) -> bytes:
    """A NIfTI-1 single-file header (no voxels) declaring `dims`, for size-bomb tests."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    block = bytearray(header.binaryblock)
    dim = [dim0 if dim0 is not None else len(dims), *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", block, 40, *dim)
    struct.pack_into("<hh", block, 70, datatype, bitpix)
    struct.pack_into("<f", block, 108, 352.0)
    return bytes(block) + b"\0" * 4


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "auth" / "token_secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SECRET)
    return path


def _all_bytes_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000)


# ---------------------------------------------------------------------------------------- the attack itself
def test_label_naming_the_token_secret_is_refused_and_nothing_saved(client, secret_file: Path, studies: Path) -> None:  # type: ignore[no-untyped-def]
    before = client.get("/datastore/label/versions?image=phantom_a").json()["versions"]
    response = client.put(
        "/datastore/label?image=phantom_a", files={"label": ("attack.seg.nrrd", detached_nrrd(secret_file))}
    )
    assert response.status_code == 415, response.text
    assert "self-contained" in response.json()["detail"]
    assert client.get("/datastore/label/versions?image=phantom_a").json()["versions"] == before == []
    assert client.get("/datastore/label?label=phantom_a").status_code == 404
    assert SECRET not in _all_bytes_under(studies)


@pytest.mark.parametrize(
    "payload",
    [
        lambda secret: ("a.seg.nrrd", detached_nrrd(secret)),
        lambda secret: ("a.nrrd", detached_nrrd(secret, field="datafile")),
        lambda secret: ("a.nrrd", detached_nrrd(secret, field="Data File")),
        lambda secret: ("a.nrrd", detached_nrrd(Path("LIST"), n=64)[:-1] + f"{secret}\n\n".encode()),
        lambda secret: ("a.nrrd", detached_nrrd(Path("/proc/self/environ"))),
        lambda secret: ("a.nrrd", detached_nrrd(secret).split(b"data file")[0]),  # a detached .nhdr: no data
        lambda secret: ("a.mha", detached_mha(secret)),
        lambda secret: ("a.mha", detached_mha("LIST") + f"{secret}\n".encode()),
        lambda secret: ("a.mha", detached_mha("/proc/self/environ")),
        lambda secret: ("a.nii", nifti_header_only((64, 1, 1))[:344] + b"ni1\0"),
    ],
    ids=["seg-nrrd", "datafile", "Data-File", "LIST", "proc-environ", "nhdr", "mha", "mha-LIST", "mha-proc", "ni1"],
)
def test_every_upload_route_refuses_files_naming_other_files(client, secret_file: Path, studies: Path, payload) -> None:  # type: ignore[no-untyped-def]
    name, data = payload(secret_file)
    for url, field in (
        ("/datastore/label?image=phantom_a", "label"),
        ("/datastore/?image=evil", "file"),
        ("/datastore/image?image=evil", "file"),
        ("/infer/threshold?output=json", "file"),
        ("/session/", "files"),
        ("/interactive/sessions/upload", "file"),
    ):
        method = client.post if url.startswith(("/infer", "/interactive")) else client.put
        response = method(url, files={field: (name, data)})
        assert response.status_code in (415, 422), (url, response.status_code, response.text)
        assert SECRET.decode() not in response.text
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr(name, data)
    response = client.put("/session/?uncompress=true", files={"files": ("s.zip", zipped.getvalue())})
    assert response.status_code in (415, 422), response.text
    assert client.get("/datastore/label/versions?image=phantom_a").json()["versions"] == []
    assert "evil" not in client.get("/datastore/?output=all").json()["objects"]
    assert SECRET not in _all_bytes_under(studies)


def test_studies_folder_files_naming_other_files_are_not_served(tmp_path: Path, secret_file: Path) -> None:
    from annotation_server.datastore import LocalDatastore

    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "evil.nrrd").write_bytes(detached_nrrd(secret_file))
    store = LocalDatastore(folder)
    store.rescan()
    with pytest.raises(UnsupportedFormatError):
        read_volume(store.image_path("evil"))
    with pytest.raises(UnsupportedFormatError):
        store.image_geometry("evil")


# ------------------------------------------------------------------------------------------- header budgets
def test_nifti_size_bomb_refused_from_its_header(tmp_path: Path) -> None:
    """2.6 MB of gzip that declares (and would inflate to) 2.7 GB: refused from the first 352 bytes."""
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(nifti_header_only((1400, 1000, 1000)))
        out.write(b"\0" * (8 << 20))  # the rest would be zeros too; the header alone decides
    with pytest.raises(TooLargeError, match="ANNOTATE_MAX_IMAGE_VOXELS"):
        read_volume(path)
    with pytest.raises(TooLargeError):
        read_geometry(path)


@pytest.mark.parametrize(
    ("header", "error", "needle"),
    [
        (nifti_header_only((30000, 30000, 30000)), TooLargeError, "GiB"),
        (nifti_header_only((4, 4, 4), dim0=9), CorruptFileError, "dim[0] = 9"),
        (nifti_header_only((4, 4, 4), dim0=0), CorruptFileError, "dim[0] = 0"),
        (nifti_header_only((4, -4, 4)), CorruptFileError, "at least one voxel"),
        (nifti_header_only((4, 4, 4), datatype=32, bitpix=64), UnsupportedFormatError, "datatype"),
        (b"\0" * 400, CorruptFileError, "not a NIfTI"),
    ],
)
def test_bad_nifti_headers_are_clear_errors(tmp_path: Path, header: bytes, error: type, needle: str) -> None:
    path = tmp_path / "h.nii"
    path.write_bytes(header + b"\0" * 256)
    with pytest.raises(error, match=needle.replace("[", r"\[").replace("]", r"\]")):
        inspect_nifti(path, ReadLimits())
    with pytest.raises(error):
        read_volume(path)


def test_nrrd_and_mha_budgets_and_malformed_headers(tmp_path: Path) -> None:
    big = tmp_path / "big.nrrd"
    big.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2000 2000 2000\nencoding: gzip\n\n" + b"x" * 64)
    with pytest.raises(TooLargeError):
        read_volume(big)
    small_limit = ReadLimits(max_voxels=1000)
    ok = tmp_path / "ok.nrrd"
    ok.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 11 10 10\nencoding: raw\n\n" + b"\1" * 1100)
    assert read_volume(ok).array.shape == (11, 10, 10)
    with pytest.raises(TooLargeError):
        read_volume(ok, small_limit)
    mha = tmp_path / "big.mha"
    mha.write_bytes(b"NDims = 3\nDimSize = 4000 4000 4000\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    with pytest.raises(TooLargeError):
        read_volume(mha)
    for text, needle in (
        (b"NRRD0004\ntype: uint8\ndimension: 9\nsizes: 1 1 1\n\n\0", "does not match"),
        (b"NRRD0004\ntype: complex\ndimension: 1\nsizes: 4\n\n\0\0\0\0", "type"),
        (b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: -2 -1 1\n\n\0", "at least one voxel"),
        (b"NRRD0004\ntype: uint8\ndimension: 1\nsizes: 4\nencoding: zrle\n\n\0\0\0\0", "encoding"),
        (b"NRRD0004\ntype: uint8\ndimension: 1\nsizes: 4\nthis is not a field\n\n\0\0\0\0", "malformed"),
    ):
        bad = tmp_path / "bad.nrrd"
        bad.write_bytes(text)
        with pytest.raises((CorruptFileError, UnsupportedFormatError), match=needle):
            read_volume(bad)


def test_label_bomb_via_api_is_413_and_fast(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(nifti_header_only((1400, 1000, 1000)))
        out.write(b"\0" * (1 << 20))
    response = client.put("/datastore/label?image=phantom_a", files={"label": ("b.nii.gz", path.read_bytes())})
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith("'b.nii.gz' declares 1400x1000x1000")  # the client's name
    response = client.put("/datastore/?image=bomb", files={"file": ("b.nii.gz", path.read_bytes())})
    assert response.status_code == 413, response.text
    assert client.get("/datastore/label/versions?image=phantom_a").json()["versions"] == []


# ------------------------------------------------------------------------------------- immutable versions
def _label_bytes(client, image_id: str, value: int = 1) -> bytes:  # type: ignore[no-untyped-def]
    store = client.app.state.services.datastore
    image = nib.load(str(store.image_path(image_id)))
    array = np.zeros(image.shape, np.uint8)
    array[1:4, 1:4, 1:3] = value
    path = store.new_upload_path("t.nii.gz")
    nib.save(nib.Nifti1Image(array, image.affine), str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def test_a_changed_version_file_is_detected_not_served(client) -> None:  # type: ignore[no-untyped-def]
    saved = client.put(
        "/datastore/label?image=phantom_a", files={"label": ("a.nii.gz", _label_bytes(client, "phantom_a"))}
    )
    assert saved.status_code == 200
    store = client.app.state.services.datastore
    head = store.label_head("phantom_a")
    assert len(head.sha256) == 64
    assert client.get("/datastore/label?label=phantom_a").status_code == 200
    path = store.state_dir / head.relpath
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one byte changed behind the server's back
    path.write_bytes(bytes(data))
    response = client.get("/datastore/label?label=phantom_a")
    assert response.status_code == 500
    assert "changed on disk" in response.json()["detail"]


# ------------------------------------------------------------------------------------------- label values
@pytest.mark.parametrize("bad", [9, 1_000_000])
def test_label_values_outside_the_label_set_are_422_on_every_save_path(client, bad: int) -> None:  # type: ignore[no-untyped-def]
    store = client.app.state.services.datastore
    queue = client.app.state.services.fl_queue
    image = nib.load(str(store.image_path("phantom_a")))
    array = np.zeros(image.shape, np.int32)
    array[1:4, 1:4, 1:3] = 1
    array[5, 5, 5] = bad
    path = store.new_upload_path("t.nii.gz")
    nib.save(nib.Nifti1Image(array, image.affine), str(path))
    response = client.put("/datastore/label?image=phantom_a", files={"label": ("a.nii.gz", path.read_bytes())})
    path.unlink()
    assert response.status_code == 422, response.text
    assert str(bad) in response.json()["detail"] and "label set" in response.json()["detail"]
    # The interactive save path: a mask holding the bad value.
    opened = client.post("/interactive/sessions", json={"image": "phantom_a", "model": "cube"}).json()
    session = client.app.state.services.interactive.manager.get(opened["session_id"])
    session.mask = np.full(session.shape, bad % 256 or 255, np.uint8)
    saved = client.post(f"/interactive/sessions/{opened['session_id']}/save", json={})
    assert saved.status_code == 422 and "label set" in saved.json()["detail"], saved.text
    assert client.get("/datastore/label/versions?image=phantom_a").json()["versions"] == []
    assert sum(queue.count().values()) == 0  # never queued for federated training
    ok = client.put(
        "/datastore/label?image=phantom_a", files={"label": ("a.nii.gz", _label_bytes(client, "phantom_a", 2))}
    )
    assert ok.status_code == 200  # the app's own values (tumor = 2) are fine


def test_nifti_voxel_offset_far_into_a_gzip_stream_is_refused(tmp_path: Path) -> None:
    block = bytearray(nifti_header_only((4, 4, 4)))
    struct.pack_into("<f", block, 108, 3e9)  # skipping to it would inflate 3 GB
    path = tmp_path / "far.nii.gz"
    path.write_bytes(gzip.compress(bytes(block)))
    with pytest.raises(CorruptFileError, match="puts its voxels at byte"):
        read_volume(path)

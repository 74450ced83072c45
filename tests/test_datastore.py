"""The embedded datastore: discovery, versioned never-overwritten labels, atomic saves, next-sample queries."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_nifti

from annotation_server.datastore import LabelSource, LocalDatastore
from annotation_server.datastore import local as local_module
from annotation_server.errors import (
    ConflictError,
    CorruptFileError,
    GeometryMismatchError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedFormatError,
)
from annotation_server.imaging import Geometry, read_volume, write_volume


def _label_file(store: LocalDatastore, image_id: str, value: int = 1, name: str = "label.nii.gz") -> Path:
    """A label on the image's own grid, staged where uploads go."""
    image = nib.load(str(store.image_path(image_id)))
    array = np.zeros(image.shape, np.uint8)
    array[2:5, 2:5, 1:3] = value
    return write_nifti(store.new_upload_path(name), array, image.affine)


@pytest.fixture
def store(studies: Path) -> LocalDatastore:
    datastore = LocalDatastore(studies)
    datastore.rescan()
    yield datastore
    datastore.close()


def test_discovery_finds_files_and_dicom_folders_only(studies: Path, shared_data: Path) -> None:
    shutil.copytree(
        shared_data / "dcmqi_ct-3slice", studies / "ct3", ignore=shutil.ignore_patterns("*liver*", "*part*")
    )
    (studies / "notes.txt").write_text("x")
    (studies / "empty_folder").mkdir()
    volume = read_volume(studies / "phantom_a.nii.gz")
    write_volume(volume.array, volume.geometry, studies / "nrrd_case.nrrd")
    (studies / "labels" / "final").mkdir(parents=True)
    store = LocalDatastore(studies)
    report = store.rescan()
    assert report.added == ["ct3", "nrrd_case", "phantom_a", "phantom_b", "sample_ct"]
    assert store.image_geometry("nrrd_case").matches(store.image_geometry("phantom_a"))
    ct3 = store.get_image("ct3")
    assert ct3.kind == "dicom"
    assert store.image_info("ct3")["name"] == "ct3.nii.gz"  # DICOM series are downloaded as NIfTI
    path, name = store.image_download("ct3")
    assert name == "ct3.nii.gz" and read_volume(path).geometry.matches(store.image_geometry("ct3"))


def test_rescan_picks_up_new_and_removed_studies(store: LocalDatastore, studies: Path, sample_ct: Path) -> None:
    shutil.copy(sample_ct, studies / "new_case.nii.gz")
    (studies / "phantom_b.nii.gz").unlink()
    report = store.rescan()
    assert report.added == ["new_case"] and report.removed == ["phantom_b"]
    assert store.stats().total == 3
    shutil.copy(sample_ct, studies / "dropped_in.nii.gz")
    assert store.get_image("dropped_in").id == "dropped_in"  # found on first request, no explicit rescan


def test_labels_are_versioned_never_overwritten(store: LocalDatastore) -> None:
    first = store.save_label("phantom_a", _label_file(store, "phantom_a", 1), "a.nii.gz", author="ann1")
    second = store.save_label(
        "phantom_a",
        _label_file(store, "phantom_a", 2),
        "a.nii.gz",
        author="ann2",
        source=LabelSource(model="region_growing", model_version="1"),
    )
    assert (first.version, second.version) == (1, 2)
    assert store.label_head("phantom_a", "final").version == 2
    assert read_volume(store.label_file(first)).array.max() == 1  # v1 still on disk, unchanged
    assert read_volume(store.label_file(second)).array.max() == 2
    history = store.label_versions("phantom_a")
    assert [(v.version, v.author, v.source.model) for v in history] == [
        (1, "ann1", None),
        (2, "ann2", "region_growing"),
    ]
    assert first.sha256 != second.sha256
    latest = store.root / "labels" / "final" / "phantom_a.nii.gz"  # MONAI Label tooling reads this path
    assert read_volume(latest).array.max() == 2


def test_final_defines_labeled_and_tags_are_counted(store: LocalDatastore) -> None:
    store.save_label("phantom_a", _label_file(store, "phantom_a"), "a.nii.gz", tag="original")
    assert store.stats().completed == 0
    store.save_label("phantom_a", _label_file(store, "phantom_a"), "a.nii.gz", tag="final")
    store.save_label("phantom_b", _label_file(store, "phantom_b"), "b.nii.gz", tag="reviewer-2")
    stats = store.stats()
    assert stats.total == 3 and stats.completed == 1
    assert stats.label_tags == {"final": 1, "original": 1, "reviewer-2": 1}
    assert [p["image"].endswith("phantom_a.nii.gz") for p in store.train_pairs()] == [True]


def test_delete_label_retires_head_but_keeps_history(store: LocalDatastore) -> None:
    store.save_label("phantom_a", _label_file(store, "phantom_a"), "a.nii.gz")
    store.delete_label("phantom_a", "final")
    assert store.stats().completed == 0
    with pytest.raises(NotFoundError):
        store.label_head("phantom_a", "final")
    versions = store.label_versions("phantom_a")
    assert len(versions) == 1 and versions[0].deleted and store.label_file(versions[0]).is_file()
    again = store.save_label("phantom_a", _label_file(store, "phantom_a"), "a.nii.gz")
    assert again.version == 2  # numbering continues: a version number is never reused


def test_crash_while_placing_a_version_keeps_previous(store: LocalDatastore, monkeypatch: pytest.MonkeyPatch) -> None:
    good = store.save_label("phantom_a", _label_file(store, "phantom_a", 1), "a.nii.gz")

    def crash(source: Path, target: Path) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(local_module, "atomic_move", crash)
    with pytest.raises(OSError):
        store.save_label("phantom_a", _label_file(store, "phantom_a", 3), "a.nii.gz")
    monkeypatch.undo()
    head = store.label_head("phantom_a", "final")
    assert head.version == good.version and head.sha256 == good.sha256
    assert read_volume(store.label_file(head)).array.max() == 1
    assert len(store.label_versions("phantom_a")) == 1
    assert store.save_label("phantom_a", _label_file(store, "phantom_a", 4), "a.nii.gz").version == 2


def test_crash_before_index_commit_keeps_previous(store: LocalDatastore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save_label("phantom_a", _label_file(store, "phantom_a", 1), "a.nii.gz")
    original_insert = store.index.insert_label

    def crash(conn: sqlite3.Connection, label: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(store.index, "insert_label", crash)
    with pytest.raises(RuntimeError):
        store.save_label("phantom_a", _label_file(store, "phantom_a", 5), "a.nii.gz")
    monkeypatch.setattr(store.index, "insert_label", original_insert)
    reopened = LocalDatastore(store.root)
    assert reopened.label_head("phantom_a", "final").version == 1
    assert read_volume(reopened.root / "labels" / "final" / "phantom_a.nii.gz").array.max() == 1
    reopened.close()


def test_index_uses_wal_and_survives_reopen(store: LocalDatastore) -> None:
    store.save_label("phantom_a", _label_file(store, "phantom_a"), "a.nii.gz", info={"note": "kept"})
    mode = sqlite3.connect(store.index.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    store.close()
    reopened = LocalDatastore(store.root)
    assert reopened.label_head("phantom_a", "final").info["note"] == "kept"
    reopened.close()


def test_label_geometry_must_match(store: LocalDatastore) -> None:
    image = nib.load(str(store.image_path("phantom_a")))
    wrong_shape = write_nifti(store.new_upload_path("l.nii.gz"), np.zeros((5, 5, 5), np.uint8), image.affine)
    with pytest.raises(GeometryMismatchError, match="voxel grid"):
        store.save_label("phantom_a", wrong_shape, "l.nii.gz")
    flipped = image.affine.copy()
    flipped[0, 0] *= -1
    wrong_affine = write_nifti(store.new_upload_path("l.nii.gz"), np.zeros(image.shape, np.uint8), flipped)
    with pytest.raises(GeometryMismatchError):
        store.save_label("phantom_a", wrong_affine, "l.nii.gz")
    assert store.label_versions("phantom_a") == []


def test_cropped_seg_nrrd_is_padded_to_image_grid(store: LocalDatastore) -> None:
    """3D Slicer saves .seg.nrrd cropped to the segments' extent; it is padded back, voxel-exact."""
    geometry = store.image_geometry("phantom_a")
    crop_affine = geometry.affine.copy()
    crop_affine[:3, 3] = (geometry.affine @ np.array([3, 2, 1, 1]))[:3]
    staged = store.new_upload_path("c.seg.nrrd")
    write_volume(np.ones((4, 4, 4), np.uint8), Geometry((4, 4, 4), crop_affine), staged)
    saved = store.save_label("phantom_a", staged, "c.seg.nrrd")
    label = read_volume(store.label_file(saved))
    assert label.geometry.matches(geometry) and label.array.sum() == 64 and label.array[3, 2, 1] == 1
    assert label.array[2, 2, 1] == 0


def test_bad_label_values_and_files(store: LocalDatastore, tmp_path: Path) -> None:
    image = nib.load(str(store.image_path("phantom_a")))
    fractional = write_nifti(store.new_upload_path("f.nii.gz"), np.full(image.shape, 0.5, np.float32), image.affine)
    with pytest.raises(InvalidRequestError, match="whole numbers"):
        store.save_label("phantom_a", fractional, "f.nii.gz")
    truncated = store.new_upload_path("t.nii.gz")
    truncated.write_bytes(_label_file(store, "phantom_a").read_bytes()[:40])
    with pytest.raises(CorruptFileError):
        store.save_label("phantom_a", truncated, "t.nii.gz")
    with pytest.raises(UnsupportedFormatError):
        store.save_label("phantom_a", store.new_upload_path("x.png"), "x.png")
    with pytest.raises(NotFoundError):
        store.save_label("missing", _label_file(store, "phantom_a"), "a.nii.gz")


@pytest.mark.parametrize("bad", ["../../etc/passwd", "..", ".hidden", "a/b", "a\\b", "", "x" * 300])
def test_path_traversal_ids_are_refused(store: LocalDatastore, bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        store.get_image(bad)
    with pytest.raises(InvalidRequestError):
        store.label_head("phantom_a", bad or "..")


def test_add_image_idempotent_and_conflict(store: LocalDatastore, sample_ct: Path, studies: Path) -> None:
    def upload() -> Path:
        staged = store.new_upload_path("up.nii.gz")
        shutil.copy(sample_ct, staged)
        return staged

    record = store.add_image(upload(), "C:\\data\\up.nii.gz", author="slicer")
    assert record.id == "up" and (studies / "up.nii.gz").is_file()
    assert store.add_image(upload(), "up.nii.gz").id == "up"  # identical bytes: no-op
    store.save_label("up", _label_file(store, "up"), "l.nii.gz")
    other = store.new_upload_path("up.nii.gz")
    shutil.copy(studies / "phantom_a.nii.gz", other)
    with pytest.raises(ConflictError, match="saved labels"):
        store.add_image(other, "up.nii.gz")
    truncated = store.new_upload_path("bad.nii.gz")
    truncated.write_bytes(sample_ct.read_bytes()[:1000])
    with pytest.raises(CorruptFileError):
        store.add_image(truncated, "bad.nii.gz")
    assert not (studies / "bad.nii.gz").exists()


def test_delete_image_moves_to_trash(store: LocalDatastore, studies: Path) -> None:
    store.save_label("phantom_a", _label_file(store, "phantom_a"), "a.nii.gz")
    store.delete_image("phantom_a")
    assert not (studies / "phantom_a.nii.gz").exists()
    assert any(p.name.endswith("phantom_a.nii.gz") for p in store.trash_dir.iterdir())
    assert store.stats().total == 2 and store.stats().completed == 0
    assert all(store.label_file(v).is_file() for v in store.label_versions("phantom_a"))


def test_imports_monai_label_layout(studies: Path) -> None:
    store = LocalDatastore(studies)
    store.rescan()
    label = _label_file(store, "phantom_b", 3)
    (studies / "labels" / "final").mkdir(parents=True)
    shutil.move(label, studies / "labels" / "final" / "phantom_b.nii.gz")
    report = store.rescan()
    assert report.imported_labels == 1
    head = store.label_head("phantom_b", "final")
    assert head.author == "imported" and read_volume(store.label_file(head)).array.max() == 3
    assert store.rescan().imported_labels == 0  # adopted once


def test_next_sample_queries_skip_final_labels(store: LocalDatastore) -> None:
    assert store.first_unlabeled() == "phantom_a"
    assert store.first_unlabeled(last=True) == "sample_ct"
    store.save_label("phantom_a", _label_file(store, "phantom_a"), "a.nii.gz")
    assert store.first_unlabeled() == "phantom_b"
    rng = random.Random(0)
    picks = {store.random_unlabeled("random", rng) for _ in range(30)}
    assert picks == {"phantom_b", "sample_ct"}
    store.save_label("phantom_b", _label_file(store, "phantom_b"), "b.nii.gz")
    store.save_label("sample_ct", _label_file(store, "sample_ct"), "s.nii.gz")
    assert store.first_unlabeled() is None and store.random_unlabeled("random", rng) is None


def test_a_failed_commit_is_rolled_back_and_the_connection_stays_usable(tmp_path: Path) -> None:
    from annotation_server.datastore.sqlite import immediate_transaction, open_database

    schema = (
        "CREATE TABLE p (id INTEGER PRIMARY KEY); "
        "CREATE TABLE c (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);"
    )
    conn = open_database(tmp_path / "db.sqlite", schema)
    with pytest.raises(sqlite3.IntegrityError), immediate_transaction(conn):
        conn.execute("INSERT INTO c VALUES (1)")  # a deferred foreign key: COMMIT itself fails
    assert not conn.in_transaction
    with immediate_transaction(conn):
        conn.execute("INSERT INTO p VALUES (1)")
    assert conn.execute("SELECT COUNT(*) FROM c").fetchone()[0] == 0
    conn.close()

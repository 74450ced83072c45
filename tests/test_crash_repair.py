"""After a kill between a save's index commit and its `labels/<tag>/<id>` update, start-up repairs the link."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from annotation_server.datastore import LocalDatastore
from annotation_server.datastore.scanner import LABELS_DIRNAME

REPO = Path(__file__).resolve().parents[1]


def _save(store: LocalDatastore, value: int) -> None:
    image = nib.load(str(store.image_path("phantom_a")))
    array = np.zeros(image.shape, np.uint8)
    array[2:5, 2:5, 2:4] = value
    upload = store.new_upload_path("l.nii.gz")
    nib.save(nib.Nifti1Image(array, image.affine), str(upload))
    store.save_label("phantom_a", upload, "l.nii.gz")


def test_stale_and_missing_links_are_repaired_from_the_index(studies: Path) -> None:
    store = LocalDatastore(studies)
    store.rescan()
    _save(store, 1)
    _save(store, 2)
    head = store.label_head("phantom_a")
    assert head.version == 2
    link = studies / LABELS_DIRNAME / "final" / "phantom_a.nii.gz"
    v1 = store.label_file(store.label_version("phantom_a", "final", 1))
    # What a kill after the v2 commit but before the link update leaves: the link still names v1.
    link.unlink()
    os.link(v1, link)
    assert store.repair_published_heads() == 1
    assert os.path.samefile(link, store.label_file(head))
    link.unlink()  # a link lost altogether
    assert store.repair_published_heads() == 1 and link.read_bytes() == store.label_file(head).read_bytes()
    assert store.repair_published_heads() == 0  # nothing left to do
    # A kill after retiring the label in the index but before removing its file.
    store.index.tombstone_head("phantom_a", "final")
    assert link.exists()
    assert store.repair_published_heads() == 1 and not link.exists()
    assert [v.version for v in store.label_versions("phantom_a")] == [1, 2]  # the history stays
    _save(store, 3)  # v3, the head again
    head = store.label_head("phantom_a")
    link.unlink()
    os.link(v1, link)
    store.close()
    # The server does it at start, before anything is served.
    from conftest import TEST_APP

    from annotation_server.server import open_datastore
    from annotation_server.settings import Settings

    reopened = open_datastore(Settings(studies=studies, rescan_interval_s=0), TEST_APP)
    assert os.path.samefile(link, reopened.label_file(head))
    reopened.close()


@pytest.mark.slow
def test_kill_9_during_concurrent_saves_loses_no_acknowledged_save() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import crash_saves

    report = crash_saves.main(["--cycles", "1", "--writers", "3", "--images", "4", "--max-run-s", "2"])
    print(json.dumps(report))
    assert report["acknowledged_saves"] > 0
    assert report["intact"] == report["acknowledged_saves"]
    assert report["missing"] == report["corrupt"] == 0
    assert report["stale_links_after_restart"] == report["links_not_matching_head"] == 0
    assert report["integrity_ok"] == 1

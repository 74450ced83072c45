"""Locked labels: a prompt never changes the voxels of a label the annotator locked (`locked_labels`)."""

from __future__ import annotations

import numpy as np
import pytest
from test_interactive import Client


def _lasso(viewer: Client, label: str, k: int, square: tuple[int, int, int, int], **extra) -> dict:  # type: ignore[no-untyped-def]
    i0, j0, i1, j1 = square
    polygon = [[i0, j0], [i1, j0], [i1, j1], [i0, j1]]
    prompt = {"type": "lasso", "axis": 2, "index": k, "polygon": polygon, "label": label, **extra}
    return viewer.send("prompt", {"prompt": prompt})


def test_locked_label_survives_points_and_lassos(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    _lasso(viewer, "tumor", 5, (4, 4, 6, 6))  # a 3x3 tumor patch on slice 5
    tumor = viewer.mask == 2
    assert tumor.sum() == 9

    # A kidney click whose 3x3x3 cube covers the tumor patch: with the tumor locked, not one voxel changes.
    viewer.point((5, 5, 5), prompt={"label": "kidney", "locked_labels": ["tumor"]})
    assert np.array_equal(viewer.mask == 2, tumor)
    assert (viewer.mask == 1).sum() == 27 - 9  # the rest of the cube is kidney
    # A kidney lasso and an erasing lasso over it: the tumor stays.
    _lasso(viewer, "kidney", 5, (2, 2, 8, 8), locked_labels=["tumor"])
    _lasso(viewer, "kidney", 5, (2, 2, 8, 8), positive=False, locked_labels=["tumor"])
    assert np.array_equal(viewer.mask == 2, tumor)
    assert np.array_equal(viewer.mask, viewer.server_mask())

    # The same click without the lock overwrites the tumor: the lock is what protected it.
    viewer.point((5, 5, 5), prompt={"label": "kidney"}, new_object=True)
    assert (viewer.mask == 2).sum() < 9


def test_locking_the_label_being_drawn_or_an_unknown_one_is_a_clear_422(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    body = {"prompt": {"type": "point", "point": [5, 5, 5], "label": "kidney", "locked_labels": ["kidney"]}}
    refused = viewer.send("prompt", body, status=422)
    assert "label 'kidney' is locked: unlock it" in refused["detail"]
    body["prompt"]["locked_labels"] = ["liver"]
    unknown = viewer.send("prompt", body, status=422)
    assert "unknown label 'liver'" in unknown["detail"]
    assert viewer.mask.max() == 0


def test_reset_keeps_locked_labels_and_undo_brings_the_rest_back(client) -> None:  # type: ignore[no-untyped-def]
    viewer = Client(client)
    _lasso(viewer, "tumor", 5, (4, 4, 6, 6))
    viewer.point((10, 10, 5), prompt={"label": "kidney"})
    before = viewer.mask.copy()
    viewer.send("reset", {"locked_labels": ["tumor"]})
    assert np.array_equal(viewer.mask, np.where(before == 2, 2, 0)) and (before == 1).any()
    assert np.array_equal(viewer.mask, viewer.server_mask())
    viewer.send("undo")
    assert np.array_equal(viewer.mask, before)
    viewer.send("reset")  # no body: everything goes, as before
    assert viewer.mask.max() == 0
    refused = viewer.send("reset", {"locked_labels": ["liver"]}, status=422)
    assert "unknown label 'liver'" in refused["detail"]


def test_an_app_hierarchy_keeps_the_parts_of_the_label_being_drawn(tmp_path, studies) -> None:  # type: ignore[no-untyped-def]
    """KiTS (the kidney app's `label_parts`): tumors and cysts lie inside the kidney region, so a kidney refined
    over a drawn tumor keeps the tumor without the annotator locking it; drawing the tumor itself still may
    overwrite kidney voxels, and an app without the hierarchy behaves as before."""
    from conftest import TEST_APP
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import AppSpec
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    kits = AppSpec(
        name="kits", description="", labels=TEST_APP.labels, models=TEST_APP.models, label_parts={"kidney": ("tumor",)}
    )
    settings = Settings(studies=studies, data_dir=tmp_path / "d", rescan_interval_s=0)
    with TestClient(create_app(settings, kits)) as http:
        viewer = Client(http)
        _lasso(viewer, "tumor", 5, (4, 4, 6, 6))
        tumor = viewer.mask == 2
        viewer.point((5, 5, 5), prompt={"label": "kidney"})  # no locked_labels
        assert np.array_equal(viewer.mask == 2, tumor) and (viewer.mask == 1).sum() == 27 - 9
        viewer.point((5, 5, 5), prompt={"label": "tumor"}, new_object=True)  # the part over its whole: allowed
        assert (viewer.mask == 2).sum() == 27
        assert np.array_equal(viewer.mask, viewer.server_mask())
    with pytest.raises(ValueError, match=r"unknown labels \['liver'\]"):
        AppSpec(name="bad", description="", labels=TEST_APP.labels, models=[], label_parts={"kidney": ("liver",)})

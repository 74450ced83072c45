"""Fixtures of the geometry conformance suite: the real CT (full body and kidney crop) and loaded models."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotation_server.inference.bundle_task import BundleSegmentationTask
from annotation_server.inference.click_task import BundleClickTask
from geometry.geometry_cases import KIDNEY_BOX, Case, crop, load_full

REPO = Path(__file__).resolve().parents[2]
LABELS = {"kidney": 1, "tumor": 2, "cyst": 3}


@pytest.fixture(scope="session")
def full_case(shared_data: Path) -> Case:
    return load_full(shared_data)


@pytest.fixture(scope="session")
def crop_case(full_case: Case) -> Case:
    """The real CT's box around both kidneys (88 x 64 x 52 voxels of 3 mm), affine moved with the crop."""
    return crop(full_case, KIDNEY_BOX, name="kidney_box")


@pytest.fixture(scope="session")
def kidney_seg() -> BundleSegmentationTask:
    task = BundleSegmentationTask(REPO / "models" / "kidney_seg", name="kidney_seg", labels=LABELS)
    task.load("cpu")
    return task


@pytest.fixture(scope="session")
def kidney_click() -> BundleClickTask:
    task = BundleClickTask(REPO / "models" / "kidney_click", name="kidney_click", labels=LABELS)
    task.load("cpu")
    return task

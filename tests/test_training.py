"""Training smoke tests (a few steps on tiny phantoms): the loop runs, the bundle it writes is servable."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from annotation_apps.kidney.training import RecipeRun, train_click, train_seg, truncate_scan
from annotation_server.inference.bundle_task import BundleSegmentationTask
from annotation_server.inference.click_task import BundleClickTask
from annotation_server.inference.params import InferParams
from annotation_server.learning.trainer import TrainSettings
from annotation_server.phantoms import PhantomConfig, generate_phantom

TINY = RecipeRun(train_phantoms=2, val_phantoms=1, batch_size=1, phantom_config=PhantomConfig.easy())


@pytest.mark.parametrize("trainer", [train_seg, train_click], ids=["kidney_seg", "kidney_click"])
@pytest.mark.slow
def test_few_steps_write_a_loadable_bundle(tmp_path: Path, trainer) -> None:  # type: ignore[no-untyped-def]
    progress = []
    history = trainer(tmp_path / "bundle", TrainSettings(steps=3, val_every=3, threads=1), TINY, progress.append)
    assert [p.step for p in progress] == [1, 2, 3] and len(history.losses) == 3
    assert history.validation and 0.0 <= history.best_dice <= 1.0
    metadata = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert len(metadata["annotation_server"]["model_sha256"]) == 64
    phantom = generate_phantom(7, PhantomConfig.easy())
    from annotation_server.imaging import Geometry, Volume

    volume = Volume(phantom.image, Geometry(phantom.image.shape, phantom.affine))
    if trainer is train_seg:
        task = BundleSegmentationTask(tmp_path / "bundle")
        mask = task.infer(volume, InferParams()).mask
    else:
        click = tuple(int(v) for v in np.argwhere(phantom.label == 1)[0])
        task = BundleClickTask(tmp_path / "bundle")
        mask = task.infer(volume, InferParams(foreground=[click])).mask
    assert mask.shape == phantom.image.shape


def test_truncated_scan_keeps_world_positions() -> None:
    phantom = generate_phantom(3, PhantomConfig.easy())
    image, label, affine = truncate_scan(phantom.image, phantom.label, phantom.affine, random.Random(1))
    assert image.shape[2] < phantom.image.shape[2] and label.shape == image.shape
    start = np.linalg.solve(phantom.affine, affine[:, 3])[:3]
    assert np.allclose(start[:2], 0) and float(start[2]).is_integer()
    k = int(start[2])
    assert np.array_equal(image, phantom.image[:, :, k : k + image.shape[2]])
    assert label.any()  # the window runs through the kidneys

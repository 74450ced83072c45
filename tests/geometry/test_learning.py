"""Scoring and fine-tuning see the same anatomy whatever the storage order of the image.

Uncertainty scores are computed in the model's space; a flipped or permuted copy of the real CT's kidney box
(LPS, the standard axial DICOM series) must reach that space on the same voxels, so its scores equal
the RAS image's (tta: deterministic, to 1e-6; epistemic: Monte-Carlo dropout seeded alike, within 0.02).

Fine-tuning puts image and label through the same transforms: samples made from LPS and DICOM copies with
their labels are identical, in model space, to the RAS copy's, and a few fine-tuning steps on them give a
version whose Dice on the RAS image is the RAS-trained version's within noise (0.02) and not below the
shipped model's by more than that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from annotation_server.imaging import read_volume, write_volume
from annotation_server.learning.finetune import LabeledImage, load_network
from annotation_server.learning.trainer import TrainSettings, train
from annotation_server.learning.uncertainty import EpistemicScorer, TTAScorer
from geometry.geometry_cases import Case, reorient, write_dicom_series

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_uncertainty_scores_do_not_depend_on_storage_order(crop_case: Case, kidney_seg, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_dicom_series(crop_case, tmp_path / "axial", "axial")
    dicom = read_volume(tmp_path / "axial")
    volumes = {"RAS": crop_case.volume, "LPS": reorient(crop_case, "LPS").volume, "DICOM axial": dicom}
    tta, epistemic = TTAScorer(), EpistemicScorer(samples=2)
    tta_scores = {name: tta.score(kidney_seg, volume).value for name, volume in volumes.items()}
    for value in tta_scores.values():
        assert value == pytest.approx(tta_scores["RAS"], abs=1e-6), tta_scores
    epistemic_scores = {}
    for name in ("RAS", "DICOM axial"):
        torch.manual_seed(0)
        epistemic_scores[name] = epistemic.score(kidney_seg, volumes[name]).value
    assert epistemic_scores["DICOM axial"] == pytest.approx(epistemic_scores["RAS"], abs=0.02), epistemic_scores


def _items(case: Case, folder: Path, kinds: list[str]) -> list[LabeledImage]:
    """Labeled images of `case` stored as each of `kinds` (axcodes for NIfTI, or 'dicom'), label on its grid."""
    items = []
    for n, kind in enumerate(kinds):
        if kind == "dicom":
            image_path = folder / f"{n}-dicom"
            stored = write_dicom_series(case, image_path, "axial")
        else:
            stored = reorient(case, kind)
            image_path = write_volume_path(stored.image, stored, folder / f"{n}-{kind}.nii.gz")
        label_path = write_volume_path(stored.truth.astype(np.uint8), stored, folder / f"{n}-{kind}-label.nii.gz")
        items.append(
            LabeledImage(image_id=f"{n}-{kind}", image=image_path, label=label_path, label_version=1, label_sha256="x")
        )
    return items


def write_volume_path(array: np.ndarray, case: Case, path: Path) -> Path:
    write_volume(array, case.geometry, path)
    return path


def test_fine_tuning_on_lps_and_dicom_matches_ras(crop_case: Case, tmp_path: Path) -> None:
    from annotation_apps.kidney.fine_tune import KidneySegFineTune

    recipe = KidneySegFineTune()
    ras_samples = recipe.samples(_items(crop_case, tmp_path, ["RAS", "RAS"]))
    other_samples = recipe.samples(_items(crop_case, tmp_path, ["LPS", "dicom"]))
    for ras, other in zip(ras_samples, other_samples, strict=True):
        assert torch.equal(torch.as_tensor(ras["image"]), torch.as_tensor(other["image"]))
        assert torch.equal(torch.as_tensor(ras["label"]), torch.as_tensor(other["label"]))
        assert np.allclose(np.asarray(ras["image"].affine), np.asarray(other["image"].affine))
    validate = recipe.validator(ras_samples[:1])
    base = load_network(REPO / "models" / "kidney_seg")
    with torch.no_grad():
        shipped = validate(base.eval())
    results = {}
    for name, samples in (("RAS", ras_samples), ("LPS+DICOM", other_samples)):
        network = load_network(REPO / "models" / "kidney_seg")
        settings = TrainSettings(steps=3, learning_rate=1e-4, val_every=3, seed=0, threads=1)
        history = train(network, recipe.batches(samples, 1, seed=0), settings, validate)
        results[name] = history.validation[-1][1] if history.validation else validate(network.eval())
    assert results["LPS+DICOM"] == pytest.approx(results["RAS"], abs=0.02), results
    assert results["LPS+DICOM"] >= shipped - 0.02, (shipped, results)

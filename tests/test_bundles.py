"""MONAI bundles load by path, are checksum-verified, and write results on the input's exact grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_nifti

from annotation_server.checksums import file_sha256
from annotation_server.errors import CorruptFileError, NotFoundError
from annotation_server.imaging import read_volume
from annotation_server.inference.bundle import load_bundle
from annotation_server.inference.bundle_task import BundleSegmentationTask
from annotation_server.inference.params import InferParams

HU_THRESHOLD = 100.0  # the test network labels voxels above this


def _zoo_inference_config(network_def: dict, pixdim: list[float], roi: int = 32) -> dict:
    """The shape of a Model Zoo CT bundle's configs/inference.json (spleen_ct_segmentation style)."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$list(sorted(glob.glob('/nonexistent/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": HU_THRESHOLD - 100,
                    "a_max": HU_THRESHOLD + 100,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [roi, roi, roi],
            "sw_batch_size": 2,
            "overlap": 0.25,
        },
        "postprocessing": {
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
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg"},
            ],
        },
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@missing",
            "network": "@network",
        },
    }


def _metadata(labels: dict[str, str], sha: str | None = None) -> dict:
    meta = {
        "version": "0.3.1",
        "task": "test CT segmentation",
        "description": "a bundle in the Model Zoo layout",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1}},
            "outputs": {
                "pred": {"type": "image", "format": "segmentation", "num_channels": len(labels), "channel_def": labels}
            },
        },
    }
    if sha:
        meta["annotation_server"] = {"model_sha256": sha}
    return meta


def make_threshold_bundle(root: Path, pixdim: list[float], checksum: bool = True) -> Path:
    """A 1x1x1 convolution whose argmax is 'HU > threshold': the right answer is known for every voxel."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    net = torch.nn.Conv3d(1, 2, kernel_size=1)
    with torch.no_grad():
        net.weight[:] = torch.tensor([-10.0, 10.0]).view(2, 1, 1, 1, 1)
        net.bias[:] = torch.tensor([5.0, -5.0])
    torch.save(net.state_dict(), root / "models" / "model.pt")
    network_def = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    (root / "configs" / "inference.json").write_text(json.dumps(_zoo_inference_config(network_def, pixdim)))
    sha = file_sha256(root / "models" / "model.pt") if checksum else None
    (root / "configs" / "metadata.json").write_text(json.dumps(_metadata({"0": "background", "1": "bright"}, sha)))
    return root


@pytest.mark.slow
def test_model_zoo_unet_bundle_loads_by_path(tmp_path: Path, sample_ct: Path) -> None:
    """spleen_ct_segmentation's layout and config, random weights: loads and runs with no code change."""
    root = tmp_path / "spleen_ct_segmentation"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    network_def = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [8, 16, 32],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "batch",
    }
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    unet = UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm="batch")
    torch.save({"model": unet.state_dict()}, root / "models" / "model.pt")  # a checkpoint dict, as some zoo bundles
    (root / "configs" / "inference.json").write_text(json.dumps(_zoo_inference_config(network_def, [4.0, 4.0, 4.0])))
    (root / "configs" / "metadata.json").write_text(json.dumps(_metadata({"0": "background", "1": "spleen"})))
    task = BundleSegmentationTask(root)
    assert task.labels == {"spleen": 1} and task.version == "0.3.1" and task.name == "spleen_ct_segmentation"
    volume = read_volume(sample_ct)
    result = task.infer(volume, InferParams())
    assert result.mask.shape == volume.geometry.shape and set(np.unique(result.mask)) <= {0, 1}
    assert not (root / "eval").exists()  # the bundle's SaveImaged was not run


@pytest.mark.parametrize("pixdim", [[3.0, 3.0, 3.0], [1.7, 2.3, 4.1]], ids=["same-spacing", "resampled"])
@pytest.mark.slow
def test_result_on_input_grid_for_ras_and_lps(
    tmp_path: Path, sample_ct: Path, shared_data: Path, pixdim: list[float]
) -> None:
    task = BundleSegmentationTask(make_threshold_bundle(tmp_path / "b", pixdim))
    for path in (sample_ct, shared_data / "totalsegmentator" / "example_mr_sm.nii.gz"):
        volume = read_volume(path)
        truth = volume.array > HU_THRESHOLD
        mask = task.infer(volume, InferParams()).mask.astype(bool)
        assert mask.shape == volume.geometry.shape
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        if pixdim == [3.0, 3.0, 3.0]:
            assert np.array_equal(mask, truth), f"{path.name}: orientation round trip must be voxel-exact"
        else:
            assert dice > 0.85, f"{path.name}: Dice {dice:.3f} after resampling: a flip or shift would be far lower"
        flipped = truth[::-1]
        assert dice > 2 * (mask & flipped).sum() / (mask.sum() + flipped.sum())  # not mirrored


def test_anisotropic_oblique_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    array = rng.normal(0, 30, size=(40, 30, 12)).astype(np.float32)
    array[10:25, 8:20, 3:9] = 400
    affine = np.array([[0, -0.9, 0, 50], [-1.1, 0, 0, 20], [0, 0, 4.5, -30], [0, 0, 0, 1]])  # PIS-ish, permuted
    path = write_nifti(tmp_path / "aniso.nii.gz", array, affine)
    volume = read_volume(path)
    task = BundleSegmentationTask(make_threshold_bundle(tmp_path / "b", [1.0, 1.0, 2.0]))
    mask = task.infer(volume, InferParams()).mask.astype(bool)
    truth = array > HU_THRESHOLD
    assert mask.shape == array.shape
    assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9


def test_result_file_through_engine_keeps_header(tmp_path: Path, sample_ct: Path) -> None:
    """End to end through the API: the written result has the input's shape and affine, bit for bit."""
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import AppSpec
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(sample_ct, studies / "ct.nii.gz")
    task = BundleSegmentationTask(make_threshold_bundle(tmp_path / "b", [2.0, 2.0, 2.0]), name="bright")
    spec = AppSpec(name="b", description="", labels={"bright": 1}, models=[task])
    with TestClient(create_app(Settings(studies=studies, data_dir=tmp_path / "d", rescan_interval_s=0), spec)) as c:
        response = c.post("/infer/bright?image=ct&output=image")
        assert response.status_code == 200
        (tmp_path / "out.nii.gz").write_bytes(response.content)
        info = c.get("/info/").json()["models"]["bright"]
        assert info["version"] == "0.3.1" and info["config"]["sha256"] == task.bundle.sha256
        weights = c.get("/model/bright")
        assert weights.content == task.bundle.weights.read_bytes()
        assert c.get("/model/info/bright").json()["checksum"] == f"SHA256:{task.bundle.sha256}"
    written, source = nib.load(str(tmp_path / "out.nii.gz")), nib.load(str(sample_ct))
    assert written.shape == source.shape and np.array_equal(written.affine, source.affine)


def test_corrupted_weights_are_refused(tmp_path: Path) -> None:
    root = make_threshold_bundle(tmp_path / "b", [3.0, 3.0, 3.0])
    weights = root / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="corrupted or was replaced"):
        load_bundle(root)


def test_missing_parts_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    root = make_threshold_bundle(tmp_path / "b", [3.0, 3.0, 3.0])
    (root / "models" / "model.pt").unlink()
    with pytest.raises(NotFoundError, match="weights"):
        load_bundle(root)


def test_unverified_bundle_still_loads(tmp_path: Path) -> None:
    bundle = load_bundle(make_threshold_bundle(tmp_path / "b", [3.0, 3.0, 3.0], checksum=False))
    assert len(bundle.sha256) == 64


def make_guidance_echo_bundle(root: Path, pixdim: list[float], sigma_mm: float = 6.0) -> Path:
    """A click bundle whose 'network' returns the foreground guidance blob: the mask must sit on the click."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    net = torch.nn.Conv3d(3, 2, kernel_size=1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 1] = -10.0
        net.weight[1, 1] = 10.0
        net.bias[:] = torch.tensor([5.0, -5.0])  # argmax 1 where foreground guidance > 0.5
    torch.save(net.state_dict(), root / "models" / "model.pt")
    keys = ["image", "guidance"]
    config = {
        "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 3, "out_channels": 2, "kernel_size": 1},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "EnsureChannelFirstd", "keys": keys},
                {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": keys, "pixdim": pixdim, "mode": ["bilinear", "bilinear"]},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -200,
                    "a_max": 300,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
                {"_target_": "ConcatItemsd", "keys": keys, "name": "net_input", "dim": 0},
            ],
        },
        "inferer": {"_target_": "SimpleInferer"},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    meta = _metadata({"0": "background", "1": "object"}, file_sha256(root / "models" / "model.pt"))
    meta["annotation_server"].update({"input_key": "net_input", "roi_mm": [90, 90, 90], "guidance_sigma_mm": sigma_mm})
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("pixdim", [[3.0, 3.0, 3.0], [2.0, 2.5, 1.5]], ids=["same-spacing", "resampled"])
def test_click_lands_where_clicked_ras_and_lps(
    tmp_path: Path, sample_ct: Path, shared_data: Path, pixdim: list[float]
) -> None:
    from annotation_server.inference.click_task import BundleClickTask

    task = BundleClickTask(make_guidance_echo_bundle(tmp_path / "c", pixdim), labels={"kidney": 1})
    for path, click in (
        (sample_ct, (81, 38, 8)),
        (shared_data / "totalsegmentator" / "example_mr_sm.nii.gz", (30, 60, 12)),
    ):
        volume = read_volume(path)
        result = task.infer(volume, InferParams(foreground=[click]))
        mask = result.mask.astype(bool)
        assert mask.shape == volume.geometry.shape and mask[click]
        centre = np.array(np.nonzero(mask)).mean(axis=1)
        assert np.all(np.abs(centre - np.array(click)) <= 1.0), (path.name, centre, click)
        assert result.label_names == {"kidney": 1}
        assert 5 < mask.sum() < 200  # a blob of ~7 mm radius at 3 mm voxels, not the whole ROI


def test_server_starts_without_a_corrupted_model_and_says_why(tmp_path: Path, sample_ct: Path) -> None:
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import AppSpec
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    good = make_threshold_bundle(tmp_path / "good_model", [3.0, 3.0, 3.0])
    bad = make_threshold_bundle(tmp_path / "bad_model", [3.0, 3.0, 3.0])
    (bad / "models" / "model.pt").write_bytes(b"not the weights")
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(sample_ct, studies / "ct.nii.gz")
    spec = AppSpec(name="x", description="", labels={"bright": 1}, models=[])
    settings = Settings(studies=studies, data_dir=tmp_path / "d", model_dirs=[good, bad], rescan_interval_s=0)
    with TestClient(create_app(settings, spec)) as client:
        info = client.get("/info/").json()
        assert list(info["models"]) == ["good_model"]
        assert "corrupted or was replaced" in info["server"]["failed_models"]["bad_model"]
        assert client.post("/infer/bad_model?image=ct").status_code == 404
        assert client.post("/infer/good_model?image=ct&output=json").status_code == 200


@pytest.mark.parametrize(
    "affine",
    [np.array([[0, -0.9, 0, 50], [-1.1, 0, 0, 20], [0, 0, 4.5, -30], [0, 0, 0, 1]]), "oblique"],
    ids=["permuted", "oblique"],
)
def test_click_on_permuted_and_oblique_grids(tmp_path: Path, affine) -> None:  # type: ignore[no-untyped-def]
    from annotation_server.imaging import Geometry, Volume
    from annotation_server.inference.click_task import BundleClickTask

    if isinstance(affine, str):
        affine = np.eye(4)
        affine[:3, :3] = nib.eulerangles.euler2mat(0.3, 0.2, -0.25) @ np.diag([1.2, 0.9, 3.0])
    array = np.zeros((50, 45, 20), dtype=np.float32)
    volume = Volume(array, Geometry(array.shape, affine))
    task = BundleClickTask(make_guidance_echo_bundle(tmp_path / "c", [2.0, 2.0, 2.0]), labels={"kidney": 1})
    click = (25, 20, 10)
    mask = task.infer(volume, InferParams(foreground=[click])).mask.astype(bool)
    assert mask[click]
    world = (affine @ np.c_[np.argwhere(mask), np.ones(mask.sum())].T)[:3]
    centre = affine @ np.array([*click, 1.0])
    assert np.linalg.norm(world.mean(axis=1) - centre[:3]) < 2.5  # the blob sits on the click in millimetres

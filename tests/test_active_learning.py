"""Uncertainty-based active learning: the scorers, the score cache, the background job, the strategies, the API.

CI-sized: kidney-level crops of a few procedural phantoms (96x96x48 voxels at 3 mm), the shipped `kidney_seg`
model, few dropout samples. Service logic (cache, locking, fallback, broken images) uses a scorer whose scores
are chosen by the test, so each assertion checks the plumbing and not the model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from annotation_models import bundle_path
from annotation_server.app_spec import AppSpec
from annotation_server.datastore import LocalDatastore
from annotation_server.imaging import Volume, read_volume
from annotation_server.inference.bundle_task import BundleSegmentationTask
from annotation_server.inference.model_sources import BundleModel
from annotation_server.inference.task import InferTask
from annotation_server.learning.active_learning import ActiveLearningService
from annotation_server.learning.reservations import Reservations
from annotation_server.learning.score_cache import ScoreCache
from annotation_server.learning.scoring import ScoringService
from annotation_server.learning.uncertainty import EpistemicScorer, TTAScorer, UncertaintyScore
from annotation_server.learning.uncertainty_strategies import uncertainty_strategies
from annotation_server.phantoms import Phantom, PhantomConfig, generate_phantom
from annotation_server.server import create_app
from annotation_server.settings import Settings

CROP = (96, 96, 48)


def kidney_crop(phantom: Phantom, size: tuple[int, int, int] = CROP) -> tuple[np.ndarray, np.ndarray]:
    """The box of `size` voxels centred between the kidneys (image and its affine), like a kidney-level scan."""
    centers = np.array(list(phantom.meta["kidney_centers_mm"].values()), dtype=float)
    middle = np.linalg.inv(phantom.affine) @ np.append(centers.mean(axis=0), 1.0)
    start = [
        int(np.clip(round(c - s / 2), 0, max(n - s, 0)))
        for c, s, n in zip(middle[:3], size, phantom.image.shape, strict=True)
    ]
    box = tuple(slice(b, b + s) for b, s in zip(start, size, strict=True))
    affine = phantom.affine.copy()
    affine[:3, 3] = (phantom.affine @ np.array([*start, 1.0]))[:3]
    return np.ascontiguousarray(phantom.image[box]), affine


def write_image(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def easy_phantom(seed: int) -> Phantom:
    return generate_phantom(seed, PhantomConfig.easy())


def ood_phantom(seed: int, noise_hu: float = 250.0) -> Phantom:
    """Clearly out of distribution: an easy phantom under extreme noise (training noise is at most 30 HU).

    The generator's own EXTREME_NOISE draws 100-250 HU at random; below ~200 HU the kidney model still
    segments well (so the image is not out of *its* distribution), hence a fixed strength here.
    """
    phantom = generate_phantom(seed, PhantomConfig.easy())
    noise = np.random.default_rng(seed).normal(0.0, noise_hu, phantom.image.shape)
    phantom.image = np.clip(phantom.image + noise, -1024, 3071).astype(np.int16)
    return phantom


@pytest.fixture(scope="module")
def seg_task() -> Iterator[BundleSegmentationTask]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; restored for the rest of the suite
    task = BundleSegmentationTask(bundle_path("kidney_seg"), name="kidney_seg")
    task.load("cpu")
    yield task
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("phantoms")
    made = {f"easy_{s}": easy_phantom(s) for s in (0, 1)}
    made["ood_noise"] = ood_phantom(2)
    return {name: write_image(folder / f"{name}.nii.gz", *kidney_crop(p)) for name, p in made.items()}


# ---------------------------------------------------------------------------------------------- the scorers
@pytest.mark.parametrize("scorer", [EpistemicScorer(samples=4), TTAScorer()], ids=["epistemic", "tta"])
@pytest.mark.slow
def test_scorers_rank_an_out_of_distribution_phantom_above_easy_ones(
    scorer: Any, seg_task: BundleSegmentationTask, phantom_files: dict[str, Path]
) -> None:
    scores = {name: scorer.score(seg_task, read_volume(path)) for name, path in phantom_files.items()}
    values = {name: s.value for name, s in scores.items()}
    print(scorer.method, {k: round(v, 4) for k, v in values.items()})
    assert all(0.0 <= v <= 1.0 for v in values.values())
    easy = [v for name, v in values.items() if name.startswith("easy")]
    assert values["ood_noise"] > 2 * max(easy), values
    assert values["ood_noise"] > max(easy) + 0.1, values
    assert scores["easy_0"].details["foreground_ml"] > 50  # the model sees kidneys there: not a degenerate case
    # The served network stays deterministic: no hooks, every module in eval mode (clicks share it).
    network = seg_task.runtime.network  # type: ignore[union-attr]
    assert not any(m._forward_hooks for m in network.modules())
    assert not any(m.training for m in network.modules())


def test_epistemic_uses_trained_dropout_layers_when_the_network_has_them() -> None:
    from annotation_server.learning.uncertainty import enable_mc_dropout

    with_dropout = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.Dropout(0.3), torch.nn.Conv3d(4, 2, 1))
    assert enable_mc_dropout(with_dropout, 0.05) == {"dropout": "trained layers", "layers": 1}
    assert [m.training for m in with_dropout] == [False, True, False]

    without = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.Conv3d(4, 4, 3), torch.nn.Conv3d(4, 2, 1))
    assert enable_mc_dropout(without, 0.5)["layers"] == 1  # only the inner convolution, not input or logits
    x = torch.ones(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert not torch.equal(without(x), without(x))  # stochastic at inference


# ---------------------------------------------------------------------------------------------- the service
class ChosenScores:
    """A scorer whose score per image is set by the test (from the image's constant voxel value)."""

    method = "chosen"
    description = "test scorer"

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[float] = []
        self.gate = gate

    def config(self) -> dict[str, Any]:
        return {}

    def score(self, task: InferTask, volume: Volume, should_stop: Callable[[], bool] = lambda: False) -> Any:
        if self.gate is not None:
            assert self.gate.wait(20), "test gate never opened"
        value = float(volume.array.flat[0]) / 100.0
        self.calls.append(value)
        return UncertaintyScore(value, {"version_seen": task.version})


def make_store(folder: Path, scores: dict[str, int]) -> LocalDatastore:
    """Tiny images whose voxels all hold score*100 (so ChosenScores reads their score back)."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, value in scores.items():
        write_image(folder / f"{image_id}.nii.gz", np.full((6, 6, 6), value, np.int16), np.eye(4))
    store = LocalDatastore(folder)
    store.rescan()
    return store


@pytest.fixture
def unloaded_task() -> BundleSegmentationTask:
    """A scorable model object; ChosenScores never runs its network, so it is not loaded."""
    return BundleSegmentationTask(bundle_path("kidney_seg"), name="kidney_seg")


@pytest.fixture
def service_for(
    tmp_path: Path, unloaded_task: BundleSegmentationTask
) -> Iterator[Callable[..., tuple[ScoringService, LocalDatastore, ChosenScores]]]:
    made: list[tuple[ScoringService, LocalDatastore]] = []

    def build(scores: dict[str, int], gate: threading.Event | None = None) -> Any:
        store = make_store(tmp_path / "studies", scores)
        scorer = ChosenScores(gate)
        service = ScoringService(
            store, lambda: {"kidney_seg": unloaded_task}, {"chosen": scorer}, ScoreCache(store.state_dir / "s.sqlite")
        )
        made.append((service, store))
        return service, store, scorer

    yield build
    for service, store in made:
        service.close()
        store.close()


def test_second_run_hits_the_cache_and_a_new_model_version_rescores(
    service_for: Callable[..., Any], unloaded_task: BundleSegmentationTask
) -> None:
    service, store, scorer = service_for({"a": 10, "b": 40})
    first = service.wait(service.start("chosen").id, 20)
    assert (first.status, first.scored, first.cached, first.done, first.total) == ("DONE", 2, 0, 2, 2)
    assert sorted(scorer.calls) == [0.1, 0.4]
    assert (store.state_dir / "s.sqlite").is_file()

    again = service.wait(service.start("chosen").id, 20)
    assert (again.scored, again.cached) == (0, 2)
    assert len(scorer.calls) == 2  # nothing computed again

    unloaded_task.version = "2"  # what a hot swap to a new serving version looks like to the service
    swapped = service.wait(service.start("chosen").id, 20)
    assert (swapped.scored, swapped.cached, swapped.model_version) == (2, 0, "2")
    assert len(scorer.calls) == 4
    cached = service.lookup("chosen", ["a", "b"])
    assert {i: c.score for i, c in cached.items()} == {"a": 0.1, "b": 0.4}
    assert cached["a"].details == {"version_seen": "2"}

    forced = service.wait(service.start("chosen", ["a"], force=True).id, 20)
    assert (forced.total, forced.scored) == (1, 1)


def test_strategy_falls_back_without_waiting_then_picks_the_highest_unlabeled_unlocked_score(
    service_for: Callable[..., Any],
) -> None:
    gate = threading.Event()
    service, store, _ = service_for({"a": 10, "b": 90, "c": 50, "d": 70}, gate=gate)
    locked: set[str] = set()
    # reservations that lapse at once: this test is about scores (reservations are tested in test_api.py)
    lapsing = Reservations(ttl_s=1e-9)
    active = ActiveLearningService(uncertainty_strategies(service), store, lambda: set(locked), lapsing)

    started = time.monotonic()
    pick = active.next_sample("chosen", {"client_id": "annotator-1"})
    assert time.monotonic() - started < 2  # the scorer is blocked: the pick did not wait for it
    why = pick["strategy"]["chosen"]
    assert (pick["id"], why["source"], why["unscored"]) == ("a", "fallback", 4)
    assert "scoring runs in the background" in why["reason"]
    job = service.running()
    assert job is not None and job.request["trigger"] == "activelearning/chosen" and job.total == 4
    assert active.next_sample("chosen", {})["strategy"]["chosen"]["source"] == "fallback"  # still scoring

    gate.set()
    assert service.wait(job.id, 20).status == "DONE"
    pick = active.next_sample("chosen", {})
    why = pick["strategy"]["chosen"]
    assert (pick["id"], why["source"], why["score"], why["model"]) == ("b", "score", 0.9, "kidney_seg")

    store.save_label_array("b", np.zeros((6, 6, 6), np.uint8), tag="final")  # labeled: never offered again
    assert active.next_sample("chosen", {})["id"] == "d"
    store.save_label_array("d", np.zeros((6, 6, 6), np.uint8), tag="original")  # not final: still a candidate
    assert active.next_sample("chosen", {})["id"] == "d"
    locked.add("d")  # open in someone's interactive session
    assert active.next_sample("chosen", {})["id"] == "c"
    assert service.running() is None  # everything scored: no new job was started
    for image_id in ("a", "c", "d"):
        store.save_label_array(image_id, np.zeros((6, 6, 6), np.uint8), tag="final")
    assert active.next_sample("chosen", {}) == {}


def test_a_broken_image_records_its_error_and_the_job_goes_on(service_for: Callable[..., Any]) -> None:
    service, store, scorer = service_for({"a": 30, "c": 60})
    (store.root / "b.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    store.rescan()
    assert "b" in [r.id for r in store.list_images()]

    job = service.wait(service.start("chosen").id, 20)
    assert (job.status, job.done, job.scored, job.failed) == ("DONE", 3, 2, 1)
    assert list(job.errors) == ["b"] and job.errors["b"]
    assert sorted(scorer.calls) == [0.3, 0.6]
    results = service.lookup("chosen", ["a", "b", "c"])
    assert results["b"].score is None and results["b"].error
    # The failure is remembered: next-sample requests do not start a job for it again and again.
    assert service.ensure_scored("chosen", ["a", "b", "c"]) is None


def test_stop_ends_a_running_job_between_images(service_for: Callable[..., Any]) -> None:
    gate = threading.Event()
    service, _, _ = service_for({"a": 10, "b": 20, "c": 30}, gate=gate)
    job = service.start("chosen")
    stopped = service.stop()
    assert stopped is not None and stopped.status == "STOPPED" and stopped.end_ts
    assert service.stop() is None
    gate.set()
    time.sleep(0.3)
    final = service.get(job.id)
    assert final.status == "STOPPED" and final.done < 3


# ---------------------------------------------------------------------------------------------- the API
@pytest.fixture
def kidney_client(tmp_path: Path) -> Iterator[TestClient]:
    studies = tmp_path / "studies"
    studies.mkdir()
    for seed in (3, 4, 5):
        write_image(studies / f"case_{seed}.nii.gz", *kidney_crop(easy_phantom(seed), (64, 64, 32)))
    spec = AppSpec(
        name="kidney-scoring",
        description="kidney_seg only",
        labels={"kidney": 1, "tumor": 2, "cyst": 3},
        models=[BundleModel(path=bundle_path("kidney_seg"), name="kidney_seg", kind="segmentation")],
    )
    settings = Settings(
        studies=studies,
        data_dir=tmp_path / "data",
        rescan_interval_s=0,
        model_sync_interval_s=0,
        scoring_samples=6,
    )
    with TestClient(create_app(settings, spec)) as client:
        yield client


@pytest.mark.slow
def test_scoring_api_start_conflict_status_stop_and_strategies(kidney_client: TestClient) -> None:
    client = kidney_client
    info = client.get("/info/").json()
    assert set(info["scoring"]) == {"epistemic", "tta"}
    assert info["scoring"]["epistemic"]["config"]["model"] == "kidney_seg"
    assert info["scoring"]["epistemic"]["config"]["samples"] == 6
    assert {"epistemic", "tta"} <= set(info["strategies"])

    assert client.get("/scoring/").status_code == 404  # Slicer reads 404 as "no job"
    missing = client.post("/scoring/aleatoric")
    assert missing.status_code == 404 and "available methods: epistemic, tta" in missing.json()["detail"]
    assert client.post("/scoring/tta", json={"images": ["nope"]}).status_code == 404
    assert client.post("/scoring/tta", json={"images": "case_3"}).status_code == 422

    started = client.post("/scoring/epistemic", json={"client_id": "user-xyz"})
    assert started.status_code == 200, started.text
    job = started.json()
    assert job["status"] in ("SUBMITTED", "RUNNING") and job["total"] == 3 and job["method"] == "epistemic"
    busy = client.post("/scoring/tta")
    assert busy.status_code == 429 and "Already Running" in busy.json()["detail"]
    assert client.get("/scoring/", params={"check_if_running": True}).json()["id"] == job["id"]

    stopped = client.delete("/scoring/")
    assert stopped.status_code == 200 and stopped.json()["status"] == "STOPPED"
    assert client.get("/scoring/").json()["status"] == "STOPPED"
    assert client.get("/scoring/", params={"check_if_running": True}).status_code == 404
    assert client.delete("/scoring/").json() is None

    done = client.post("/scoring/tta", params={"run_sync": True}, json={"images": ["case_4"]}).json()
    assert (done["status"], done["scored"], done["failed"]) == ("DONE", 1, 0), done
    again = client.post("/scoring/tta", params={"run_sync": True}, json={"images": ["case_4"]}).json()
    assert (again["scored"], again["cached"]) == (0, 1)
    assert len(client.get("/scoring/", params={"all": True}).json()) == 3

    pick = client.post("/activelearning/tta", json={"client_id": "user-xyz"}).json()
    assert pick["id"] == "case_4"
    assert pick["strategy"]["tta"]["source"] == "score" and 0.0 <= pick["strategy"]["tta"]["score"] <= 1.0
    # The other two were never scored by tta: that pick started a background job for them.
    follow_up = client.get("/scoring/").json()
    assert follow_up["method"] == "tta" and follow_up["total"] == 2
    assert follow_up["request"]["trigger"] == "activelearning/tta"
    client.delete("/scoring/")


def test_apps_without_a_scorable_model_have_no_uncertainty_strategies(client: TestClient) -> None:
    info = client.get("/info/").json()
    assert info["scoring"] == {} and "epistemic" not in info["strategies"]
    response = client.post("/activelearning/epistemic")
    assert response.status_code == 404 and "available strategies" in response.json()["detail"]
    answer = client.post("/scoring/epistemic")
    assert answer.status_code == 404 and "no model can be scored" in answer.json()["detail"]

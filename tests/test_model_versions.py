"""Model versions: registry, promotion gate, promotion and rollback (API and CLI), hot swap under load."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from annotation_models import bundle_path
from annotation_server.errors import ConflictError, CorruptFileError, InvalidRequestError, NotFoundError
from annotation_server.learning.finetune import load_network, write_version_bundle
from annotation_server.learning.promotion import apply_gate, decide
from annotation_server.registry import ModelRegistry
from tests.conftest import write_nifti

SEG = bundle_path("kidney_seg")


def perturbed_bundle(out: Path, scale: float = 0.5) -> Path:
    """A real, different kidney_seg bundle: the shipped weights scaled (so predictions differ)."""
    state = {k: v * scale if v.is_floating_point() else v for k, v in load_network(SEG).state_dict().items()}
    return write_version_bundle(SEG, state, out, {"note": "test"})


def test_registry_versions_are_numbered_immutable_and_registered_once(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    first = registry.ensure_registered("kidney_seg", SEG)
    again = registry.ensure_registered("kidney_seg", SEG)
    assert (first.version, first.status, first.source) == (1, "serving", "shipped")
    assert again.version == 1 and len(registry.versions("kidney_seg")) == 1
    second = registry.add_version(
        "kidney_seg", perturbed_bundle(tmp_path / "b2"), "training", {"val_dice": 0.5}, {"labels": ["x"]}
    )
    assert second.version == 2 and second.status == "candidate"
    assert second.sha256 != first.sha256
    manifest = json.loads((Path(second.path) / "manifest.json").read_text())
    assert manifest["provenance"] == {"labels": ["x"]} and manifest["version"] == 2
    weights = Path(second.path) / "models" / "model.pt"
    assert not weights.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    # Another process (the CLI, a training job) sees the same registry.
    assert [v.version for v in ModelRegistry(tmp_path / "reg").versions("kidney_seg")] == [1, 2]


def test_a_corrupted_bundle_never_becomes_a_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    registry.ensure_registered("kidney_seg", SEG)
    broken = perturbed_bundle(tmp_path / "broken")
    weights = broken / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match="corrupted"):
        registry.add_version("kidney_seg", broken, "training")
    assert [v.version for v in registry.versions("kidney_seg")] == [1]
    assert not [p for p in (registry.root / "kidney_seg").iterdir() if p.name.startswith(".staging")]


def test_a_version_folder_left_by_a_killed_process_does_not_block_the_next_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    registry.ensure_registered("kidney_seg", SEG)
    orphan = registry.root / "kidney_seg" / "v0002"  # renamed into place, killed before the commit
    orphan.mkdir()
    (orphan / "half.txt").write_text("from a killed training job")
    second = registry.add_version("kidney_seg", perturbed_bundle(tmp_path / "b2"), "training")
    assert second.version == 2 and not (orphan / "half.txt").exists()
    assert (Path(second.path) / "manifest.json").is_file()


def test_promote_and_rollback_follow_the_promotion_chain(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    registry.ensure_registered("kidney_seg", SEG)
    for n in (2, 3):
        registry.add_version("kidney_seg", perturbed_bundle(tmp_path / f"b{n}", 0.5 + n / 10), "training")
        registry.promote("kidney_seg", n, reason=f"test {n}")
    assert registry.serving_number("kidney_seg") == 3
    assert registry.rollback("kidney_seg").version == 2
    assert registry.rollback("kidney_seg").version == 1
    with pytest.raises(InvalidRequestError, match="first version"):
        registry.rollback("kidney_seg")
    assert registry.rollback("kidney_seg", to=3).version == 3
    with pytest.raises(ConflictError):
        registry.promote("kidney_seg", 3)
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.promote("kidney_seg", 9)
    statuses = {v.version: v.status for v in registry.versions("kidney_seg")}
    assert statuses == {1: "retired", 2: "retired", 3: "serving"}
    actions = [e.action for e in registry.events("kidney_seg")]
    assert actions.count("rollback") == 3 and actions.count("promote") == 3


SERVING = [0.80, 0.74, 0.86, 0.78, 0.83, 0.69]  # per-image validation Dice of the serving version


@pytest.mark.parametrize(
    ("candidate", "images", "margin", "passes", "why"),
    [
        ([d + 0.03 for d in SERVING], 6, 0.0, True, "promotable: mean difference +0.0300"),
        (SERVING, 6, 0.0, False, "mean difference +0.0000 is not a gain"),  # equal is not better
        ([d - 0.02 for d in SERVING], 6, 0.0, False, "is not a gain"),
        ([d + 0.03 for d in SERVING[:2]], 2, 0.0, False, "only 2 validation image(s), the gate needs at least 5"),
        ([d + 0.01 for d in SERVING], 6, 0.02, False, "is not more than +0.02"),
        # a small mean gain made of big wins and a big loss: the interval allows a real loss
        ([0.95, 0.90, 0.99, 0.93, 0.95, 0.30], 6, 0.0, False, "allows a loss of more than 0.01 Dice"),
    ],
)
def test_gate_promotes_only_a_real_gain_on_enough_images(
    tmp_path: Path, candidate: list[float], images: int, margin: float, passes: bool, why: str
) -> None:
    registry = ModelRegistry(tmp_path / "reg")
    registry.ensure_registered("kidney_seg", SEG)
    version = registry.add_version("kidney_seg", perturbed_bundle(tmp_path / "b"), "training")
    decision = decide(candidate, SERVING[: len(candidate)], images, margin)
    assert decision.passed is passes and why in decision.reason, decision.reason
    assert decision.ci95_low <= decision.mean_difference <= decision.ci95_high
    assert apply_gate(registry, version, decision, auto_promote=True) is passes
    assert registry.serving_number("kidney_seg") == (2 if passes else 1)
    if not passes:
        rejection = registry.events("kidney_seg")[-1]
        assert rejection.action == "reject" and rejection.reason == decision.reason


def test_gate_does_not_promote_over_a_version_served_since_it_compared(tmp_path: Path) -> None:
    """A rollback (or promotion) while a job trained: the gate measured against another version, so it waits."""
    registry = ModelRegistry(tmp_path / "reg")
    registry.ensure_registered("kidney_seg", SEG)
    registry.add_version("kidney_seg", perturbed_bundle(tmp_path / "b2"), "training")
    registry.promote("kidney_seg", 2)
    trained = registry.add_version(
        "kidney_seg", perturbed_bundle(tmp_path / "b3", 0.7), "training", {"serving_version": 2}
    )
    registry.rollback("kidney_seg")  # back to 1 while version 3 was being made from version 2
    assert apply_gate(registry, trained, decide([0.9] * 5, [0.8] * 5, 5), auto_promote=True) is False
    assert registry.serving_number("kidney_seg") == 1
    rejection = registry.events("kidney_seg")[-1]
    assert (rejection.action, rejection.version) == ("reject", 3) and "v1 serves now" in rejection.reason


# ------------------------------------------------------------------------------------- hot swap, live server
@pytest.fixture
def registry_with_candidate(tmp_path: Path) -> tuple[Path, Path]:
    """A data dir whose kidney registry holds the shipped version 1 and a candidate version 2."""
    data_dir = tmp_path / "server-data"
    registry = ModelRegistry(data_dir / "registry" / "kidney")
    registry.ensure_registered("kidney_seg", SEG)
    registry.add_version("kidney_seg", perturbed_bundle(tmp_path / "b2", 0.3), "training", {"val_dice": 0.9})
    studies = tmp_path / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 100, (48, 48, 24)).astype(np.int16)
    volume[14:34, 14:34, 6:18] = 180
    write_nifti(studies / "small.nii.gz", volume, np.diag([3.0, 3.0, 3.0, 1.0]))
    return data_dir, studies


@pytest.mark.slow
def test_hot_swap_under_concurrent_requests_then_cli_rollback(live_server, registry_with_candidate) -> None:  # type: ignore[no-untyped-def]
    data_dir, studies = registry_with_candidate
    server = live_server("--app", "kidney", "--studies", str(studies), env={"ANNOTATE_MODEL_SYNC_INTERVAL_S": "0.3"})
    info = httpx.get(f"{server.url}/info/").json()
    assert info["server"]["serving_versions"]["kidney_seg"] == 1
    assert info["models"]["kidney_seg"]["version"] == "1"

    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def infer_loop() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                r = http.post("/infer/kidney_seg", params={"image": "small", "output": "json"})
                seen.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=infer_loop) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    promoted = httpx.post(f"{server.url}/models/kidney_seg/promote", json={"version": 2}, timeout=60)
    assert promoted.status_code == 200, promoted.text
    count_at_swap = len(seen)
    while len(seen) < count_at_swap + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(60)
    assert all(code == 200 for code, _ in seen), seen
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions)  # never back to the old version once swapped
    assert httpx.get(f"{server.url}/info/").json()["server"]["serving_versions"]["kidney_seg"] == 2

    # A promotion of an unknown version is a 404 that names the versions, and nothing changes.
    missing = httpx.post(f"{server.url}/models/kidney_seg/promote", json={"version": 7})
    assert missing.status_code == 404 and "versions: 1, 2" in missing.json()["detail"]

    # The CLI rolls back while the server runs; the server follows within its sync interval.
    cli = subprocess.run(
        [sys.executable, "-m", "annotation_server", "models", "rollback", "kidney_seg", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "kidney_seg@1 is now serving" in cli.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/info/").json()["server"]["serving_versions"]["kidney_seg"] == 1:
            break
        time.sleep(0.2)
    listing = httpx.get(f"{server.url}/models/kidney_seg/versions").json()
    assert listing["serving"] == 1
    assert [e["action"] for e in listing["events"]][-2:] == ["promote", "rollback"]
    result = httpx.post(f"{server.url}/infer/kidney_seg", params={"image": "small", "output": "json"}, timeout=60)
    assert result.json()["model_version"] == "1"


@pytest.mark.slow
def test_cli_lists_versions_as_json(registry_with_candidate) -> None:  # type: ignore[no-untyped-def]
    data_dir, _ = registry_with_candidate
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "annotation_server",
            "models",
            "versions",
            "kidney_seg",
            "--json",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["version"], r["status"]) for r in rows] == [(1, "serving"), (2, "candidate")]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "annotation_server",
            "models",
            "promote",
            "kidney_seg",
            "5",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no version 5" in bad.stderr


@pytest.mark.slow
def test_a_version_that_cannot_load_is_never_served(registry_with_candidate, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Promoting a damaged version is refused (API) or reported (CLI), and the serving version keeps serving."""
    from fastapi.testclient import TestClient

    from annotation_server.app_spec import load_app
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    data_dir, studies = registry_with_candidate
    registry = ModelRegistry(data_dir / "registry" / "kidney")
    weights = Path(registry.get("kidney_seg", 2).path) / "models" / "model.pt"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-64])  # damaged on disk after it was registered
    settings = Settings(studies=studies, data_dir=data_dir, rescan_interval_s=0, model_sync_interval_s=0)
    with TestClient(create_app(settings, load_app("kidney"))) as client:
        refused = client.post("/models/kidney_seg/promote", json={"version": 2})
        assert refused.status_code == 422 and "was not promoted" in refused.json()["detail"]
        assert registry.serving_number("kidney_seg") == 1
        registry.promote("kidney_seg", 2, actor="cli")  # as `annotate-server models promote` would
        services = client.app.state.services
        from annotation_server.registry import serving as serving_module

        attempts: list[int] = []
        real_build = serving_module.build_version

        def counting_build(*args, **kwargs):  # type: ignore[no-untyped-def]
            attempts.append(1)
            return real_build(*args, **kwargs)

        monkeypatch.setattr(serving_module, "build_version", counting_build)
        assert services.serving.sync() == [] and services.serving.sync() == []
        assert len(attempts) == 1  # tried once, not again every sync round
        server = client.get("/info/").json()["server"]
        assert server["serving_versions"]["kidney_seg"] == 1
        assert "kidney_seg@2 cannot be loaded" in server["version_errors"]["kidney_seg"]
        answer = client.post("/infer/kidney_seg", params={"image": "small", "output": "json"})
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"

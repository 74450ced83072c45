"""The command line: model listing, and clear refusals for a wrong app or studies folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from annotation_server.checksums import file_sha256


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "annotation_server", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_models_list_json(tmp_path: Path) -> None:
    result = _run("models", "list", "--app", "kidney", "--json", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"region_growing", "kidney_seg", "kidney_click"}
    assert rows["region_growing"]["type"] == "deepgrow" and rows["region_growing"]["sha256"] is None
    from annotation_models import bundle_path

    for name, kind in (("kidney_seg", "segmentation"), ("kidney_click", "deepgrow")):
        assert "error" not in rows[name], rows[name]
        assert rows[name]["type"] == kind and rows[name]["version"]
        assert rows[name]["sha256"] == file_sha256(bundle_path(name) / "models" / "model.pt")
    assert rows["kidney_seg"]["labels"] == {"kidney": 1, "tumor": 2, "cyst": 3}


@pytest.mark.slow
def test_unknown_app_and_missing_studies_exit_2(tmp_path: Path) -> None:
    unknown = _run("--app", "no_such_app", "--data-dir", str(tmp_path))
    assert unknown.returncode == 2 and "not found" in unknown.stderr
    missing = _run("--app", "kidney", "--studies", str(tmp_path / "nope"), "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_version_flag() -> None:
    from annotation_server import __version__

    assert _run("--version").stdout.strip() == __version__


@pytest.mark.slow
def test_train_command_makes_a_version_and_models_list_shows_what_serves(tmp_path: Path) -> None:
    """`annotate-server train`: the same fine-tuning as POST /train/, from a terminal, gate included."""
    from annotation_server.phantoms import PhantomConfig, write_phantom_dataset

    write_phantom_dataset(tmp_path / "studies", n=3, seed=3, config=PhantomConfig.easy())
    common = ("--app", "kidney", "--data-dir", str(tmp_path / "data"))
    trained = _run(
        "train", "--studies", str(tmp_path / "studies"), *common, "--steps", "2", "--val-split", "0.1",
        "--min-improvement", "-1", "--min-val-images", "1",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    outcome = json.loads(trained.stdout)
    assert outcome["version"]["version"] == 2 and outcome["promoted"] is True
    assert (Path(outcome["version"]["path"]) / "training_curve.png").is_file()
    assert "kidney_seg@2: promoted" in " ".join(trained.stderr.split())
    rows = {row["name"]: row for row in json.loads(_run("models", "list", "--json", *common).stdout)}
    assert rows["kidney_seg"]["version"] == "2" and rows["kidney_seg"]["versions"] == 2
    assert rows["kidney_seg"]["sha256"] == outcome["version"]["sha256"]
    rollback = _run("models", "rollback", "kidney_seg", *common)
    assert rollback.returncode == 0 and "kidney_seg@1 is now serving" in rollback.stdout
    no_labels = _run("train", "--studies", str(tmp_path / "data"), *common)
    assert no_labels.returncode == 2 and "at least 2 images" in no_labels.stderr

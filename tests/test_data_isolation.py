"""One data folder per deployment: servers of one user with different `--studies` never share a model registry.

With no `--data-dir`, the data folder (registry, users, sessions, logs) is derived from the studies folder or
the PACS URL; the commands that read it (`models`, `users`) find the same folder from the same `--studies`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from annotation_server.settings import Settings, deployment_data_dir
from tests.conftest import LiveServer, write_nifti


@pytest.fixture
def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh HOME and XDG_DATA_HOME, here and for the processes the test starts."""
    env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ANNOTATE_DATA_DIR", raising=False)
    return env


def test_each_studies_folder_gets_its_own_data_folder(
    tmp_path: Path, user_home: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "site" / "a", tmp_path / "other" / "a"  # same folder name, different folders
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    root = Path(user_home["XDG_DATA_HOME"]) / "annotation-server" / "deployments"
    dir_a, dir_b = Settings(studies=a).data_dir, Settings(studies=b).data_dir
    assert dir_a != dir_b and dir_a.parent == dir_b.parent == root
    assert dir_a.name.startswith("a-") and dir_b.name.startswith("a-")
    # the same folder reached another way (relative, trailing slash, symlink) is the same deployment
    (tmp_path / "link").symlink_to(a)
    monkeypatch.chdir(tmp_path)
    for same in ("site/a", f"{a}/", str(tmp_path / "link")):
        assert Settings(studies=Path(same)).data_dir == dir_a
    assert Settings().data_dir == root / "sample"  # the embedded sample set
    pacs = Settings(studies=Path("http://pacs:8042/dicom-web"))  # what typer makes of `--studies URL`
    assert pacs.dicomweb_url == "http://pacs:8042/dicom-web" and pacs.data_dir.name.startswith("pacs-")
    assert pacs.data_dir == Settings(dicomweb_url="http://pacs:8042/dicom-web/").data_dir
    assert pacs.data_dir != Settings(dicomweb_url="http://pacs:8042/other-root").data_dir


def test_an_explicit_data_dir_is_kept(tmp_path: Path, user_home: dict[str, str], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert Settings(studies=tmp_path, data_dir=tmp_path / "mine").data_dir == tmp_path / "mine"
    monkeypatch.setenv("ANNOTATE_DATA_DIR", str(tmp_path / "from-env"))
    assert Settings(studies=tmp_path).data_dir == tmp_path / "from-env"


def _cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "annotation_server", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_users_commands_find_the_servers_folder_from_its_studies(tmp_path: Path, user_home: dict[str, str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    added = _cli("users", "add", "alice", "--role", "admin", "--password-stdin", "--studies", str(a), env=user_home,
                 stdin="correct horse battery\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert str(deployment_data_dir(a) / "auth" / "users.sqlite") in added.stdout  # it says where
    listed_a = _cli("users", "list", "--json", "--studies", str(a), env=user_home)
    listed_b = _cli("users", "list", "--json", "--studies", str(b), env=user_home)
    assert '"alice"' in listed_a.stdout and '"alice"' not in listed_b.stdout


def _banner_lines(output: str, key: str) -> list[str]:
    return re.findall(rf"^\s*{key}:\s+(.*)$", output, flags=re.MULTILINE)


@pytest.mark.slow
def test_two_servers_with_different_studies_do_not_share_a_registry(tmp_path: Path, user_home: dict[str, str]) -> None:
    """A version promoted for studies A (by the CLI, which finds A's folder from --studies) serves on A's server
    within its sync interval and never reaches the server of studies B."""
    from annotation_server.registry import ModelRegistry
    from tests.test_model_versions import perturbed_bundle

    folders = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        volume = np.zeros((32, 32, 16), np.int16)
        volume[8:24, 8:24, 4:12] = 150
        write_nifti(folder / f"{name}.nii.gz", volume, np.diag([3.0, 3.0, 3.0, 1.0]))
        folders.append(folder)
    env = {**user_home, "ANNOTATE_MODEL_SYNC_INTERVAL_S": "0.3", "ANNOTATE_RESCAN_INTERVAL_S": "0"}
    servers = [LiveServer(["--app", "kidney", "--studies", str(folder)], env=env, timeout_s=180) for folder in folders]
    try:
        for server in servers:
            assert httpx.get(f"{server.url}/info/").json()["server"]["serving_versions"]["kidney_seg"] == 1
        registry = ModelRegistry(deployment_data_dir(folders[0]) / "registry" / "kidney")
        registry.add_version("kidney_seg", perturbed_bundle(tmp_path / "candidate"), "training")
        promoted = _cli("models", "promote", "kidney_seg", "2", "--studies", str(folders[0]), env=user_home)
        assert promoted.returncode == 0 and "kidney_seg@2 is now serving" in promoted.stdout, promoted.stderr
        deadline = time.monotonic() + 60
        serving = [1, 1]
        while time.monotonic() < deadline and serving[0] != 2:
            serving = [httpx.get(f"{s.url}/info/").json()["server"]["serving_versions"]["kidney_seg"] for s in servers]
            time.sleep(0.3)
        time.sleep(1.5)  # five more sync intervals for B
        serving[1] = httpx.get(f"{servers[1].url}/info/").json()["server"]["serving_versions"]["kidney_seg"]
        assert serving == [2, 1]
    finally:
        outputs = [server.stop() for server in servers]
    data_lines = [_banner_lines(output, "data") for output in outputs]
    assert all(len(lines) == 1 for lines in data_lines), outputs  # the banner is printed once
    assert [lines[0].split(" (")[0] for lines in data_lines] == [str(deployment_data_dir(f)) for f in folders]


def test_data_of_the_old_shared_folder_is_pointed_at_not_moved(
    tmp_path: Path, user_home: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from annotation_server.cli import _note_shared_data_folder
    from annotation_server.settings import default_data_dir

    settings = Settings(studies=tmp_path)
    _note_shared_data_folder(settings, given=False)
    assert capsys.readouterr().err == ""  # nothing from an earlier version: nothing to say
    (default_data_dir() / "registry" / "kidney").mkdir(parents=True)
    _note_shared_data_folder(settings, given=False)
    note = " ".join(capsys.readouterr().err.split())
    assert f"Pass --data-dir {default_data_dir()}" in note and str(settings.data_dir) in note
    _note_shared_data_folder(Settings(studies=tmp_path, data_dir=tmp_path / "d"), given=True)
    assert capsys.readouterr().err == ""  # an explicit --data-dir is the admin's choice
    assert (default_data_dir() / "registry" / "kidney").is_dir()  # never moved

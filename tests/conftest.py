"""Shared fixtures: real data location, synthetic volumes, in-process apps and live servers.

Tests that need the real samples in ../shared skip with a reason in a fresh clone (which has no
../shared); the embedded sample CT inside the package is always available.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz"


# ---------------------------------------------------------------------------------------------------------------
# Fast by default: `python -m pytest -q` leaves out tests marked slow (servers, browsers, Orthanc, training,
# federation); `--full` runs everything (CI does). Naming tests (`file::test`) or a marker (`-m`) runs them as asked.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full", action="store_true", help="also run the tests marked slow (servers, browser, PACS, training); CI does"
    )


def _runs_everything(config: pytest.Config) -> bool:
    return bool(config.getoption("--full") or config.getoption("markexpr") or any("::" in a for a in config.args))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _runs_everything(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.stash[_SLOW_LEFT_OUT] = len(slow)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left_out = config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(
            f"{left_out} slow test(s) (servers, browser, PACS, training) not run: "
            "`python -m pytest -q --full` runs everything, as CI does"
        )


_SLOW_LEFT_OUT = pytest.StashKey[int]()


def find_shared_data() -> Path | None:
    env = os.environ.get("ANNOTATE_SHARED_DIR")
    candidates = [Path(env)] if env else []
    candidates += [parent / "shared" for parent in Path(__file__).resolve().parents]
    for candidate in candidates:
        data = candidate / "data" if (candidate / "data").is_dir() else candidate
        if (data / "totalsegmentator").is_dir():
            return data
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = find_shared_data()
    if data is None:
        pytest.skip("real data samples not available: ../shared/data is not present in a fresh clone")
    return data


@pytest.fixture(scope="session")
def sample_ct() -> Path:
    return SAMPLE_CT


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def studies(tmp_path: Path, sample_ct: Path) -> Path:
    """A studies folder holding the sample CT and a small synthetic volume."""
    folder = tmp_path / "studies"
    folder.mkdir()
    shutil.copy(sample_ct, folder / "sample_ct.nii.gz")
    array = np.zeros((20, 16, 12), dtype=np.int16)
    array[5:12, 4:10, 3:8] = 100
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 20]
    write_nifti(folder / "phantom_a.nii.gz", array, affine)
    write_nifti(folder / "phantom_b.nii.gz", array[::-1].copy(), affine)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A real `annotate-server` process on 127.0.0.1, stopped by its PID."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        timeout_s: float = 60,
        scheme: str = "http",
        host: str = "127.0.0.1",  # where it listens; tests always talk to it over 127.0.0.1
    ) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "annotation_server", *args, "--port", str(self.port), "--host", host]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.ready_after_s = self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.process.stdout.read() if self.process.stdout else ''}")
            with contextlib.suppress(httpx.HTTPError):
                # 401: up, with logins required (ANNOTATE_AUTH_ENABLED)
                if httpx.get(f"{self.url}/info/", timeout=2, verify=False).status_code in (200, 401):
                    return time.monotonic() - self.started
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server did not answer /info/ within {timeout_s} s")

    def stop(self) -> str:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.stdout.read() if self.process.stdout else ""


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(*args: str, env: dict[str, str] | None = None, scheme: str = "http") -> LiveServer:
        server = LiveServer(["--data-dir", str(tmp_path / "server-data"), *args], env=env, scheme=scheme)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------------------------------------------
# An app of tiny deterministic models, so API tests check the plumbing without depending on a real model.
from annotation_server.app_spec import AppSpec  # noqa: E402
from annotation_server.inference.task import InferResult, InferTask  # noqa: E402


class ThresholdTask(InferTask):
    """'Segments' voxels above a threshold as value 42 and below -500 as value 7 (non-contiguous on purpose)."""

    def __init__(self) -> None:
        super().__init__(
            name="threshold", type="segmentation", labels={"air": 7, "bright": 42}, description="test model"
        )

    def infer(self, volume, params):  # type: ignore[no-untyped-def]
        mask = np.zeros(volume.array.shape, np.uint8)
        mask[volume.array > 50] = 42
        mask[volume.array < -500] = 7
        return InferResult(mask=mask, label_names=dict(self.labels))


class CubeTask(InferTask):
    """A 'click' model: a 3x3x3 cube around each foreground click, minus background clicks."""

    def __init__(self) -> None:
        super().__init__(name="cube", type="deepgrow", labels={"kidney": 1}, description="test click model")

    def infer(self, volume, params):  # type: ignore[no-untyped-def]
        from annotation_server.inference.params import check_points

        check_points(params.foreground, volume.array.shape, "foreground")
        mask = np.zeros(volume.array.shape, np.uint8)
        for i, j, k in params.foreground:
            mask[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, max(k - 1, 0) : k + 2] = 1
        for i, j, k in params.background:
            mask[i, j, k] = 0
        return InferResult(mask=mask, label_names={params.label or "kidney": 1})


TEST_APP = AppSpec(
    name="testapp",
    description="tiny models for API tests",
    labels={"kidney": 1, "tumor": 2},
    models=[ThresholdTask(), CubeTask()],
)


@pytest.fixture
def client(studies: Path, tmp_path: Path) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    settings = Settings(studies=studies, data_dir=tmp_path / "data", rescan_interval_s=0, max_upload_mb=4)
    with TestClient(create_app(settings, TEST_APP)) as test_client:
        yield test_client

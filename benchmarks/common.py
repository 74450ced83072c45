"""What the benchmark scripts share: a free port, and a real server process started and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m annotation_server ...` on 127.0.0.1 (or any command), ready once /info/ answers."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = 300,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = command or [sys.executable, "-m", "annotation_server", "--log-level", "warning"]
        started = time.monotonic()
        self.process = subprocess.Popen(
            [*base, *args, "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{base[-1]} exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/info/", timeout=5).status_code in (200, 401):  # 401: up, logins on
                    self.startup_s = time.monotonic() - started
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{base} did not start within {timeout_s} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

"""Full-size bombs of issue #12 against a real server: status, seconds, and the server's peak memory growth.

Each input is sent over loopback to a labels-only server (starts in seconds). Before each request the
server process's peak-RSS mark is reset (`/proc/<pid>/clear_refs` = 5); after the answer its VmHWM minus
its RSS before is the growth that request caused.

- a .nii.gz of ~2.6 MB whose header (and gzip stream) expands to 2.7 GB, as an image and as a label;
- an NRRD whose `data file:` is /dev/zero (1024^3 int16);
- a ~2 MB zip session expanding to 2 GB (PUT /session/?uncompress=true);
- a ~1 MB scribble prompt inflating to 1 GB (its decoder measured in this process: the labels-only server
  has no click model to send a prompt to; over HTTP such a body is also over the default 1 MB JSON limit).

    python benchmarks/hostile_inputs.py
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import ClassVar

import httpx
import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server

APP_SOURCE = """
from annotation_server.app_spec import AppSpec

APP = AppSpec(name="bombs", description="labels only, no models", labels={"kidney": 1}, models=[])
"""


def _status(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key)) / 1024


def measured(pid: int, call) -> dict[str, object]:  # type: ignore[no-untyped-def]
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status(pid, "VmRSS:")
    started = time.perf_counter()
    response = call()
    seconds = time.perf_counter() - started
    return {
        "status": response.status_code,
        "seconds": round(seconds, 3),
        "peak_growth_mb": round(_status(pid, "VmHWM:") - before, 1),
        "detail": response.json().get("detail", "")[:120]
        if response.headers.get("content-type", "").startswith("application/json")
        else "",
    }


def gzip_stream(header: bytes, zeros: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (16 << 20)
    out = [packer.compress(header)]
    for _ in range(zeros // len(chunk)):
        out.append(packer.compress(chunk))
    out.append(packer.flush())
    return b"".join(out)


def nifti_bomb() -> bytes:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((1400, 1000, 1000))  # 2.8e9 bytes
    block = header.binaryblock + b"\0" * 4
    return gzip_stream(block, 2_700_000_000)


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("series.nii", "w", force_zip64=True) as member,
    ):
        chunk = b"\0" * (16 << 20)
        for _ in range(128):  # 2 GiB
            member.write(chunk)
    return buffer.getvalue()


def scribble_in_process(data: str) -> dict[str, object]:
    """The scribble decoder itself (this labels-only server has no click model to route a prompt to)."""
    import os

    from annotation_server.errors import InvalidRequestError
    from annotation_server.interactive.prompts import ScribblePrompt

    prompt = ScribblePrompt(offset=(0, 0, 0), shape=(8, 8, 8), data=data)
    pid = os.getpid()

    class Answer:
        status_code = 200
        headers: ClassVar[dict[str, str]] = {}

    def call() -> Answer:
        answer = Answer()
        try:
            prompt.voxels((32, 32, 16))
        except InvalidRequestError:
            answer.status_code = 422
        return answer

    return measured(pid, call)


def main(argv: list[str] | None = None) -> dict[str, object]:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bombs-") as tmp:
        root = Path(tmp)
        (root / "bombs_app").mkdir()
        (root / "bombs_app" / "__init__.py").write_text(APP_SOURCE)
        studies = root / "studies"
        studies.mkdir()
        nib.save(nib.Nifti1Image(np.zeros((32, 32, 16), np.int16), np.eye(4)), str(studies / "small.nii.gz"))
        started = time.perf_counter()
        nifti = nifti_bomb()
        archive = zip_bomb()
        scribble = base64.b64encode(zlib.compress(b"\1" * (1 << 30), 9)).decode()
        results["generation_s"] = round(time.perf_counter() - started, 1)
        results["sizes_mb"] = {
            "nifti_bomb": round(len(nifti) / 2**20, 2),
            "zip_bomb": round(len(archive) / 2**20, 2),
            "scribble_bomb": round(len(scribble) / 2**20, 2),
        }
        zero_nrrd = (
            b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nencoding: raw\ndata file: /dev/zero\n\n"
        )
        server = Server(
            ["--app", str(root / "bombs_app"), "--studies", str(studies), "--data-dir", str(root / "data")],
            env={"ANNOTATE_RESCAN_INTERVAL_S": "0", "ANNOTATE_MODEL_SYNC_INTERVAL_S": "0"},
        )
        pid = server.process.pid
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                results["nifti_bomb_as_image"] = measured(
                    pid, lambda: client.put("/datastore/?image=bomb", files={"file": ("b.nii.gz", nifti)})
                )
                results["nifti_bomb_as_label"] = measured(
                    pid, lambda: client.put("/datastore/label?image=small", files={"label": ("b.nii.gz", nifti)})
                )
                results["nrrd_dev_zero_label"] = measured(
                    pid, lambda: client.put("/datastore/label?image=small", files={"label": ("z.nrrd", zero_nrrd)})
                )
                results["zip_bomb_session"] = measured(
                    pid, lambda: client.put("/session/?uncompress=true", files={"files": ("s.zip", archive)})
                )
        finally:
            server.stop()
    results["scribble_bomb"] = scribble_in_process(scribble)
    report = {"benchmark": "hostile_inputs", **results}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

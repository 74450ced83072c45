"""Decompression bombs are refused quickly and with bounded memory.

Memory is measured in a fresh subprocess: the kernel's peak-RSS mark is reset just before the action
(`/proc/self/clear_refs` = 5), and the peak after it (VmHWM; `resource.getrusage` where the reset is not
allowed) minus the RSS before it is the action's growth. Imports and the test runner do not count.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest
from test_input_files import nifti_header_only

MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20

    def peak_mb():
        try:
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    {setup}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = rss_mb()
    started = time.perf_counter()
    try:
        {action}
        outcome = "accepted"
    except Exception as exc:
        outcome = type(exc).__name__ + ": " + str(exc)[:200]
    seconds = time.perf_counter() - started
    peak = peak_mb()
    print(json.dumps({{"outcome": outcome, "seconds": seconds, "peak_growth_mb": peak - before}}))
    """
)


def measure(setup: str, action: str) -> dict:
    """Run `action` after `setup` in a fresh interpreter; its outcome, seconds and peak RSS growth (MB)."""
    code = MEASURE.format(setup=setup, action=action)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_nifti_bomb_refused_in_bounded_memory(tmp_path: Path) -> None:
    """Header says 1400 x 1000 x 1000 int16 (2.8 GB); the gzip would inflate to it. Only the header is read."""
    bomb = tmp_path / "bomb.nii.gz"
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    with bomb.open("wb") as out:
        out.write(packer.compress(nifti_header_only((1400, 1000, 1000))))
        zeros = b"\0" * (1 << 20)
        for _ in range(64):  # 64 MB of zeros follow; the header alone must decide
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    result = measure(
        "from annotation_server.imaging import read_volume",
        f"read_volume(Path({str(bomb)!r}))",
    )
    assert result["outcome"].startswith("TooLargeError"), result
    assert result["seconds"] < 2 and result["peak_growth_mb"] < 50, result


def test_nrrd_naming_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nencoding: raw\ndata file: /dev/zero\n\n"
    path = tmp_path / "zero.nrrd"
    path.write_bytes(header)
    result = measure("from annotation_server.imaging import read_volume", f"read_volume(Path({str(path)!r}))")
    assert result["outcome"].startswith("UnsupportedFormatError"), result
    assert result["seconds"] < 2 and result["peak_growth_mb"] < 50, result


@pytest.mark.slow
def test_zip_bomb_session_stops_at_its_budget(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with (
        zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
        zf.open("slices.nii", "w", force_zip64=True) as member,
    ):
        zeros = b"\0" * (1 << 20)
        for _ in range(256):  # 256 MB inflated from ~250 KB
            member.write(zeros)
    setup = textwrap.dedent(
        f"""
        from annotation_server.sessions.store import SessionStore
        store = SessionStore(Path({str(tmp_path / "sessions")!r}), 60)
        """
    )
    result = measure(setup, f"store.create([('bomb.zip', Path({str(archive)!r}))], uncompress=True)")
    assert result["outcome"].startswith("TooLargeError") and "expands to more than 64 MB" in result["outcome"], result
    assert result["peak_growth_mb"] < 50, result
    leftovers = [p for p in (tmp_path / "sessions").rglob("*") if p.is_file()]
    assert leftovers == []  # the partial extraction is removed


def test_scribble_bomb_inflates_no_further_than_its_box() -> None:
    setup = textwrap.dedent(
        """
        import base64, zlib
        from annotation_server.interactive.prompts import ScribblePrompt
        data = base64.b64encode(zlib.compress(b"\\1" * (32 << 20), 9)).decode()  # ~32 KB inflating to 32 MB
        prompt = ScribblePrompt(offset=(0, 0, 0), shape=(10, 10, 10), data=data)
        """
    )
    result = measure(setup, "prompt.voxels((20, 20, 20))")
    assert result["outcome"].startswith("InvalidRequestError") and "more than 1000" in result["outcome"], result
    assert result["seconds"] < 1 and result["peak_growth_mb"] < 20, result


@pytest.mark.parametrize(
    ("shape", "needle"),
    [([-2, -1, 1], "greater than or equal to 1"), ([10**6, 10**6, 10**6], "larger than"), ([50, 5, 5], "outside")],
)
def test_scribble_shape_mistakes_are_422(client, shape: list[int], needle: str) -> None:  # type: ignore[no-untyped-def]
    opened = client.post("/interactive/sessions", json={"image": "phantom_a", "model": "cube"})
    assert opened.status_code == 200, opened.text
    session = opened.json()["session_id"]
    data = base64.b64encode(zlib.compress(b"\1" * 8)).decode()
    prompt = {"type": "scribble", "offset": [0, 0, 0], "shape": shape, "data": data}
    response = client.post(f"/interactive/sessions/{session}/prompt", json={"prompt": prompt})
    assert response.status_code == 422, response.text
    assert needle in json.dumps(response.json()["detail"]), response.text


def test_zip_bomb_via_session_route_is_413(client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("a.nii", b"\0" * (80 << 20))  # 80 MB from ~80 KB; the test client allows 4 MB uploads
    response = client.put("/session/?uncompress=true", files={"files": ("bomb.zip", buffer.getvalue())})
    assert response.status_code == 413, response.text
    assert "expands to more than 4 MB" in response.json()["detail"]

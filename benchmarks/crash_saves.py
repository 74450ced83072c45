"""kill -9 the server while annotators save labels; every acknowledged save must survive, links repaired.

Each cycle: start a real server (a labels-only app, so it starts in seconds) on small phantom images,
run `--writers` threads that PUT labels as fast as they can, `kill -9` the server after a random 0.5 to
`--max-run-s` seconds, inspect the folder cold (how many `labels/<tag>/<id>` files lag the index), then
start the server again and check, over HTTP and on disk:

- every save that was answered 200 is there, byte-identical, under the version number it was given;
- `labels/final/<id>` is the head version's file again (the server repairs it at start);
- SQLite's `PRAGMA integrity_check` is ok.

Loopback only; bounded by `--cycles` and `--max-run-s`. Prints one JSON object.

    python benchmarks/crash_saves.py --cycles 8 --writers 4
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server

APP_SOURCE = """
from annotation_server.app_spec import AppSpec

APP = AppSpec(name="crashtest", description="labels only, no models", labels={"kidney": 1, "tumor": 2}, models=[])
"""
SHAPE = (24, 20, 16)


def make_studies(root: Path, images: int) -> Path:
    studies = root / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    for index in range(images):
        array = rng.integers(-100, 100, SHAPE, dtype=np.int16)
        nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), str(studies / f"case{index:02d}.nii.gz"))
    return studies


def label_bytes(rng: random.Random) -> bytes:
    array = np.zeros(SHAPE, np.uint8)
    i, j, k = rng.randrange(SHAPE[0] - 4), rng.randrange(SHAPE[1] - 4), rng.randrange(SHAPE[2] - 4)
    array[i : i + 4, j : j + 4, k : k + rng.randint(1, 4)] = rng.choice((1, 2))
    return gzip.compress(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes(), 1)


def writer(url: str, images: list[str], seed: int, acked: list[tuple[str, int, str]], stop: threading.Event) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            image = rng.choice(images)
            data = label_bytes(rng)
            try:
                response = client.put(f"{url}/datastore/label?image={image}", files={"label": ("l.nii.gz", data)})
            except httpx.HTTPError:
                return  # the server is gone: whatever was not answered was not acknowledged
            if response.status_code == 200:
                acked.append((image, response.json()["version"], hashlib.sha256(data).hexdigest()))


def stale_links(studies: Path) -> int:
    """Cold look (server dead): head versions whose labels/<tag>/<id> file is missing or another version."""
    state = studies / ".annotation-server"
    conn = sqlite3.connect(f"file:{state / 'index.sqlite'}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT v.image_id, v.tag, v.ext, v.relpath FROM label_heads h JOIN label_versions v "
        "ON v.image_id = h.image_id AND v.tag = h.tag AND v.version = h.version"
    ).fetchall()
    conn.close()
    stale = 0
    for image_id, tag, ext, relpath in rows:
        link = studies / "labels" / tag / f"{image_id}{ext}"
        if not link.is_file() or not os.path.samefile(link, state / relpath):
            stale += 1
    return stale


def run_cycle(args: argparse.Namespace, root: Path, studies: Path, cycle: int) -> dict[str, object]:
    app_dir = root / "crashtest_app"
    server = Server(
        ["--app", str(app_dir), "--studies", str(studies), "--data-dir", str(root / "data")],
        env={"ANNOTATE_RESCAN_INTERVAL_S": "0", "ANNOTATE_MODEL_SYNC_INTERVAL_S": "0"},
    )
    images = [f"case{i:02d}" for i in range(args.images)]
    acked: list[tuple[str, int, str]] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=writer, args=(server.url, images, cycle * 100 + n, acked, stop))
        for n in range(args.writers)
    ]
    for thread in threads:
        thread.start()
    time.sleep(random.Random(cycle).uniform(0.5, args.max_run_s))
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(15)
    stale = stale_links(studies)
    return {"acked": acked, "stale_before_restart": stale}


def verify(args: argparse.Namespace, root: Path, studies: Path, acked: list[tuple[str, int, str]]) -> dict[str, int]:
    server = Server(
        ["--app", str(root / "crashtest_app"), "--studies", str(studies), "--data-dir", str(root / "data")],
        env={"ANNOTATE_RESCAN_INTERVAL_S": "0", "ANNOTATE_MODEL_SYNC_INTERVAL_S": "0"},
    )
    intact = missing = corrupt = 0
    try:
        with httpx.Client(timeout=30) as client:
            for image, version, digest in acked:
                response = client.get(f"{server.url}/datastore/label?label={image}&version={version}")
                if response.status_code != 200:
                    missing += 1
                elif hashlib.sha256(response.content).hexdigest() != digest:
                    corrupt += 1
                else:
                    intact += 1
            stale_after = stale_links(studies)
            wrong_links = 0
            for image in {a[0] for a in acked}:
                head = client.get(f"{server.url}/datastore/label?label={image}")
                link = studies / "labels" / "final" / f"{image}.nii.gz"
                if head.status_code != 200 or not link.is_file() or link.read_bytes() != head.content:
                    wrong_links += 1
    finally:
        server.stop()
    conn = sqlite3.connect(studies / ".annotation-server" / "index.sqlite")
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    return {
        "intact": intact,
        "missing": missing,
        "corrupt": corrupt,
        "stale_links_after_restart": stale_after,
        "links_not_matching_head": wrong_links,
        "integrity_ok": int(integrity == "ok"),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--max-run-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crash-saves-") as tmp:
        root = Path(tmp)
        (root / "crashtest_app").mkdir()
        (root / "crashtest_app" / "__init__.py").write_text(APP_SOURCE)
        studies = make_studies(root, args.images)
        acked: list[tuple[str, int, str]] = []
        stale_seen = 0
        for cycle in range(args.cycles):
            result = run_cycle(args, root, studies, cycle)
            acked += result["acked"]  # type: ignore[arg-type]
            stale_seen += int(result["stale_before_restart"])  # type: ignore[arg-type]
        checked = verify(args, root, studies, acked)
    report = {
        "benchmark": "crash_saves",
        "cycles": args.cycles,
        "writers": args.writers,
        "acknowledged_saves": len(acked),
        "stale_links_seen_after_kills": stale_seen,
        **checked,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

"""Datastore at scale: median HTTP latency of a label save, a stats listing and next-sample, at 100 and 10,000 studies.

Builds each store from tiny real NIfTI volumes, starts a real `annotate-server` on 127.0.0.1 for it, and
times requests through HTTP as a client sees them. A `GET /health` round trip measured in the same run is
the baseline (the HTTP floor on this machine), so the ratios stay meaningful on a noisy machine.

    python benchmarks/datastore_scale.py [--sizes 100 10000] [--repeats 40]

Prints one JSON document. Targets (issue 2): each median <= 0.100 s at 10,000 studies, and a save costs
the same at 100 and 10,000 studies (ratio ~ 1).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from common import Server

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (8, 8, 4)


def nifti_bytes(array: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array, AFFINE)
    buffer = io.BytesIO()
    file_map = image.make_file_map({"image": buffer, "header": buffer})
    image.to_file_map(file_map)
    return gzip.compress(buffer.getvalue())


def build_store(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(n):
        array = rng.integers(-100, 100, size=SHAPE, dtype=np.int16)
        nib.save(nib.Nifti1Image(array, AFFINE), str(folder / f"case_{index:05d}.nii"))


def median_s(samples: list[float]) -> float:
    return round(statistics.median(samples), 5)


def measure(url: str, n: int, repeats: int) -> dict[str, float]:
    label = nifti_bytes((np.arange(np.prod(SHAPE)).reshape(SHAPE) % 3).astype(np.uint8))
    timings: dict[str, list[float]] = {"health": [], "save_label": [], "stats": [], "random": [], "first": []}
    with httpx.Client(base_url=url, timeout=30) as client:
        for index in range(repeats):
            image_id = f"case_{(index * 7919) % n:05d}"
            calls = {
                "health": lambda: client.get("/health"),
                "save_label": lambda image_id=image_id: client.put(
                    f"/datastore/label?image={image_id}",
                    files={"label": ("label.nii.gz", label)},
                    data={"params": '{"client_id": "bench"}'},
                ),
                "stats": lambda: client.get("/datastore/?output=stats"),
                "random": lambda: client.post("/activelearning/random", json={"client_id": "bench"}),
                "first": lambda: client.post("/activelearning/first", json={"client_id": "bench"}),
            }
            for name, call in calls.items():
                start = time.perf_counter()
                response = call()
                timings[name].append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise RuntimeError(f"{name} failed: {response.status_code} {response.text}")
    medians = {f"{name}_median_s": median_s(values) for name, values in timings.items()}
    baseline = medians["health_median_s"]
    medians.update(
        {
            f"{name}_vs_health": round(medians[f"{name}_median_s"] / baseline, 2)
            for name in ("save_label", "stats", "random", "first")
        }
    )
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="datastore-scale-") as tmp:
        for n in args.sizes:
            studies = Path(tmp) / f"studies_{n}"
            build_started = time.monotonic()
            build_store(studies, n)
            built_s = time.monotonic() - build_started
            server = Server(
                ["--app", "kidney", "--studies", str(studies), "--data-dir", str(Path(tmp) / f"data_{n}")],
                env={"ANNOTATE_RESCAN_INTERVAL_S": "0"},
            )
            try:
                results[str(n)] = {
                    "studies": n,
                    "build_s": round(built_s, 2),
                    "startup_s": round(server.startup_s, 2),
                    **measure(server.url, n, args.repeats),
                }
            finally:
                server.stop()
    sizes = [str(n) for n in args.sizes]
    summary: dict[str, object] = {"benchmark": "datastore_scale", "repeats": args.repeats, "by_studies": results}
    if len(sizes) >= 2:
        small, large = results[sizes[0]], results[sizes[-1]]
        summary["save_ratio_large_vs_small"] = round(large["save_label_median_s"] / small["save_label_median_s"], 2)
        summary["targets_met"] = all(
            large[f"{name}_median_s"] <= 0.100 for name in ("save_label", "stats", "random", "first")
        )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Batch inference throughput against a real Orthanc: series per minute, SEGs written back to the PACS.

Stores N copies of the embedded sample CT (122 x 101 x 30, as an axial DICOM series under new UIDs) and,
when ../shared is present, the 20-slice 512 x 512 JPEG 2000 TotalSegmentator CT in a throw-away Orthanc on
127.0.0.1 (tests/pacs.py), starts `annotate-server --app kidney --studies <orthanc>` and runs
`POST /batch/infer/kidney_seg` over every series. Baseline in the same run: plain `POST /infer/kidney_seg`
on each series again (fetched and cached by then), so the cost of saving the label and writing the SEG shows.

    python benchmarks/batch_throughput.py [--copies 6]

Prints JSON: series, elapsed_s, series_per_minute, per_series_s (median), infer_only_per_series_s (median),
segs_stored, and the machine's CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import Server, free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ohif_support import ct_series_from_nifti  # noqa: E402
from pacs import Orthanc, load_samples, missing_requirement  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=6, help="copies of the small sample CT series")
    args = parser.parse_args()
    reason = missing_requirement()
    if reason:
        print(json.dumps({"skipped": reason}))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "orthanc"
        folder.mkdir()
        orthanc = Orthanc(folder, free_port())
        try:
            sample = REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz"
            series = [ct_series_from_nifti(sample) for _ in range(args.copies)]
            shared = REPO.parent / "shared" / "data"
            if (shared / "totalsegmentator").is_dir():
                series.append(load_samples(shared)["j2k"])
            for datasets in series:
                orthanc.upload(datasets)
            server = Server(
                ["--app", "kidney", "--studies", orthanc.dicomweb_url, "--data-dir", str(Path(scratch) / "data")],
                env={"ANNOTATE_RESCAN_INTERVAL_S": "0"},
            )
            try:
                report = run(server.url, [str(s[0].SeriesInstanceUID) for s in series])
            finally:
                server.stop()
        finally:
            orthanc.stop()
    print(json.dumps({**report, "cpus": os.cpu_count()}, indent=1))


def run(url: str, uids: list[str]) -> dict:
    started = time.monotonic()
    answer = httpx.post(f"{url}/batch/infer/kidney_seg", json={"images": uids}, timeout=60)
    answer.raise_for_status()
    while True:
        job = httpx.get(f"{url}/batch/infer", timeout=60).json()
        if job["status"] not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    infer_only = []
    for uid in uids:
        began = time.monotonic()
        httpx.post(f"{url}/infer/kidney_seg", params={"image": uid, "output": "json"}, timeout=600).raise_for_status()
        infer_only.append(time.monotonic() - began)
    per_series = [p["seconds"] for p in job["images"].values() if p["seconds"] is not None]
    return {
        "status": job["status"],
        "series": len(uids),
        "failed": job["failed"],
        "elapsed_s": round(elapsed, 2),
        "series_per_minute": round(60 * (len(uids) - job["failed"]) / elapsed, 2),
        "per_series_s": round(statistics.median(per_series), 3),
        "per_series_max_s": round(max(per_series), 3),
        "infer_only_per_series_s": round(statistics.median(infer_only), 3),
        "segs_stored": sum(p["dicom_seg"] == "stored" for p in job["images"].values()),
    }


if __name__ == "__main__":
    main()

"""Region-growing click tool on the real CT samples: Dice after 1..5 simulated clicks per kidney.

Protocol (annotation_server.evaluation.clicks): first click at the kidney's centre, each next click at
the centre of the largest error (foreground in a miss, background in a leak). Truth: TotalSegmentator's
kidney_right (2) / kidney_left (3). Latency per click is reported with a same-run baseline: the time to
smooth the volume once (so the ratio survives a noisy machine).

    python benchmarks/region_growing_dice.py [--shared ../shared/data] [--clicks 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from annotation_server.evaluation.clicks import simulate_clicks
from annotation_server.tools.region_growing import RegionGrowingConfig, grow_region

CASES = {
    "ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "ct_full": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
}
KIDNEYS = {"right": 2, "left": 3}


def default_shared() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=default_shared())
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    folder = args.shared / "totalsegmentator"
    config = RegionGrowingConfig()
    results: dict[str, object] = {}
    latencies: list[float] = []
    baselines: list[float] = []
    for case, (ct_name, seg_name) in CASES.items():
        image = nib.load(str(folder / ct_name))
        array = np.asarray(image.dataobj).astype(np.float32)
        labels = np.asarray(nib.load(str(folder / seg_name)).dataobj)
        spacing = tuple(float(v) for v in image.header.get_zooms()[:3])
        start = time.perf_counter()
        ndimage.gaussian_filter(array, sigma=config.smoothing_sigma_mm / np.asarray(spacing))
        baselines.append(time.perf_counter() - start)
        for side, value in KIDNEYS.items():

            def segment(fg: list, bg: list, array: np.ndarray = array, spacing: tuple = spacing) -> np.ndarray:
                start = time.perf_counter()
                mask = grow_region(array, spacing, fg, bg, config)
                latencies.append(time.perf_counter() - start)
                return mask

            scores = simulate_clicks(segment, labels == value, args.clicks)
            reached = next((i + 1 for i, s in enumerate(scores) if s >= 0.8), None)
            results[f"{case}_{side}"] = {
                "dice_after_click": [round(s, 4) for s in scores],
                "clicks_to_0.80": reached,
                "best_dice": round(max(scores), 4),
            }
    click_p50 = statistics.median(latencies)
    baseline_p50 = statistics.median(baselines)
    print(
        json.dumps(
            {
                "benchmark": "region_growing_dice",
                "config": config.model_dump(),
                "kidneys": results,
                "min_best_dice": min(r["best_dice"] for r in results.values()),  # type: ignore[index]
                "click_latency_p50_s": round(click_p50, 4),
                "baseline_smoothing_p50_s": round(baseline_p50, 4),
                "click_vs_smoothing_ratio": round(click_p50 / baseline_p50, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

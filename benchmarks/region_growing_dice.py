"""Region-growing click tool on the real CT samples: Dice after 1..5 simulated clicks per kidney.

Protocol (annotation_server.evaluation.clicks): first click at the kidney's centre, each next click at
the centre of the largest error (foreground in a miss, background in a leak). Truth: TotalSegmentator's
kidney_right (2) / kidney_left (3) on example_ct_sm (30 slices) and on the full-body example_ct.

Latency is the median time of one tool call, reported with a baseline measured in the same run and on
the same clicks: ``prepare_roi`` alone (crop, clip, bin, median filter), the fixed cost every click
pays. The ratio survives a noisy or shared machine better than the seconds do.

``random_starts`` repeats the protocol from random interior first clicks (seeded, reproducible), so
the numbers do not hinge on one lucky centre click.

    python benchmarks/region_growing_dice.py [--shared ../shared] [--clicks 5] [--random-starts 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from annotation_server.evaluation.clicks import dice, next_click, simulate_clicks
from annotation_server.tools.region_growing import RegionGrowingConfig, grow_region, prepare_roi

CASES = {
    "ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "ct_full": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
}
KIDNEYS = {"right": 2, "left": 3}
TARGET = 0.80


def find_totalsegmentator(shared: Path | None) -> Path | None:
    """The ``totalsegmentator`` sample folder: from --shared only when given (a typo must not silently
    fall back), else $ANNOTATE_SHARED_DIR, else a ``shared`` folder beside the repo or a parent."""
    if shared is not None:
        roots = [shared]
    elif os.environ.get("ANNOTATE_SHARED_DIR"):
        roots = [Path(os.environ["ANNOTATE_SHARED_DIR"])]
    else:
        roots = [parent / "shared" for parent in Path(__file__).resolve().parents]
    for root in roots:
        for candidate in (root, root / "data", root / "totalsegmentator", root / "data" / "totalsegmentator"):
            folder = candidate if candidate.name == "totalsegmentator" else candidate / "totalsegmentator"
            if (folder / "example_ct_sm.nii.gz").is_file():
                return folder
    return None


def _interior_starts(truth: np.ndarray, count: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Random voxels at least 2 voxels inside the object: places a person might plausibly click."""
    depth = ndimage.distance_transform_edt(np.pad(truth, 1))[1:-1, 1:-1, 1:-1]
    candidates = np.argwhere(depth >= 2.0)
    picks = candidates[rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)]
    return [tuple(int(v) for v in p) for p in picks]  # type: ignore[misc]


def _from_start(segment, truth: np.ndarray, start: tuple[int, int, int], n_clicks: int) -> list[float]:  # type: ignore[no-untyped-def]
    """The protocol with a given first click instead of the centre (same next-click rule afterwards)."""
    foreground, background, scores = [start], [], []
    for index in range(n_clicks):
        prediction = segment(list(foreground), list(background)).astype(bool)
        scores.append(dice(prediction, truth))
        click = next_click(prediction, truth) if index < n_clicks - 1 else None
        if click is None:
            scores += [scores[-1]] * (n_clicks - len(scores))
            break
        (foreground if click[1] else background).append(click[0])
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=None, help="the shared folder (or its data/ subfolder)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--random-starts", type=int, default=4, help="extra runs per kidney from random clicks")
    args = parser.parse_args()
    folder = find_totalsegmentator(args.shared)
    if folder is None:
        print("real CT sample not available: pass --shared DIR or set ANNOTATE_SHARED_DIR", file=sys.stderr)
        return 2
    config = RegionGrowingConfig()
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, object]] = {}
    latencies: list[float] = []
    baselines: list[float] = []
    for case, (ct_name, seg_name) in CASES.items():
        image = nib.load(str(folder / ct_name))
        array = np.asarray(image.dataobj)
        labels = np.asarray(nib.load(str(folder / seg_name)).dataobj)
        spacing = tuple(float(v) for v in image.header.get_zooms()[:3])
        results[case] = {"file": ct_name, "shape": list(array.shape), "spacing_mm": list(spacing)}
        for side, value in KIDNEYS.items():
            truth = labels == value

            def segment(fg: list, bg: list, array: np.ndarray = array, spacing: tuple = spacing) -> np.ndarray:
                start = time.perf_counter()
                prepare_roi(array, spacing, fg, config)
                baselines.append(time.perf_counter() - start)
                start = time.perf_counter()
                mask = grow_region(array, spacing, fg, bg, config)
                latencies.append(time.perf_counter() - start)
                return mask

            scores = simulate_clicks(segment, truth, args.clicks)
            entry: dict[str, object] = {
                "label": value,
                "voxels": int(truth.sum()),
                "dice_after_click": [round(s, 4) for s in scores],
                "clicks_to_0.80": next((i + 1 for i, s in enumerate(scores) if s >= TARGET), None),
                "best_dice": round(max(scores), 4),
            }
            if args.random_starts > 0:
                runs = [
                    _from_start(segment, truth, s, args.clicks)
                    for s in _interior_starts(truth, args.random_starts, rng)
                ]
                best = [max(r) for r in runs]
                entry["random_starts"] = {
                    "runs": len(runs),
                    "first_click_dice_median": round(statistics.median(r[0] for r in runs), 4),
                    "best_dice_min": round(min(best), 4),
                    "best_dice_median": round(statistics.median(best), 4),
                    "reached_0.80": sum(b >= TARGET for b in best),
                }
            results[case][side] = entry
    click_p50 = statistics.median(latencies)
    baseline_p50 = statistics.median(baselines)
    best_all = [results[c][s]["best_dice"] for c in CASES for s in KIDNEYS]  # type: ignore[index]
    report = {
        "benchmark": "region_growing_dice",
        "protocol": "centre click, then centre of the largest error region (annotation_server.evaluation.clicks)",
        "config": config.model_dump(),
        "results": results,
        "min_best_dice": min(best_all),  # type: ignore[type-var]
        "all_reach_0.80": all(results[c][s]["clicks_to_0.80"] is not None for c in CASES for s in KIDNEYS),  # type: ignore[index]
        "latency": {
            "calls": len(latencies),
            "click_median_s": round(click_p50, 4),
            "click_max_s": round(max(latencies), 4),
            "baseline": "prepare_roi alone (crop, clip, bin, median) on the same clicks, same run",
            "baseline_median_s": round(baseline_p50, 4),
            "click_vs_baseline": round(click_p50 / baseline_p50, 2),
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shipped kidney models on the real CT samples (never used for training): the model-card numbers.

- kidney_seg: kidney Dice (union of kidney, tumor, cyst vs TotalSegmentator labels 2 + 3) on the kidney-level
  crop and on the full-body CT, plus predicted kidney voxels farther than 20 mm from any true kidney voxel.
- kidney_click: Dice after each of 5 simulated clicks per kidney (first click at the kidney's centre, then
  at the centre of the largest error), as for the region-growing tool.
- Timing on this machine: whole inference (read from memory, preprocess, sliding window, invert) against
  the raw network forward pass measured in the same run.

    python benchmarks/kidney_models.py [--shared ../shared/data] [--models models]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from annotation_server.evaluation.clicks import dice, simulate_clicks
from annotation_server.imaging import read_volume
from annotation_server.inference.bundle_task import BundleSegmentationTask
from annotation_server.inference.click_task import BundleClickTask
from annotation_server.inference.model_space import volume_to_metatensor
from annotation_server.inference.params import InferParams

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "ct_full": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
}
FAR_MM = 20.0


def _median_time(run, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def evaluate_seg(task: BundleSegmentationTask, folder: Path) -> dict[str, object]:
    report: dict[str, object] = {}
    for case, (ct_name, seg_name) in CASES.items():
        volume = read_volume(folder / ct_name)
        labels = read_volume(folder / seg_name).array
        truth = np.isin(labels, (2, 3))
        mask = task.infer(volume, InferParams()).mask > 0
        spacing = volume.geometry.spacing
        far = ndimage.distance_transform_edt(~truth, sampling=spacing) > FAR_MM
        runtime = task._runtime()
        prepared = runtime.preprocess({"image": volume_to_metatensor(volume.array, volume)})["image"]
        total_s = _median_time(lambda v=volume: task.infer(v, InferParams()))
        forward_s = _median_time(lambda x=prepared, r=runtime: r.forward(x))
        report[case] = {
            "kidney_dice": round(dice(mask, truth), 4),
            "predicted_voxels": int(mask.sum()),
            "true_voxels": int(truth.sum()),
            f"predicted_voxels_farther_than_{int(FAR_MM)}mm": int((mask & far).sum()),
            "inference_s": round(total_s, 3),
            "raw_forward_s": round(forward_s, 3),
            "inference_vs_forward": round(total_s / forward_s, 2),
        }
    return report


def evaluate_click(task: BundleClickTask, folder: Path, clicks: int) -> dict[str, object]:
    report: dict[str, object] = {}
    latencies: list[float] = []
    for case, (ct_name, seg_name) in CASES.items():
        volume = read_volume(folder / ct_name)
        labels = read_volume(folder / seg_name).array
        for side, value in (("right", 2), ("left", 3)):

            def segment(fg: list, bg: list, volume=volume) -> np.ndarray:  # type: ignore[no-untyped-def]
                start = time.perf_counter()
                mask = task.infer(volume, InferParams(foreground=fg, background=bg)).mask
                latencies.append(time.perf_counter() - start)
                return mask

            scores = simulate_clicks(segment, labels == value, clicks)
            report[f"{case}_{side}"] = {
                "dice_after_click": [round(s, 4) for s in scores],
                "dice_1": round(scores[0], 4),
                "dice_3": round(max(scores[:3]), 4),
                "dice_5": round(max(scores[:5]), 4),
            }
    report["click_latency_p50_s"] = round(statistics.median(latencies), 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--clicks", type=int, default=5)
    args = parser.parse_args()
    folder = args.shared / "totalsegmentator"
    seg = BundleSegmentationTask(args.models / "kidney_seg", labels={"kidney": 1, "tumor": 2, "cyst": 3})
    click = BundleClickTask(args.models / "kidney_click", labels={"kidney": 1})
    seg.load("cpu")
    click.load("cpu")
    print(
        json.dumps(
            {
                "benchmark": "kidney_models",
                "device": "cpu",
                "kidney_seg": {"version": seg.version, "sha256": seg.bundle.sha256, **evaluate_seg(seg, folder)},
                "kidney_click": {
                    "version": click.version,
                    "sha256": click.bundle.sha256,
                    **evaluate_click(click, folder, args.clicks),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""The shipped kidney models on the real CT samples (never used for training): the model-card numbers.

- kidney_seg: kidney Dice (union of kidney, tumor, cyst vs TotalSegmentator labels 2 + 3) on the kidney-level
  crop and on the full-body CT, plus predicted kidney voxels farther than 20 mm from any true kidney voxel.
- kidney_click: Dice after each of 5 simulated clicks per kidney (first click at the kidney's centre, then
  at the centre of the largest error), as for the region-growing tool.
- Storage orders (issue 11): kidney_seg's kidney Dice and kidney_click's best Dice within 3 clicks on the
  full-body CT as shipped (RAS NIfTI), re-stored LPS (NIfTI) and written as a standard axial DICOM series
  (ImageOrientationPatient 1\\0\\0\\0\\1\\0, the PACS case), each read back through the server's reader.
- Timing on this machine: whole inference (read from memory, preprocess, sliding window, invert) against
  the raw network forward pass measured in the same run.

    python benchmarks/kidney_models.py [--shared ../shared/data] [--models models]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from annotation_server.evaluation.clicks import dice, simulate_clicks
from annotation_server.imaging import Geometry, Volume, read_volume, write_volume
from annotation_server.imaging.dicom_export import write_ct_series
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


def storage_copies(folder: Path, scratch: Path) -> dict[str, tuple[Volume, np.ndarray]]:
    """The full-body CT and its labels as RAS NIfTI, LPS NIfTI and an axial DICOM series, read back from disk."""
    ct = read_volume(folder / "example_ct.nii.gz")
    labels = read_volume(folder / "example_seg_fast_force_split.nii.gz").array
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(ct.geometry.affine), nib.orientations.axcodes2ornt("LPS")
    )
    lps_array = np.ascontiguousarray(nib.orientations.apply_orientation(ct.array, transform))
    lps_labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels, transform))
    lps_geometry = Geometry(
        lps_array.shape, ct.geometry.affine @ nib.orientations.inv_ornt_aff(transform, ct.array.shape)
    )
    write_volume(lps_array, lps_geometry, scratch / "lps.nii.gz")
    write_ct_series(Volume(array=lps_array, geometry=lps_geometry), scratch / "dicom_axial")
    copies = {
        "ras_nifti": (ct, labels),
        "lps_nifti": (read_volume(scratch / "lps.nii.gz"), lps_labels),
        "dicom_axial": (read_volume(scratch / "dicom_axial"), lps_labels),
    }
    for name, (volume, _) in copies.items():
        if name != "ras_nifti" and not volume.geometry.matches(lps_geometry):
            raise RuntimeError(f"{name} did not read back onto the LPS grid: {volume.geometry.describe()}")
    return copies


def evaluate_storage(seg: BundleSegmentationTask, click: BundleClickTask, folder: Path) -> dict[str, dict[str, object]]:
    report: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (volume, labels) in storage_copies(folder, Path(scratch)).items():
            truth = np.isin(labels, (2, 3))
            mask = seg.infer(volume, InferParams()).mask > 0
            clicks = {}
            for side, value in (("right", 2), ("left", 3)):

                def segment(fg: list, bg: list, volume=volume) -> np.ndarray:  # type: ignore[no-untyped-def]
                    return click.infer(volume, InferParams(foreground=fg, background=bg)).mask

                clicks[side] = round(max(simulate_clicks(segment, labels == value, 3)), 4)
            report[name] = {
                "axcodes": volume.geometry.axcodes,
                "kidney_seg_kidney_dice": round(dice(mask, truth), 4),
                "kidney_click_dice_3": clicks,
            }
    return report


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
                "full_ct_by_storage": evaluate_storage(seg, click, folder),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

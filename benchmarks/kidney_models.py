"""The shipped kidney models on the real CT samples (never used for training): the model-card numbers.

- kidney_seg: kidney Dice (union of kidney, tumor, cyst vs TotalSegmentator labels 2 + 3) on the kidney-level
  crop and on the full-body CT, plus predicted kidney voxels farther than 20 mm from any true kidney voxel,
  and (issue 17) the volume predicted as tumor and as cyst in cm3: the patient has no renal mass, so all of
  it is false (`class_report`). Per-class Dice on held-out phantoms with masses (seeds never used in
  training) and the false mass volume on held-out mass-free phantoms.
- kidney_click: Dice after each of 5 simulated clicks per kidney (first click at the kidney's centre, then
  at the centre of the largest error), as for the region-growing tool, called in-process (and its latency).
- kidney_click over HTTP (`kidney_click_paths`, issue 17): the same protocol on all four real kidneys, each
  CT stored as RAS NIfTI, LPS NIfTI and an axial DICOM series, through the session API (one prompt per
  click, deltas applied as a viewer does) and through MONAI Label's `/infer` (every click resent, as 3D
  Slicer's MONAILabel module does): Dice after each click, NoC@85, NoC@90, the worst drop after a click.
  `--click-paths-only --click-bundle DIR` evaluates a candidate bundle.
- Storage orders (issue 11): kidney_seg's kidney Dice and kidney_click's best Dice within 3 clicks on the
  full-body CT as shipped (RAS NIfTI), re-stored LPS (NIfTI) and written as a standard axial DICOM series
  (ImageOrientationPatient 1\\0\\0\\0\\1\\0, the PACS case), each read back through the server's reader.
- Timing on this machine: whole inference (read from memory, preprocess, sliding window, invert) against
  the raw network forward pass measured in the same run.

    python benchmarks/kidney_models.py [--shared ../shared/data] [--models models] [--clicks 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from annotation_apps.kidney.training import training_phantoms
from annotation_server.evaluation.clicks import dice, simulate_clicks
from annotation_server.evaluation.kidney_classes import class_report
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
PHANTOM_SEED = 30_261_122  # held out: training uses 20261122.. and validation 21261122..


def evaluate_phantoms(task: BundleSegmentationTask, with_masses: int, without: int) -> dict[str, object]:
    """Per-class Dice on held-out phantoms that all have tumors and cysts, and false mass volume on
    held-out phantoms without any (the training distribution's anatomy, contrast phases and grids)."""
    from annotation_server.phantoms import generate_phantom

    base = training_phantoms()
    runs = (
        ("with_masses", base.with_(tumor_prob=1.0, cyst_prob=1.0), range(with_masses)),
        ("without_masses", base.with_(tumor_prob=0.0, cyst_prob=0.0), range(with_masses, with_masses + without)),
    )
    report: dict[str, object] = {}
    for name, config, offsets in runs:
        cases = []
        for offset in offsets:
            phantom = generate_phantom(PHANTOM_SEED + offset, config)
            volume = Volume(array=phantom.image, geometry=Geometry(phantom.image.shape, phantom.affine))
            prediction = task.infer(volume, InferParams()).mask
            cases.append(class_report(prediction, phantom.label, volume.geometry.spacing))
        summary: dict[str, object] = {"phantoms": len(cases)}
        summary["kidney_union_dice_mean"] = round(float(np.mean([c["kidney_union_dice"] for c in cases])), 4)
        for cls in ("kidney", "tumor", "cyst"):
            values = [c["dice"][cls] for c in cases if c["dice"][cls] is not None]  # type: ignore[index]
            summary[f"{cls}_dice_mean"] = round(float(np.mean(values)), 4) if values else None
        summary["false_mass_cm3_mean"] = round(float(np.mean([c["false_mass_cm3"] for c in cases])), 3)
        summary["cases"] = cases
        report[name] = summary
    return report


def evaluate_click_phantoms(task: BundleClickTask, phantoms: int, clicks: int) -> dict[str, object]:
    """kidney_click per object class on held-out phantoms that all have tumors and cysts (seeds never used in
    training): each kidney (with its lesions), each tumor and each cyst of 0.5 cm3 or more is one target of
    the click protocol (in-process: whole new answers, no session rule)."""
    from annotation_server.phantoms import generate_phantom

    config = training_phantoms().with_(tumor_prob=1.0, cyst_prob=1.0)
    curves: dict[str, list[list[float]]] = {"kidney": [], "tumor": [], "cyst": []}
    for offset in range(phantoms):
        phantom = generate_phantom(PHANTOM_SEED + offset, config)
        volume = Volume(array=phantom.image, geometry=Geometry(phantom.image.shape, phantom.affine))
        voxel_cm3 = float(np.prod(volume.geometry.spacing)) / 1000.0
        targets: list[tuple[str, np.ndarray]] = []
        kidneys, count = ndimage.label(phantom.label > 0)
        targets += [("kidney", kidneys == i) for i in range(1, count + 1)]
        for name, code in (("tumor", 2), ("cyst", 3)):
            parts, count = ndimage.label(phantom.label == code)
            targets += [(name, parts == i) for i in range(1, count + 1)]
        for name, truth in targets:
            if truth.sum() * voxel_cm3 < 0.5:
                continue

            def segment(fg: list, bg: list, volume=volume) -> np.ndarray:  # type: ignore[no-untyped-def]
                return task.infer(volume, InferParams(foreground=fg, background=bg)).mask

            curves[name].append(simulate_clicks(segment, truth, clicks))
    report: dict[str, object] = {"phantoms": phantoms}
    for name, runs in curves.items():
        if not runs:
            continue
        array = np.array(runs)
        report[name] = {
            "objects": len(runs),
            "dice_after_click_mean": [round(float(v), 4) for v in array.mean(axis=0)],
            "best_within_3_mean": round(float(array[:, :3].max(axis=1).mean()), 4),
            "reached_090_within_3": int((array[:, :3].max(axis=1) >= 0.9).sum()),
        }
    return report


def storage_copies(
    folder: Path, scratch: Path, case: str = "ct_full", prefix: str = ""
) -> dict[str, tuple[Volume, np.ndarray]]:
    """A real CT and its labels as RAS NIfTI, LPS NIfTI and an axial DICOM series, read back from disk.

    The files are written into `scratch` as `<prefix>ras_nifti.nii.gz`, `<prefix>lps.nii.gz` and
    `<prefix>dicom_axial/`, so a server pointed at `scratch` serves the same three copies."""
    ct_name, seg_name = CASES[case]
    ct = read_volume(folder / ct_name)
    labels = read_volume(folder / seg_name).array
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(ct.geometry.affine), nib.orientations.axcodes2ornt("LPS")
    )
    lps_array = np.ascontiguousarray(nib.orientations.apply_orientation(ct.array, transform))
    lps_labels = np.ascontiguousarray(nib.orientations.apply_orientation(labels, transform))
    lps_geometry = Geometry(
        lps_array.shape, ct.geometry.affine @ nib.orientations.inv_ornt_aff(transform, ct.array.shape)
    )
    write_volume(ct.array, ct.geometry, scratch / f"{prefix}ras_nifti.nii.gz")
    write_volume(lps_array, lps_geometry, scratch / f"{prefix}lps.nii.gz")
    write_ct_series(Volume(array=lps_array, geometry=lps_geometry), scratch / f"{prefix}dicom_axial")
    copies = {
        "ras_nifti": (read_volume(scratch / f"{prefix}ras_nifti.nii.gz"), labels),
        "lps_nifti": (read_volume(scratch / f"{prefix}lps.nii.gz"), lps_labels),
        "dicom_axial": (read_volume(scratch / f"{prefix}dicom_axial"), lps_labels),
    }
    for name, (volume, _) in copies.items():
        if name != "ras_nifti" and not volume.geometry.matches(lps_geometry):
            raise RuntimeError(f"{name} did not read back onto the LPS grid: {volume.geometry.describe()}")
    return copies


def evaluate_storage(
    seg: BundleSegmentationTask, click: BundleClickTask | None, folder: Path
) -> dict[str, dict[str, object]]:
    report: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (volume, labels) in storage_copies(folder, Path(scratch)).items():
            truth = np.isin(labels, (2, 3))
            prediction = seg.infer(volume, InferParams()).mask
            mask = prediction > 0
            classes = class_report(prediction, truth.astype(np.uint8), volume.geometry.spacing)
            clicks = {}
            for side, value in (("right", 2), ("left", 3)) if click is not None else ():

                def segment(fg: list, bg: list, volume=volume) -> np.ndarray:  # type: ignore[no-untyped-def]
                    assert click is not None
                    return click.infer(volume, InferParams(foreground=fg, background=bg)).mask

                clicks[side] = round(max(simulate_clicks(segment, labels == value, 3)), 4)
            report[name] = {
                "axcodes": volume.geometry.axcodes,
                "kidney_seg_kidney_dice": round(dice(mask, truth), 4),
                "kidney_seg_false_tumor_cm3": classes["false_cm3"]["tumor"],  # type: ignore[index]
                "kidney_seg_false_cyst_cm3": classes["false_cm3"]["cyst"],  # type: ignore[index]
                "kidney_click_dice_3": clicks,
            }
    return report


CLICK_IMAGES = {"ras_nifti": "ras_nifti", "lps_nifti": "lps", "dicom_axial": "dicom_axial"}  # copy -> datastore id


def evaluate_click_paths(click_bundle: Path, folder: Path, clicks: int) -> dict[str, object]:
    """kidney_click on all four real kidneys (crop and full body, right and left), each stored as RAS NIfTI,
    LPS NIfTI and an axial DICOM series, through the session API and MONAI Label's `/infer` over HTTP
    (issue 17: NoC@85 / NoC@90, Dice after each click, the worst drop after a corrective click)."""
    from fastapi.testclient import TestClient

    from annotation_apps.kidney.recipes import LABELS
    from annotation_server.app_spec import AppSpec
    from annotation_server.evaluation.click_paths import run_both_paths
    from annotation_server.inference.model_sources import BundleModel
    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    spec = AppSpec(
        name="kidney",
        description="kidney_click under test",
        labels=LABELS,
        models=[BundleModel(path=click_bundle, name="kidney_click", kind="click", labels=LABELS, description="")],
    )
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        studies = Path(scratch) / "studies"
        studies.mkdir()
        copies = {case: storage_copies(folder, studies, case, prefix=f"{case}_") for case in CASES}
        settings = Settings(studies=studies, data_dir=Path(scratch) / "data", rescan_interval_s=0)
        # the server's startup summary goes to stdout: keep this script's stdout one JSON document
        with contextlib.redirect_stdout(sys.stderr), TestClient(create_app(settings, spec)) as http:
            for case, stored in copies.items():
                for copy, (_, labels) in stored.items():
                    for side, value in (("right", 2), ("left", 3)):
                        image = f"{case}_{CLICK_IMAGES[copy]}"
                        report[f"{case}_{side}/{copy}"] = run_both_paths(http, image, labels == value, clicks)
    runs = [path for kidney in report.values() for path in kidney.values()]  # type: ignore[union-attr]
    report["summary"] = {
        "runs": len(runs),
        "noc90_max": max((r["noc90"] or clicks + 1) for r in runs),  # clicks + 1: not reached within the run
        "noc85_max": max((r["noc85"] or clicks + 1) for r in runs),
        "noc90_mean": round(float(np.mean([r["noc90"] or clicks + 1 for r in runs])), 2),
        "reached_090_within_3": sum(1 for r in runs if r["noc90"] is not None and r["noc90"] <= 3),
        "worst_drop": max(r["worst_drop"] for r in runs),
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
        prediction = task.infer(volume, InferParams()).mask
        mask = prediction > 0
        classes = class_report(prediction, truth.astype(np.uint8), volume.geometry.spacing)
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
            "false_tumor_cm3": classes["false_cm3"]["tumor"],  # type: ignore[index]
            "false_cyst_cm3": classes["false_cm3"]["cyst"],  # type: ignore[index]
            "false_mass_cm3": classes["false_mass_cm3"],
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
    parser.add_argument("--seg-only", action="store_true", help="kidney_seg only (no click model, no timing loop)")
    parser.add_argument("--phantoms", type=int, nargs=2, default=(4, 2), help="held-out phantoms with / without masses")
    parser.add_argument("--seg-bundle", type=Path, default=None, help="kidney_seg bundle (default: MODELS/kidney_seg)")
    parser.add_argument("--click-bundle", type=Path, default=None, help="kidney_click bundle (default: MODELS/...)")
    parser.add_argument(
        "--click-paths-only", action="store_true", help="only kidney_click through the session API and /infer"
    )
    args = parser.parse_args()
    folder = args.shared / "totalsegmentator"
    click_bundle = args.click_bundle or args.models / "kidney_click"
    if args.click_paths_only:
        print(json.dumps({"kidney_click_paths": evaluate_click_paths(click_bundle, folder, args.clicks)}, indent=2))
        return
    seg_bundle = args.seg_bundle or args.models / "kidney_seg"
    seg = BundleSegmentationTask(seg_bundle, labels={"kidney": 1, "tumor": 2, "cyst": 3})
    seg.load("cpu")
    report: dict[str, object] = {"benchmark": "kidney_models", "device": "cpu"}
    report["kidney_seg"] = {
        "version": seg.version,
        "sha256": seg.bundle.sha256,
        **evaluate_seg(seg, folder),
        "held_out_phantoms": evaluate_phantoms(seg, *args.phantoms),
    }
    click = None
    if not args.seg_only:
        click = BundleClickTask(click_bundle, labels={"kidney": 1})
        click.load("cpu")
        report["kidney_click"] = {
            "version": click.version,
            "sha256": click.bundle.sha256,
            **evaluate_click(click, folder, args.clicks),
            "held_out_phantoms": evaluate_click_phantoms(click, args.phantoms[0], args.clicks),
        }
    report["full_ct_by_storage"] = evaluate_storage(seg, click, folder)
    if not args.seg_only:
        report["kidney_click_paths"] = evaluate_click_paths(click_bundle, folder, args.clicks)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

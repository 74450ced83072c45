"""On-site fine-tuning, end to end on one simulated site: labels saved -> train -> new version -> Dice.

A site whose scans differ from the training distribution (phantom `site_variant`, default 3: noisy
low-dose non-contrast CT with a calibration offset; or `--site hard`: noisy, blurred, thick-slice scans
with big lesions, where the shipped model is weakest) saves `final` labels through the datastore, as
annotators would; `fine_tune` trains from the serving version, registers the result and runs the
promotion gate. The shipped and the new version are then scored on held-out phantoms of the same site
that neither training nor the gate saw.

    python benchmarks/fine_tune.py [--site 3|hard] [--labels 10] [--held-out 6] [--steps 200] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from annotation_models import bundle_path
from annotation_server.app_spec import load_app
from annotation_server.datastore import LabelSource, LocalDatastore
from annotation_server.evaluation.clicks import dice
from annotation_server.imaging import Geometry, Volume
from annotation_server.inference.bundle_task import BundleSegmentationTask
from annotation_server.inference.params import InferParams
from annotation_server.learning.finetune import FineTuneParams, fine_tune, labeled_images
from annotation_server.phantoms import PhantomConfig, generate_phantom
from annotation_server.phantoms.generator import _save
from annotation_server.registry import ModelRegistry

MODEL = "kidney_seg"


def held_out_dice(bundle: Path, phantoms: list) -> list[float]:  # type: ignore[type-arg]
    task = BundleSegmentationTask(bundle)
    scores = []
    for phantom in phantoms:
        volume = Volume(array=phantom.image, geometry=Geometry(phantom.image.shape, phantom.affine))
        scores.append(dice(task.infer(volume, InferParams()).mask > 0, phantom.label > 0))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", default="3", help="phantom site_variant k, or 'hard' (the deliberately hard preset)")
    parser.add_argument("--labels", type=int, default=10, help="labeled studies at the site")
    parser.add_argument("--held-out", type=int, default=6, help="held-out phantoms for the before/after Dice")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fine_tune_bench_"))
    config = PhantomConfig.hard() if args.site == "hard" else PhantomConfig.site_variant(int(args.site))

    studies = workdir / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    store = LocalDatastore(studies)
    started = time.perf_counter()
    for index in range(args.labels):
        phantom = generate_phantom(50_000 + index, config)
        name = f"site{args.site}_{index:03d}"
        _save(phantom.image, phantom.affine, studies / f"{name}.nii.gz")
        store.rescan()
        store.save_label_array(
            name, phantom.label.astype(np.uint8), author="annotator", source=LabelSource(model=MODEL, model_version="1")
        )
    labels_s = time.perf_counter() - started
    held_out = [generate_phantom(90_000 + i, config) for i in range(args.held_out)]

    registry = ModelRegistry(workdir / "registry")
    shipped = registry.ensure_registered(MODEL, bundle_path(MODEL))
    before = held_out_dice(Path(shipped.path), held_out)
    params = FineTuneParams(steps=args.steps, learning_rate=args.lr, val_split=0.2, threads=args.threads)
    outcome = fine_tune(dict(load_app("kidney").trainers), MODEL, labeled_images(store), registry, params)
    after = held_out_dice(Path(outcome.version.path), held_out)
    store.close()
    print(
        json.dumps(
            {
                "site_variant": args.site,
                "labels_saved": args.labels,
                "labels_saved_s": round(labels_s, 1),
                "train_images": outcome.train_images,
                "val_images": outcome.val_images,
                "steps": outcome.steps,
                "train_wall_s": outcome.wall_s,
                "new_version": outcome.version.version,
                "gate": outcome.gate.model_dump(),
                "promoted": outcome.promoted,
                "held_out_phantoms": args.held_out,
                "held_out_dice_before": round(float(np.mean(before)), 4),
                "held_out_dice_after": round(float(np.mean(after)), 4),
                "held_out_dice_before_each": [round(s, 4) for s in before],
                "held_out_dice_after_each": [round(s, 4) for s in after],
                "workdir": str(workdir),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

"""Training the kidney models on procedural phantoms (the real CT is reserved for evaluation).

`train_seg` and `train_click` build the data from `annotation_server.phantoms`, run the shared training
loop, and write a bundle from the recipes in `recipes.py`. The scripts in `models/<name>/train.py` call
these with fixed seeds; CI runs them for a few steps only.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import sliding_window_inference
from monai.transforms import Compose
from scipy import ndimage

from annotation_apps.kidney import recipes
from annotation_server.evaluation.clicks import dice
from annotation_server.imaging import Geometry, Volume
from annotation_server.inference.click_task import crop_volume
from annotation_server.inference.guidance import render_guidance, roi_around
from annotation_server.inference.model_space import volume_to_metatensor
from annotation_server.learning.bundle_writer import inference_config, write_bundle
from annotation_server.learning.click_training import ErrorClicks
from annotation_server.learning.patches import PatchBatches, augmentation
from annotation_server.learning.trainer import Batch, TrainHistory, TrainProgress, TrainSettings, train
from annotation_server.phantoms import PhantomConfig, Phase, generate_phantom


@dataclass(frozen=True)
class RecipeRun:
    """What a training run needs beyond the loop settings."""

    train_phantoms: int = 160
    val_phantoms: int = 10
    batch_size: int = 2
    seed: int = 20261122
    truncate: float = 0.4  # share of phantoms also used as a short scan cutting the kidneys
    phantom_config: PhantomConfig | None = None
    init_weights: Path | None = None  # fine-tune from these weights (a bundle's models/model.pt) instead of scratch
    minutes: float | None = None  # stop after this wall time (best validated weights are kept)
    error_click_share: float = 0.5  # share of click batches that also get clicks where the network in training errs
    error_click_rounds: int = 2  # at most this many corrective rounds on such a batch

    def phantoms(self) -> PhantomConfig:
        return self.phantom_config or training_phantoms()

    def seeds(self) -> tuple[range, range]:
        """Training and held-out validation seeds (disjoint)."""
        held_out = self.seed + 1_000_000
        return range(self.seed, self.seed + self.train_phantoms), range(held_out, held_out + self.val_phantoms)


def training_phantoms() -> PhantomConfig:
    """The default phantom distribution with non-contrast scans weighted up: many sites scan kidneys
    without contrast, and it is the hardest case (kidney, liver, spleen and muscle within ~30 HU).

    Masses are rarer than in the default (tumor 35 %, cyst 30 %: about 45 % of phantoms have none), because
    most kidneys a tool sees are healthy and a model must learn that a normal sinus is not a mass (issue 17).
    """
    return PhantomConfig.default().with_(
        phase_weights={Phase.NONCONTRAST: 0.45, Phase.ARTERIAL: 0.15, Phase.VENOUS: 0.25, Phase.EXCRETORY: 0.15},
        tumor_prob=0.35,
        cyst_prob=0.3,
    )


def truncate_scan(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, rng: random.Random
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A shorter scan (60-140 mm) that may cut through the kidneys, as real kidney-level crops do.

    Models never trained on a kidney cut by the image border miss it there; this teaches them.
    """
    axis = int(np.argmax(np.abs(affine[2, :3])))  # the array axis running head-foot
    step = float(np.linalg.norm(affine[:3, axis]))
    length = max(4, round(rng.uniform(60.0, 140.0) / step))
    kidney_slices = np.nonzero(np.any(label > 0, axis=tuple(a for a in range(3) if a != axis)))[0]
    if length >= image.shape[axis] or len(kidney_slices) == 0:
        return image, label, affine
    centre = int(rng.choice(kidney_slices))
    start = min(max(centre - rng.randrange(length), 0), image.shape[axis] - length)
    window = [slice(None)] * 3
    window[axis] = slice(start, start + length)
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ np.eye(3)[axis] * start + affine[:3, 3]
    return image[tuple(window)], label[tuple(window)], shifted


def _compose(config: list[dict[str, Any]]) -> Compose:
    parser = ConfigParser({"t": {"_target_": "Compose", "transforms": config}})
    return parser.get_parsed_content("t")


def _volume(image: np.ndarray, affine: np.ndarray) -> Volume:
    return Volume(array=image, geometry=Geometry(image.shape, affine))


# ------------------------------------------------------------------------------------------------ kidney_seg
def seg_samples(seeds: range, config: PhantomConfig | None, truncate: float = 0.0) -> list[dict[str, Any]]:
    """Preprocessed phantoms; a `truncate` fraction are also added as short scans cutting the kidneys."""
    preprocessing = _compose(recipes.seg_preprocessing(with_label=True))
    samples = []
    for seed in seeds:
        phantom = generate_phantom(seed, config)
        rng = random.Random(seed)
        views = [(phantom.image, phantom.label, phantom.affine)]
        if rng.random() < truncate:
            views.append(truncate_scan(phantom.image, phantom.label, phantom.affine, rng))
        for image, label, affine in views:
            volume = _volume(image, affine)
            data = {"image": volume_to_metatensor(image, volume), "label": volume_to_metatensor(label, volume)}
            samples.append(preprocessing(data))
    return samples


def seg_validator(samples: list[dict[str, Any]]) -> Callable[[torch.nn.Module], float]:
    """Class-aware score over held-out phantoms, whole volumes: per phantom the mean of the kidney-union
    Dice, the tumor Dice and the cyst Dice, where a mass class absent from the truth scores 1 if none is
    predicted and 0 otherwise. The union alone hid a model that invents masses in healthy kidneys (issue 17);
    this score drops by a third for every phantom where it does, so such weights are not kept as "best"."""

    def validate(network: torch.nn.Module) -> float:
        device = next(network.parameters()).device
        scores = []
        for sample in samples:
            logits = sliding_window_inference(
                sample["image"][None].to(device), recipes.SEG_PATCH, 2, network, overlap=0.25
            )
            pred = torch.argmax(logits, dim=1)[0].cpu().numpy()
            truth = np.asarray(sample["label"][0])
            union = dice(pred > 0, truth > 0)
            masses = [dice(pred == code, truth == code) for code in (2, 3)]  # both empty: 1.0
            scores.append((union + sum(masses)) / 3.0)
        return float(np.mean(scores))

    return validate


def _fit(
    out_dir: Path,
    settings: TrainSettings,
    samples: list[dict[str, Any]],
    validate: Callable[[torch.nn.Module], float],
    transform: Compose,
    input_keys: tuple[str, ...],
    network_def: dict[str, Any],
    config: dict[str, Any],
    metadata: Callable[[TrainHistory], dict[str, Any]],
    progress: Callable[[TrainProgress], None] | None,
    batch_size: int,
    extras: dict[str, Any] | None = None,
    error_clicks: tuple[float, int] | None = None,
    init_weights: Path | None = None,
    minutes: float | None = None,
) -> TrainHistory:
    """Train a recipe's network on prepared samples and write its bundle with the best weights."""
    network = ConfigParser({"net": network_def}).get_parsed_content("net")
    if init_weights is not None:  # fine-tuning: start from a shipped bundle's weights
        network.load_state_dict(torch.load(init_weights, map_location="cpu", weights_only=True))
    batches: Iterator[Batch] = PatchBatches(samples, transform, batch_size, seed=settings.seed, input_keys=input_keys)
    if error_clicks is not None:
        share, rounds = error_clicks
        batches = ErrorClicks(
            batches,
            network,
            recipes.CLICK_SPACING,
            recipes.CLICK_SIGMA_MM,
            probability=share,
            max_rounds=rounds,
            seed=settings.seed,
        )
    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    history = train(
        network,
        batches,
        settings,
        validate,
        progress,
        should_stop=None if deadline is None else (lambda: time.monotonic() > deadline),
    )
    write_bundle(out_dir, config, metadata(history), history.best_state or {}, extras)
    return history


def train_seg(
    out_dir: Path, settings: TrainSettings, run: RecipeRun, progress: Callable[[TrainProgress], None] | None = None
) -> TrainHistory:
    seeds, val_seeds = run.seeds()
    config = inference_config(
        recipes.seg_network_def(), recipes.seg_preprocessing(), recipes.seg_inferer(), recipes.seg_postprocessing()
    )
    return _fit(
        out_dir,
        settings,
        seg_samples(seeds, run.phantoms(), run.truncate),
        seg_validator(seg_samples(val_seeds, run.phantoms(), run.truncate)),
        augmentation(["image"], recipes.SEG_PATCH),
        ("image",),
        recipes.seg_network_def(),
        config,
        lambda history: _seg_metadata(history, run),
        progress,
        run.batch_size,
        init_weights=run.init_weights,
        minutes=run.minutes,
    )


def _bundle_metadata(
    task: str,
    description: str,
    model_type: str,
    input_channels: dict[str, str],
    output_channels: dict[str, str],
    history: TrainHistory,
    run: RecipeRun,
) -> dict[str, Any]:
    """metadata.json in the MONAI bundle schema, plus our training summary."""
    return {
        "version": "1.0.0",
        "task": task,
        "description": description,
        "authors": "annotation-server developers",
        "data_source": "procedural abdominal CT phantoms (annotation_server.phantoms); no patient data",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": len(input_channels),
                    "channel_def": input_channels,
                    "dtype": "float32",
                    "value_range": list(recipes.HU_WINDOW),
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(output_channels),
                    "channel_def": output_channels,
                }
            },
        },
        "annotation_server": {"type": model_type, "training": _training_summary(history, run)},
    }


def _seg_metadata(history: TrainHistory, run: RecipeRun) -> dict[str, Any]:
    return _bundle_metadata(
        "Kidney, tumor and cyst segmentation in CT",
        "Automatic kidney / tumor / cyst segmentation (compact 3D UNet) trained on procedural phantoms",
        "segmentation",
        {"0": "image"},
        {"0": "background", "1": "kidney", "2": "tumor", "3": "cyst"},
        history,
        run,
    )


# ----------------------------------------------------------------------------------------------- kidney_click
def _objects(label: np.ndarray, rng: random.Random) -> np.ndarray | None:
    """A target for one interaction: a whole kidney (with its lesions), a tumor, or a cyst."""
    choices: list[np.ndarray] = []
    kidneys, count = ndimage.label(label > 0)
    sizes = ndimage.sum(np.ones_like(kidneys), kidneys, range(1, count + 1)) if count else []
    whole = [kidneys == i + 1 for i, size in enumerate(sizes) if size > 50]
    lesions = []
    for value in (2, 3):
        parts, n = ndimage.label(label == value)
        lesions += [parts == i for i in range(1, n + 1) if (parts == i).sum() > 20]
    if whole and (not lesions or rng.random() < 0.7):
        choices = whole
    elif lesions:
        choices = lesions
    return rng.choice(choices) if choices else None


def _interior_point(mask: np.ndarray, rng: random.Random) -> tuple[int, int, int]:
    """A random voxel weighted towards the object's inside (users click inside, not on edges)."""
    distance = ndimage.distance_transform_edt(mask)
    candidates = np.argwhere(distance >= max(1.0, 0.5 * distance.max()))
    if len(candidates) == 0:
        candidates = np.argwhere(mask)
    return tuple(int(v) for v in candidates[rng.randrange(len(candidates))])  # type: ignore[return-value]


def _background_points(mask: np.ndarray, rng: random.Random, count: int, spacing: tuple[float, ...]) -> list:
    """Clicks just outside the object (where leaks happen): within ~2 cm of it."""
    iterations = max(1, round(20.0 / min(spacing)))
    band = ndimage.binary_dilation(mask, iterations=iterations) & ~ndimage.binary_dilation(mask, iterations=1)
    candidates = np.argwhere(band)
    if len(candidates) == 0 or count == 0:
        return []
    return [tuple(int(v) for v in candidates[rng.randrange(len(candidates))]) for _ in range(count)]


def click_sample(
    seed: int, config: PhantomConfig | None, preprocessing: Compose, truncate: float = 0.0
) -> dict[str, Any] | None:
    """One interaction: a target object, clicks on it (and maybe beside it), cropped as at inference."""
    rng = random.Random(seed)
    phantom = generate_phantom(seed, config)
    image, label, affine = phantom.image, phantom.label, phantom.affine
    if rng.random() < truncate:
        image, label, affine = truncate_scan(image, label, affine, rng)
    return interaction_sample(image, label, affine, rng, preprocessing)


def interaction_sample(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, rng: random.Random, preprocessing: Compose
) -> dict[str, Any] | None:
    """One simulated interaction on a labeled image (a phantom, or a site's corrected label)."""
    target = _objects(label, rng)
    if target is None:
        return None
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    foreground = [_interior_point(target, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
    background = _background_points(target, rng, rng.choice([0, 0, 1, 2]), spacing)
    # Crop around the clicks exactly as BundleClickTask does at inference, so the model sees the same context.
    roi = roi_around(foreground, target.shape, spacing, recipes.CLICK_ROI_MM)
    volume = crop_volume(_volume(image, affine), roi)
    offset = np.array([r.start for r in roi])

    def local(points: list) -> list:
        shifted = [np.asarray(p) - offset for p in points]
        return [tuple(int(v) for v in p) for p in shifted if np.all(p >= 0) and np.all(p < volume.geometry.shape)]

    guidance = render_guidance(
        volume.geometry.shape, spacing, local(foreground), local(background), recipes.CLICK_SIGMA_MM
    )
    data = {
        "image": volume_to_metatensor(volume.array, volume),
        "guidance": volume_to_metatensor(guidance, volume, channel_first=True),
        "label": volume_to_metatensor(target[roi].astype(np.uint8), volume),
    }
    return preprocessing(data)


def click_samples(seeds: range, config: PhantomConfig | None, truncate: float = 0.0) -> list[dict[str, Any]]:
    preprocessing = _compose(recipes.click_preprocessing(with_label=True, concat=False))
    samples = []
    for seed in seeds:
        for variant in range(2):  # two interactions per phantom: different objects and clicks
            sample = click_sample(seed * 7 + variant, config, preprocessing, truncate)
            if sample is not None:
                samples.append(sample)
    return samples


def click_validator(samples: list[dict[str, Any]]) -> Callable[[torch.nn.Module], float]:
    def validate(network: torch.nn.Module) -> float:
        device = next(network.parameters()).device
        scores = []
        for sample in samples:
            inputs = torch.cat([sample["image"], sample["guidance"]], dim=0)[None].to(device)
            logits = sliding_window_inference(inputs, recipes.CLICK_PATCH, 1, network, overlap=0.25)
            pred = torch.argmax(logits, dim=1)[0].cpu() > 0
            scores.append(dice(pred.numpy(), np.asarray(sample["label"][0]) > 0))
        return float(np.mean(scores))

    return validate


def train_click(
    out_dir: Path, settings: TrainSettings, run: RecipeRun, progress: Callable[[TrainProgress], None] | None = None
) -> TrainHistory:
    seeds, val_seeds = run.seeds()
    config = inference_config(
        recipes.click_network_def(),
        recipes.click_preprocessing(),
        recipes.click_inferer(),
        recipes.click_postprocessing(),
    )
    config["patch_postprocessing"] = recipes.click_patch_postprocessing()
    extras = {
        "input_key": "net_input",
        "roi_mm": list(recipes.CLICK_ROI_MM),
        "guidance_sigma_mm": recipes.CLICK_SIGMA_MM,
    }
    transform = augmentation(["image"], recipes.CLICK_PATCH, extra_keys=["guidance"], pos=3.0, neg=1.0)
    return _fit(
        out_dir,
        settings,
        click_samples(seeds, run.phantoms(), run.truncate),
        click_validator(click_samples(val_seeds, run.phantoms(), run.truncate)),
        transform,
        ("image", "guidance"),
        recipes.click_network_def(),
        config,
        lambda history: _click_metadata(history, run),
        progress,
        run.batch_size,
        extras,
        error_clicks=(run.error_click_share, run.error_click_rounds),
        init_weights=run.init_weights,
        minutes=run.minutes,
    )


def _click_metadata(history: TrainHistory, run: RecipeRun) -> dict[str, Any]:
    return _bundle_metadata(
        "Click-guided kidney / lesion segmentation in CT",
        "Foreground/background clicks -> the clicked kidney, tumor or cyst (3D UNet, 3 input channels)",
        "deepgrow",
        {"0": "image", "1": "foreground guidance", "2": "background guidance"},
        {"0": "background", "1": "object"},
        history,
        run,
    )


def _training_summary(history: TrainHistory, run: RecipeRun) -> dict[str, Any]:
    return {
        "steps": len(history.losses),
        "best_step": history.best_step,
        "best_val_dice_phantoms": round(history.best_dice, 4),
        "wall_s": round(history.wall_s, 1),
        "train_phantoms": run.train_phantoms,
        "val_phantoms": run.val_phantoms,
        "seed": run.seed,
        "batch_size": run.batch_size,
        "fine_tuned_from": None if run.init_weights is None else str(run.init_weights),
        "trained_at": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
    }


def write_history(path: Path, history: TrainHistory) -> None:
    path.write_text(json.dumps(history.to_json(), indent=1))


TRAINERS = {"kidney_seg": train_seg, "kidney_click": train_click}


def cli(model: str, out_default: Path, steps_default: int) -> None:
    """Command line of `models/<model>/train.py`: train with fixed seeds, write bundle, curve and history."""
    import argparse

    from annotation_server.learning.reporting import plot_history, progress_bar

    parser = argparse.ArgumentParser(description=f"Reproduce models/{model} (trained on phantoms only)")
    parser.add_argument("--out", type=Path, default=out_default, help="bundle folder to write")
    parser.add_argument("--steps", type=int, default=steps_default)
    parser.add_argument("--train-phantoms", type=int, default=RecipeRun.train_phantoms)
    parser.add_argument("--val-phantoms", type=int, default=RecipeRun.val_phantoms)
    parser.add_argument("--batch-size", type=int, default=RecipeRun.batch_size)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--val-every", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shipped run used 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init", type=Path, default=None, help="fine-tune from these weights (models/model.pt)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this wall time, keep the best")
    click_only = "kidney_click only: "
    parser.add_argument(
        "--error-click-share", type=float, default=RecipeRun.error_click_share, help=click_only + "corrected batches"
    )
    parser.add_argument(
        "--error-click-rounds", type=int, default=RecipeRun.error_click_rounds, help=click_only + "corrections at most"
    )
    args = parser.parse_args()
    settings = TrainSettings(
        steps=args.steps,
        learning_rate=args.lr,
        val_every=min(args.val_every, args.steps),
        device=args.device,
        threads=args.threads,
    )
    run = RecipeRun(
        train_phantoms=args.train_phantoms,
        val_phantoms=args.val_phantoms,
        batch_size=args.batch_size,
        init_weights=args.init,
        minutes=args.minutes,
        error_click_share=args.error_click_share,
        error_click_rounds=args.error_click_rounds,
    )
    with progress_bar(model, args.steps) as progress:
        history = TRAINERS[model](args.out, settings, run, progress)
    plot_history(history, args.out / "training_curve.png", f"{model} on phantoms")
    write_history(args.out / "training_history.json", history)
    print(
        json.dumps(
            {
                "model": model,
                "out": str(args.out),
                "best_val_dice_phantoms": round(history.best_dice, 4),
                "best_step": history.best_step,
                "wall_s": round(history.wall_s, 1),
            }
        )
    )

"""How unsure a segmentation model is about one image: the scores behind the `epistemic` and `tta` strategies.

Both scorers work on any bundle-backed segmentation model (`BundleTask`). They run where the model is
cheapest and most honest: in its own input space, after the bundle's preprocessing (the kidney model sees
3 mm voxels), through the bundle's own inferer, and never invert back to the image grid. One image costs a
handful of forward passes: a few seconds on a CPU.

The served network is never changed: interactive clicks may be using it at the same moment, and dropout in
train mode or a forward hook would change their answers. Plain passes share it (eval mode, no gradients, safe
from several threads); dropout passes run on a private copy (`NetworkCopy`).

Both scores are "1 - mean Dice" between the model's usual foreground and its foreground under a perturbation
(dropout for `epistemic`, flips and intensity shifts for `tta`), in 0..1, higher = more worth annotating.
Why Dice of masks and not the mean voxel variance of probabilities: measured with the shipped kidney model
on 3 mm phantoms (dropout p=0.05, 8 samples), the variance over the predicted region put extreme-noise
images (>= 200 HU) only ~2x above the worst clean one (0.018-0.020 vs 0.004-0.009), ranked a hard phantom
below a clean one, and with stronger dropout it *fell* as predictions collapsed (little foreground left to
vary), so the most broken images sank. Dice is normalised by the size of the predicted structure: a large
confident kidney with a wobbly rim scores low, a fragmented or vanishing prediction high. Epistemic: clean
0.03-0.10, `hard` preset 0.09-0.35, extreme noise 0.66-0.67; tta: 0.02-0.08, 0.05-0.18, 0.52. The mean
variance is still reported in the details.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Flip, ShiftIntensity
from torch import nn

from annotation_server.errors import InvalidRequestError
from annotation_server.imaging import Volume
from annotation_server.inference.bundle_runtime import BundleRuntime
from annotation_server.inference.bundle_task import BundleTask
from annotation_server.inference.model_space import model_affine, to_model_space
from annotation_server.inference.task import InferTask

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class ScoringStopped(Exception):
    """Raised between forward passes when the job was asked to stop."""


@dataclass(frozen=True)
class UncertaintyScore:
    value: float
    details: dict[str, Any] = field(default_factory=dict)


class UncertaintyScorer(Protocol):
    method: str
    description: str

    def config(self) -> dict[str, Any]:
        """Options shown under /info/ `scoring` (3D Slicer renders them)."""
        ...

    def score(
        self, task: InferTask, volume: Volume, should_stop: Callable[[], bool] = lambda: False
    ) -> UncertaintyScore:
        """Uncertainty of `task` on `volume`; higher means more worth annotating."""
        ...


def scorable(task: InferTask) -> bool:
    """Whether the uncertainty scorers can run `task`: a segmentation model backed by a MONAI bundle."""
    return isinstance(task, BundleTask) and task.type == "segmentation"


def runtime_of(task: InferTask) -> BundleRuntime:
    if not scorable(task):
        raise InvalidRequestError(
            f"model '{task.name}' cannot be scored: uncertainty needs a bundle-backed segmentation model"
        )
    assert isinstance(task, BundleTask)
    if task.runtime is None:  # used outside a started server (scripts, tests)
        task.load("cpu")
    assert task.runtime is not None
    return task.runtime


@dataclass(frozen=True)
class NetworkInput:
    """The image as the network sees it (channels, x, y, z), plus how large one of its voxels is."""

    tensor: torch.Tensor
    affine: np.ndarray
    voxel_ml: float


def network_input(runtime: BundleRuntime, volume: Volume) -> NetworkInput:
    """The bundle's own preprocessing (orientation, spacing, intensity window), nothing inverted later.

    Through `model_space.to_model_space`, the same map the auto and click paths use: a flipped copy of an
    image lands on the same model-space voxels, so it scores the same.
    """
    data = to_model_space(runtime.preprocessing, volume, {runtime.image_key: volume.array})
    image = data[runtime.input_key]
    affine = model_affine(image)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3]))) or 1.0
    tensor = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    return NetworkInput(tensor.float(), affine, voxel_mm3 / 1000.0)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(not background) per voxel from (channels, ...) logits: sigmoid of one channel, else 1 - softmax[0]."""
    if logits.shape[0] == 1:
        return torch.sigmoid(logits[0])
    return 1.0 - torch.softmax(logits, dim=0)[0]


def soft_dice(a: torch.Tensor, b: torch.Tensor, smooth: float) -> float:
    """Dice of two boolean masks with `smooth` voxels added to both sides.

    The smoothing (1 ml) keeps a few stray voxels on an image where the model sees nothing from counting as
    total disagreement; two empty masks agree (1.0).
    """
    inter = float((a & b).sum())
    total = float(a.sum() + b.sum())
    return (2.0 * inter + smooth) / (total + smooth)


class NetworkCopy:
    """A private copy of a bundle's network, rebuilt when the served network object changes (hot swap).

    `prepare` runs once on each fresh copy (to make it stochastic); the served network keeps eval mode and
    no hooks, so clicks answered at the same time are unaffected.
    """

    def __init__(self, prepare: Callable[[nn.Module], dict[str, Any]]) -> None:
        self._prepare = prepare
        self._lock = threading.Lock()
        self._source: nn.Module | None = None
        self._copy: nn.Module | None = None
        self.info: dict[str, Any] = {}

    def get(self, runtime: BundleRuntime) -> nn.Module:
        with self._lock:
            if self._source is not runtime.network or self._copy is None:
                network = copy.deepcopy(runtime.network).eval()
                for parameter in network.parameters():
                    parameter.requires_grad_(False)
                self.info = self._prepare(network)
                self._source, self._copy = runtime.network, network
            return self._copy


def enable_mc_dropout(network: nn.Module, p: float) -> dict[str, Any]:
    """Make `network` (a private copy) stochastic at inference, everything else staying in eval mode.

    A network trained with dropout keeps its own rates: only its dropout layers go to train mode. MONAI's
    UNet carries Dropout(p=0) layers when trained without dropout, so layers with p = 0 do not count; then
    dropout with rate `p` is injected on the outputs of the inner convolutions (all but the first, which
    sees raw intensities, and the last, which produces the logits) through forward hooks.
    """
    network.eval()
    trained = [m for m in network.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]
    if trained:
        for module in trained:
            module.train()
        return {"dropout": "trained layers", "layers": len(trained)}
    convs = [m for m in network.modules() if isinstance(m, _CONV_TYPES)]
    inner = convs[1:-1] if len(convs) > 2 else convs

    def drop(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return F.dropout(output, p=p, training=True)

    for module in inner:
        module.register_forward_hook(drop)
    return {"dropout": "injected", "p": p, "layers": len(inner)}


def _autocast(device: torch.device) -> Any:
    return torch.autocast(device_type="cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


def _foreground(runtime: BundleRuntime, network: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """Foreground probability in network space (x, y, z), on the CPU."""
    with torch.no_grad(), _autocast(runtime.device):
        logits = runtime.inferer(tensor[None].to(runtime.device), network)[0].float()
    return foreground_probability(logits).cpu()


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


class EpistemicScorer:
    """Monte-Carlo dropout: how much the foreground changes when the network is randomly thinned."""

    method = "epistemic"
    description = "Monte-Carlo dropout: 1 - mean Dice of dropout samples vs the plain prediction (model uncertainty)"

    def __init__(self, samples: int = 8, dropout: float = 0.05, threshold: float = 0.5) -> None:
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.samples = samples
        self.dropout = dropout
        self.threshold = threshold
        self._network = NetworkCopy(lambda net: enable_mc_dropout(net, dropout))

    def config(self) -> dict[str, Any]:
        return {"samples": self.samples, "dropout": self.dropout}

    def score(
        self, task: InferTask, volume: Volume, should_stop: Callable[[], bool] = lambda: False
    ) -> UncertaintyScore:
        start = time.perf_counter()
        runtime = runtime_of(task)
        inputs = network_input(runtime, volume)
        base = _foreground(runtime, runtime.network, inputs.tensor)
        base_mask = base > self.threshold
        stochastic = self._network.get(runtime)
        smooth = 1.0 / inputs.voxel_ml  # voxels in one millilitre
        dices: list[float] = []
        total = torch.zeros_like(base)
        total_sq = torch.zeros_like(base)
        union = base_mask.clone()
        for _ in range(self.samples):
            if should_stop():
                raise ScoringStopped
            sample = _foreground(runtime, stochastic, inputs.tensor)
            mask = sample > self.threshold
            dices.append(soft_dice(mask, base_mask, smooth))
            total += sample
            total_sq += sample * sample
            union |= mask
        mean = total / self.samples
        variance = (total_sq / self.samples - mean * mean).clamp_min(0)
        region_variance = float(variance[union].mean()) if bool(union.any()) else 0.0
        return UncertaintyScore(
            value=1.0 - float(np.mean(dices)),
            details={
                "samples": self.samples,
                **self._network.info,
                "foreground_ml": round(float(base_mask.sum()) * inputs.voxel_ml, 2),
                "mean_variance": round(region_variance, 6),
                "seconds": round(time.perf_counter() - start, 3),
            },
        )


@dataclass(frozen=True)
class Augmentation:
    """One test-time augmentation: applied to the input, `undo` maps the prediction back."""

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    undo: Callable[[torch.Tensor], torch.Tensor] = lambda t: t


def left_right_axis(affine: np.ndarray) -> int:
    """The array axis running left-right in world space (the only flip anatomy makes plausible)."""
    return int(np.argmax(np.abs(np.asarray(affine)[0, :3])))


class TTAScorer:
    """Test-time augmentation: how much the foreground changes under a mirror image and small intensity shifts.

    Only the left-right flip is used: kidneys, liver and spine are not symmetric front-back or head-feet, so
    those flips show the model anatomy it never saw and every image disagrees (measured: Dice 0.1-0.6 on clean
    phantoms), which ranks nothing. The shift is a fraction of the network input's intensity range (0.05 of
    the kidney model's -200..400 HU window is 30 HU: a calibration drift, not a new contrast phase).
    """

    method = "tta"
    description = "Test-time augmentation: 1 - mean Dice of left-right flipped and intensity-shifted predictions"

    def __init__(self, shift: float = 0.05, threshold: float = 0.5) -> None:
        self.shift = shift
        self.threshold = threshold

    def config(self) -> dict[str, Any]:
        return {"shift": self.shift, "augmentations": ["flip_left_right", "shift_down", "shift_up"]}

    def augmentations(self, inputs: NetworkInput) -> Sequence[Augmentation]:
        flip = Flip(spatial_axis=left_right_axis(inputs.affine))
        tensor = inputs.tensor
        offset = self.shift * float(tensor.max() - tensor.min()) if tensor.numel() else 0.0
        # Flip acts on (channels, x, y, z); the prediction is (x, y, z), so it gets a channel for the undo.
        return (
            Augmentation("flip_left_right", lambda t: _plain(flip(t)), lambda p: _plain(flip(p[None]))[0]),
            Augmentation("shift_down", lambda t: _plain(ShiftIntensity(-offset)(t))),
            Augmentation("shift_up", lambda t: _plain(ShiftIntensity(offset)(t))),
        )

    def score(
        self, task: InferTask, volume: Volume, should_stop: Callable[[], bool] = lambda: False
    ) -> UncertaintyScore:
        start = time.perf_counter()
        runtime = runtime_of(task)
        network = runtime.network  # plain passes only: the served network, unchanged
        inputs = network_input(runtime, volume)
        base_mask = _foreground(runtime, network, inputs.tensor) > self.threshold
        smooth = 1.0 / inputs.voxel_ml
        per_augmentation: dict[str, float] = {}
        for augmentation in self.augmentations(inputs):
            if should_stop():
                raise ScoringStopped
            predicted = augmentation.undo(_foreground(runtime, network, augmentation.apply(inputs.tensor)))
            per_augmentation[augmentation.name] = soft_dice(predicted > self.threshold, base_mask, smooth)
        mean_dice = float(np.mean(list(per_augmentation.values())))
        return UncertaintyScore(
            value=1.0 - mean_dice,
            details={
                "dice": {k: round(v, 4) for k, v in per_augmentation.items()},
                "foreground_ml": round(float(base_mask.sum()) * inputs.voxel_ml, 2),
                "seconds": round(time.perf_counter() - start, 3),
            },
        )


def default_scorers(samples: int = 8) -> dict[str, UncertaintyScorer]:
    """The built-in scoring methods by name."""
    return {"epistemic": EpistemicScorer(samples=samples), "tta": TTAScorer()}

"""Endless batches of augmented training patches from preprocessed volumes (MONAI dictionary transforms).

Samples are dicts of MetaTensors already in the network's space (after the bundle's own preprocessing).
Spatial transforms move image, extra channels (click guidance) and label together; intensity transforms
touch the image only; extra channels are then concatenated to the image, as the bundle's config does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from monai.transforms import (
    Compose,
    ConcatItemsd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from annotation_server.learning.trainer import Batch


def augmentation(
    keys: Sequence[str],
    patch_size: Sequence[int],
    label_key: str = "label",
    pos: float = 2.0,
    neg: float = 1.0,
    extra_keys: Sequence[str] = (),
) -> Compose:
    """Crop around foreground (pos:neg), small affine jitter, and CT-style intensity changes."""
    all_keys = [*keys, *extra_keys, label_key]
    image_modes = ["bilinear"] * (len(keys) + len(extra_keys))
    return Compose(
        [
            SpatialPadd(keys=all_keys, spatial_size=patch_size),
            RandCropByPosNegLabeld(
                keys=all_keys,
                label_key=label_key,
                spatial_size=patch_size,
                pos=pos,
                neg=neg,
                num_samples=1,
                allow_smaller=False,
            ),
            RandAffined(
                keys=all_keys,
                prob=0.35,
                rotate_range=(0.15, 0.15, 0.25),
                scale_range=(0.12, 0.12, 0.12),
                mode=[*image_modes, "nearest"],
                padding_mode="border",
            ),
            RandGaussianSmoothd(keys=list(keys), prob=0.15, sigma_x=(0.4, 1.0), sigma_y=(0.4, 1.0), sigma_z=(0.4, 1.0)),
            RandScaleIntensityd(keys=list(keys), factors=0.15, prob=0.5),
            RandShiftIntensityd(keys=list(keys), offsets=0.08, prob=0.5),
            RandAdjustContrastd(keys=list(keys), gamma=(0.75, 1.4), prob=0.3),
            RandGaussianNoised(keys=list(keys), prob=0.3, std=0.04),
        ]
    )


class PatchBatches(Iterator[Batch]):
    """Yields (inputs, targets) batches forever; deterministic for a seed."""

    def __init__(
        self,
        samples: list[dict[str, Any]],
        transform: Compose,
        batch_size: int,
        seed: int = 0,
        input_keys: Sequence[str] = ("image",),
        label_key: str = "label",
    ) -> None:
        if not samples:
            raise ValueError("no training samples")
        self.samples = samples
        self.transform = transform
        self.transform.set_random_state(seed=seed)
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.concat = ConcatItemsd(keys=list(input_keys), name="_input", dim=0) if len(input_keys) > 1 else None
        self.input_key = input_keys[0]
        self.label_key = label_key

    def __next__(self) -> Batch:
        inputs, targets = [], []
        for _ in range(self.batch_size):
            sample = self.transform(dict(self.rng.choice(self.samples)))
            sample = sample[0] if isinstance(sample, list) else sample
            if self.concat is not None:
                sample = self.concat(sample)
                inputs.append(torch.as_tensor(sample["_input"]))
            else:
                inputs.append(torch.as_tensor(sample[self.input_key]))
            targets.append(torch.as_tensor(sample[self.label_key]))
        return torch.stack(inputs).float(), torch.stack(targets).long()

"""How the kidney app fine-tunes its models on a site's corrected labels (see learning.finetune).

Samples go through each bundle's own preprocessing (recipes.py) with the label alongside, so fine-tuning
sees exactly what serving sees; augmentation and validation are the ones used to train the shipped
models on phantoms. The click model learns from simulated interactions on the corrected labels: the
objects annotators corrected become click targets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from annotation_apps.kidney import recipes
from annotation_apps.kidney.training import _compose, click_validator, interaction_sample, seg_validator
from annotation_server.errors import GeometryMismatchError
from annotation_server.imaging import Volume, read_volume
from annotation_server.inference.model_space import to_model_space
from annotation_server.learning.finetune import LabeledImage
from annotation_server.learning.patches import PatchBatches, augmentation
from annotation_server.learning.trainer import Batch


def labeled_pair(item: LabeledImage) -> tuple[Volume, np.ndarray]:
    """An image and its label's voxels, refused unless the label lies on the image's grid (shape AND affine)."""
    image = read_volume(item.image)
    label = read_volume(item.label)
    if not label.geometry.matches(image.geometry):
        raise GeometryMismatchError(
            f"label of '{item.image_id}' lies on {label.geometry.describe()}, its image on "
            f"{image.geometry.describe()}: it cannot be trained on"
        )
    return image, label.array


class KidneySegFineTune:
    """FineTuneRecipe for the automatic kidney / tumor / cyst model."""

    def samples(self, items: Sequence[LabeledImage]) -> list[dict[str, Any]]:
        preprocessing = _compose(recipes.seg_preprocessing(with_label=True))
        samples = []
        for item in items:
            image, label = labeled_pair(item)
            # Image and label through the very same transforms (model_space: the map every path uses).
            samples.append(to_model_space(preprocessing, image, {"image": image.array, "label": label}))
        return samples

    def batches(self, samples: list[dict[str, Any]], batch_size: int, seed: int) -> Iterator[Batch]:
        return PatchBatches(samples, augmentation(["image"], recipes.SEG_PATCH), batch_size, seed=seed)

    def validator(self, samples: list[dict[str, Any]]) -> Callable[[torch.nn.Module], float]:
        return seg_validator(samples)


class KidneyClickFineTune:
    """FineTuneRecipe for the click model: `interactions` simulated clicks per corrected label."""

    def __init__(self, interactions: int = 4) -> None:
        self.interactions = interactions

    def samples(self, items: Sequence[LabeledImage]) -> list[dict[str, Any]]:
        preprocessing = _compose(recipes.click_preprocessing(with_label=True, concat=False))
        samples = []
        for item in items:
            image, label = labeled_pair(item)
            rng = random.Random(item.image_id)  # the same interactions for the same label every run
            for _ in range(self.interactions):
                sample = interaction_sample(image.array, label, image.geometry.affine, rng, preprocessing)
                if sample is not None:
                    samples.append(sample)
        return samples

    def batches(self, samples: list[dict[str, Any]], batch_size: int, seed: int) -> Iterator[Batch]:
        transform = augmentation(["image"], recipes.CLICK_PATCH, extra_keys=["guidance"], pos=3.0, neg=1.0)
        return PatchBatches(samples, transform, batch_size, seed=seed, input_keys=("image", "guidance"))

    def validator(self, samples: list[dict[str, Any]]) -> Callable[[torch.nn.Module], float]:
        return click_validator(samples)

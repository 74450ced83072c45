"""Training click models to correct, not only to start: clicks placed where the current model errs.

Random clicks teach a model to segment from a first click. Annotators then click where the mask is
wrong, so on a share of batches the network in training predicts each patch and gets one or two more
clicks at the centre of its largest error (the evaluation protocol's rule), drawn with the same
guidance function the server uses, before the batch trains it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

from annotation_server.evaluation.clicks import next_click
from annotation_server.inference.guidance import render_guidance
from annotation_server.learning.trainer import Batch


class ErrorClicks(Iterator[Batch]):
    """Wraps a batch iterator of (image + fg guidance + bg guidance, target) patches."""

    def __init__(
        self,
        batches: Iterator[Batch],
        network: torch.nn.Module,
        spacing_mm: Sequence[float],
        sigma_mm: float,
        probability: float = 0.5,
        max_rounds: int = 2,
        seed: int = 0,
    ) -> None:
        self.batches = batches
        self.network = network
        self.spacing = tuple(float(v) for v in spacing_mm)
        self.sigma_mm = sigma_mm
        self.probability = probability
        self.max_rounds = max_rounds
        self.rng = random.Random(seed)

    def __next__(self) -> Batch:
        inputs, targets = next(self.batches)
        if self.rng.random() >= self.probability:
            return inputs, targets
        device = next(self.network.parameters()).device
        was_training = self.network.training
        self.network.eval()
        try:
            for _ in range(self.rng.randint(1, self.max_rounds)):
                with torch.no_grad():
                    predictions = torch.argmax(self.network(inputs.to(device)), dim=1).cpu().numpy()
                for index, prediction in enumerate(predictions):
                    click = next_click(prediction > 0, targets[index, 0].numpy() > 0)
                    if click is None:
                        continue
                    point, is_foreground = click
                    shape = tuple(int(v) for v in prediction.shape)
                    fg, bg = ([point], []) if is_foreground else ([], [point])
                    blobs = torch.from_numpy(render_guidance(shape, self.spacing, fg, bg, self.sigma_mm))
                    inputs[index, 1:3] = torch.maximum(inputs[index, 1:3], blobs)
        finally:
            self.network.train(was_training)
        return inputs, targets

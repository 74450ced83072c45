"""The kidney_seg validation score (best-weights choice in training and the fine-tuning promotion gate)
sees the classes: weights that paint a healthy renal sinus as tumor score lower although the kidney-union
Dice is the same (issue 17)."""

from __future__ import annotations

import torch

from annotation_apps.kidney.training import seg_validator


class _ThresholdNet(torch.nn.Module):
    """Reads the class from the intensity: <0.25 background, 0.25-0.75 `sinus_class`, >0.75 kidney."""

    def __init__(self, sinus_class: int) -> None:
        super().__init__()
        self.sinus_class = sinus_class
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the validator looks up the device from a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.zeros_like(x[:, 0], dtype=torch.long)
        classes[x[:, 0] > 0.25] = self.sinus_class
        classes[x[:, 0] > 0.75] = 1
        return torch.nn.functional.one_hot(classes, 4).permute(0, 4, 1, 2, 3).float() * 10.0


def _healthy_kidney() -> dict[str, torch.Tensor]:
    image = torch.zeros(1, 32, 32, 32)
    label = torch.zeros(1, 32, 32, 32)
    image[:, 8:24, 8:24, 8:24] = 1.0
    image[:, 13:19, 13:19, 13:19] = 0.5  # the sinus: darker, but kidney in the truth
    label[:, 8:24, 8:24, 8:24] = 1
    return {"image": image, "label": label}


def test_inventing_a_tumor_in_a_healthy_kidney_lowers_the_score() -> None:
    validate = seg_validator([_healthy_kidney()])
    honest = validate(_ThresholdNet(sinus_class=1))
    inventing = validate(_ThresholdNet(sinus_class=2))
    assert honest == 1.0
    assert inventing <= 2.0 / 3.0 + 1e-6  # union Dice still 1.0, tumor term 0 (predicted where none exists)

"""oneDNN convolutions for one-image 3-D inference on CPU (3.6x faster click forward passes here).

PyTorch's CPU dispatch sends a convolution to oneDNN only when the batch has more than one item or a
plane (N*C*H*W, ignoring depth) is large; a single 3-D patch with few channels falls through to the
slow im2col kernel. A click is exactly that case: one 64^3 patch with 3-64 channels. On this machine
the click model's forward took 80 ms that way and 22 ms through oneDNN, with outputs equal to 5e-6.

Only inference changes: with gradients enabled (training, fine-tuning) the stock path runs, so the
numbers of a training run do not depend on this. The class swap keeps state dicts, deep copies and
pickles identical to a plain network.
"""

from __future__ import annotations

import torch
from torch import nn


class OneDNNConv3d(nn.Conv3d):
    """nn.Conv3d whose no-grad CPU float32 forward always goes through oneDNN."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
            or input.device.type != "cpu"
            or input.dtype != torch.float32
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
        ):
            return super().forward(input)
        return torch.ops.aten.mkldnn_convolution(
            input.contiguous(), self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
        )


def use_onednn_convolutions(network: nn.Module, device: torch.device) -> int:
    """Switch the network's 3-D convolutions to the oneDNN path on CPU; returns how many were switched."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return 0
    switched = 0
    for module in network.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = OneDNNConv3d
            switched += 1
    return switched

"""Which device models run on: the first CUDA GPU when there is one, else the CPU."""

from __future__ import annotations


def detect_device() -> tuple[str, list[str]]:
    """(torch device string, names as MONAI Label's /info/ `device` list: GPU names or ['cpu'])."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but classic tools do not need it
        return "cpu", ["cpu"]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return "cuda", names
    return "cpu", ["cpu"]

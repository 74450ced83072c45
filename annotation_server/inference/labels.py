"""Label value conventions of MONAI Label's clients.

Models produce voxels holding the app's configured label values. Clients expect, by default
(`restore_label_idx=false`), the contiguous positions 1..N of the labels sorted by value without
background: 3D Slicer imports name i with voxel value i+1. MITK asks for the configured values.
"""

from __future__ import annotations

import numpy as np


def foreground_labels(labels: dict[str, int]) -> list[tuple[str, int]]:
    """Labels sorted by value, without background (value 0 or the name 'background')."""
    return sorted(((n, v) for n, v in labels.items() if v != 0 and n != "background"), key=lambda kv: kv[1])


def to_client_values(mask: np.ndarray, labels: dict[str, int], restore_label_idx: bool) -> np.ndarray:
    """Map configured values to what the client expects (positions unless restore_label_idx)."""
    if restore_label_idx:
        return mask
    ordered = foreground_labels(labels)
    if all(value == index for index, (_, value) in enumerate(ordered, start=1)):
        return mask  # already contiguous: nothing to remap (the common case)
    lookup = np.zeros(int(max(mask.max(initial=0), max((v for _, v in ordered), default=0))) + 1, dtype=np.int64)
    for index, (_, value) in enumerate(ordered, start=1):
        lookup[value] = index
    return lookup[mask.astype(np.int64)]


def client_label_names(labels: dict[str, int], restore_label_idx: bool) -> dict[str, int]:
    """The `label_names` that describe the values actually written."""
    ordered = foreground_labels(labels)
    if restore_label_idx:
        return dict(ordered)
    return {name: index for index, (name, _) in enumerate(ordered, start=1)}

"""Write a trained model as a MONAI bundle folder the server (and `python -m monai.bundle`) can load.

The same config dicts that describe inference are used to build the training pipeline, so training and
serving cannot drift apart; the weights' sha256 goes into metadata.json, which the server checks at load.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from annotation_server.checksums import file_sha256
from annotation_server.datastore.atomic import atomic_write_bytes
from annotation_server.inference.bundle import OUR_KEY


def inference_config(
    network_def: dict[str, Any],
    preprocessing: list[dict[str, Any]],
    inferer: dict[str, Any],
    postprocessing: list[dict[str, Any]],
) -> dict[str, Any]:
    """A MONAI bundle `inference.json` document (file I/O steps are added by whoever runs it standalone)."""
    return {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
    }


def write_bundle(
    root: Path,
    config: dict[str, Any],
    metadata: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    extras: dict[str, Any] | None = None,
) -> str:
    """Write configs and weights under `root`; returns the weights' sha256 (also stored in metadata)."""
    weights = root / "models" / "model.pt"
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    atomic_write_bytes(weights, buffer.getvalue())
    sha = file_sha256(weights)
    document = {**metadata, OUR_KEY: {**metadata.get(OUR_KEY, {}), **(extras or {}), "model_sha256": sha}}
    atomic_write_bytes(root / "configs" / "inference.json", json.dumps(config, indent=2).encode())
    atomic_write_bytes(root / "configs" / "metadata.json", json.dumps(document, indent=2).encode())
    return sha

"""Write a trained model as a MONAI bundle folder the server (and `python -m monai.bundle`) can load.

The same config dicts that describe inference are used to build the training pipeline, so training and
serving cannot drift apart; the weights' sha256 goes into metadata.json, which the server checks at load.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from annotation_server.checksums import file_sha256
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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(temp, 0o644)  # shipped files are world-readable (mkstemp creates them 0600)
    os.replace(temp, path)


def write_bundle(
    root: Path,
    config: dict[str, Any],
    metadata: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    extras: dict[str, Any] | None = None,
) -> str:
    """Write configs and weights under `root`; returns the weights' sha256 (also stored in metadata)."""
    weights = root / "models" / "model.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".model.pt.", dir=weights.parent)
    os.close(fd)
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, temp)
    os.chmod(temp, 0o644)
    os.replace(temp, weights)
    sha = file_sha256(weights)
    document = {**metadata, OUR_KEY: {**metadata.get(OUR_KEY, {}), **(extras or {}), "model_sha256": sha}}
    _atomic_write_bytes(root / "configs" / "inference.json", json.dumps(config, indent=2).encode())
    _atomic_write_bytes(root / "configs" / "metadata.json", json.dumps(document, indent=2).encode())
    return sha

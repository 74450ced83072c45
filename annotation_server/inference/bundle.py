"""MONAI bundles: a model as a folder (configs/metadata.json, configs/inference.json, models/model.pt).

Any bundle in the MONAI Model Zoo layout loads by path with no code change: the network, preprocessing,
inferer and postprocessing come from its own config (MONAI's ConfigParser), minus the steps that read
or write files, which the server does itself. Weights are checked against the sha256 recorded in the
bundle's metadata (`annotation_server.model_sha256`) before they are loaded, so a corrupted or swapped
file is refused with a clear error instead of producing wrong masks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotation_server.checksums import file_sha256
from annotation_server.errors import CorruptFileError, NotFoundError

logger = logging.getLogger(__name__)

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHT_NAMES = ("model.safetensors", "model.pt", "model.pth")
OUR_KEY = "annotation_server"  # our additions to metadata.json live under this key


@dataclass
class Bundle:
    """A bundle folder, read and verified; the network is built separately (see `build_network`)."""

    root: Path
    metadata: dict[str, Any]
    config_file: Path
    weights: Path
    sha256: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.extras.get("name") or self.root.name)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0"))

    @property
    def description(self) -> str:
        return str(self.metadata.get("description") or self.metadata.get("task") or self.name)

    @property
    def channel_labels(self) -> dict[str, int]:
        """Output channel -> label name, from network_data_format (background excluded)."""
        outputs = self.metadata.get("network_data_format", {}).get("outputs", {})
        pred = outputs.get("pred") or next(iter(outputs.values()), {})
        channels = pred.get("channel_def", {})
        return {
            str(name): int(index)
            for index, name in channels.items()
            if str(name).lower() not in ("background", "everything else") and int(index) != 0
        }


def _find(root: Path, folder: str, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        candidate = root / folder / name
        if candidate.is_file():
            return candidate
    raise NotFoundError(f"bundle '{root}' has no {what}: expected {folder}/{' or '.join(names)}")


def load_bundle(root: Path | str) -> Bundle:
    """Read a bundle folder and verify its weights; raise NotFoundError/CorruptFileError with the reason."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise NotFoundError(f"model bundle folder '{root}' does not exist")
    metadata_file = _find(root, "configs", ("metadata.json",), "metadata")
    try:
        metadata = json.loads(metadata_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"bundle '{root.name}': configs/metadata.json is not valid JSON: {exc}") from exc
    config_file = _find(root, "configs", CONFIG_NAMES, "inference config")
    weights = _find(root, "models", WEIGHT_NAMES, "weights")
    extras = dict(metadata.get(OUR_KEY, {}))
    actual = file_sha256(weights)
    expected = extras.get("model_sha256")
    if expected is None:
        logger.warning(
            "bundle %s records no model_sha256; loading %s unverified (sha256 %s)", root.name, weights.name, actual
        )
    elif actual != expected:
        raise CorruptFileError(
            f"bundle '{root.name}': {weights.relative_to(root)} is corrupted or was replaced: its sha256 is "
            f"{actual[:16]}..., the bundle's metadata expects {expected[:16]}...; restore the file or retrain"
        )
    return Bundle(root=root, metadata=metadata, config_file=config_file, weights=weights, sha256=actual, extras=extras)

"""Running a bundle: its network on a device, its transforms around it, the result back on the input grid.

The volume comes from the server's cache as an array plus RAS affine; it is wrapped as the MetaTensor
MONAI's LoadImaged would produce, so the bundle's own preprocessing (Orientationd, Spacingd, intensity
scaling, cropping, ...) runs unchanged and records what it did. The prediction is then inverted with those
records (MONAI's Invertd, nearest neighbour for labels), which puts it on the input's exact voxel grid
whatever its orientation or spacing: a label off by a flip or a voxel is the worst bug this product can have.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import Compose, LoadImage, LoadImaged, SaveImage, SaveImaged

from annotation_server.imaging import Geometry, Volume
from annotation_server.inference.bundle import Bundle
from annotation_server.inference.model_space import (
    ModelImage,
    inverts_itself,
    model_image,
    to_stored_grid,
    volume_to_metatensor,
)
from annotation_server.inference.onednn import use_onednn_convolutions

logger = logging.getLogger(__name__)

__all__ = ["BundleRuntime", "load_state_dict", "volume_to_metatensor"]  # volume_to_metatensor: re-exported

_FILE_IO = (LoadImage, LoadImaged, SaveImage, SaveImaged)
# Options MONAI dictionary transforms take one value per key (e.g. Spacingd's mode=["bilinear", "nearest"]).
_PER_KEY_OPTIONS = frozenset({"mode", "padding_mode", "align_corners", "dtype", "allow_missing_keys"})


def _without_file_io(compose: Any) -> Compose:
    transforms = compose.flatten().transforms if isinstance(compose, Compose) else list(compose)
    return Compose([t for t in transforms if not isinstance(t, _FILE_IO)])


def load_state_dict(bundle: Bundle) -> dict[str, torch.Tensor]:
    """Weights as a state dict from .safetensors, a plain state dict, or a {'model': ...} checkpoint."""
    if bundle.weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(bundle.weights))
    checkpoint = torch.load(bundle.weights, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "network"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


class BundleRuntime:
    """The network (one instance per device, shared by requests) and the bundle's pipelines."""

    def __init__(self, bundle: Bundle, device: str = "cpu", image_key: str = "image") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.image_key = image_key
        # Click models concatenate image and guidance under another key; the image key keeps the records
        # used to invert the prediction.
        self.input_key = str(bundle.extras.get("input_key", image_key))
        parser = ConfigParser()
        parser.read_meta(str(bundle.root / "configs" / "metadata.json"))
        parser.read_config(str(bundle.config_file))
        parser["bundle_root"] = str(bundle.root)
        parser["device"] = f"$torch.device('{self.device}')"
        self.network: torch.nn.Module = parser.get_parsed_content("network_def")
        self.network.load_state_dict(load_state_dict(bundle))
        self.network.to(self.device).eval()
        use_onednn_convolutions(self.network, self.device)
        self._full_preprocessing = parser.get_parsed_content("preprocessing")
        self.preprocessing = _without_file_io(self._full_preprocessing)
        self.inferer: Inferer = (
            parser.get_parsed_content("inferer") if "inferer" in parser else SlidingWindowInferer(roi_size=96)
        )
        self.postprocessing = (
            _without_file_io(parser.get_parsed_content("postprocessing")) if "postprocessing" in parser else None
        )
        # Click bundles only: steps on each click's network patch ({"pred": (1, x, y, z) labels, "image": the
        # image channel}) before its answer is mapped back, e.g. anatomy rules in the network's own space.
        self.patch_postprocessing = (
            parser.get_parsed_content("patch_postprocessing") if "patch_postprocessing" in parser else None
        )
        self._raw_preprocessing = parser.get("preprocessing")
        self._postprocessing_inverts = inverts_itself(self.postprocessing)

    def _autocast(self) -> Any:
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return nullcontext()

    def image_pipeline(self) -> Compose:
        """The bundle's preprocessing restricted to the image key (for preparing a whole image once).

        Transforms that do not touch the image, or that merge keys (ConcatItemsd), are left out; per-key
        options given as lists (e.g. Spacingd modes) keep the image's entry.
        """
        raw = self._raw_preprocessing
        transforms = raw.get("transforms", []) if isinstance(raw, dict) else list(raw or [])
        kept: list[dict[str, Any]] = []
        for item in transforms:
            if not isinstance(item, dict) or "Concat" in str(item.get("_target_", "")):
                continue
            keys = item.get("keys")
            key_list = [keys] if isinstance(keys, str) else list(keys or [])
            if self.image_key not in key_list or "Load" in str(item.get("_target_", "")):
                continue
            position = key_list.index(self.image_key)
            trimmed = {
                k: v[position] if k in _PER_KEY_OPTIONS and isinstance(v, list | tuple) else v for k, v in item.items()
            }
            trimmed["keys"] = [self.image_key]
            kept.append(trimmed)
        return ConfigParser({"p": {"_target_": "Compose", "transforms": kept}}).get_parsed_content("p")

    def forward_patch(self, patch: torch.Tensor) -> torch.Tensor:
        """The network on one patch (channels, x, y, z), no sliding window: the click path's forward pass."""
        with torch.no_grad(), self._autocast():
            return self.network(patch[None].to(self.device))[0].float()

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.preprocessing(dict(inputs))

    @torch.no_grad()
    def forward(self, network_input: torch.Tensor) -> torch.Tensor:
        """The raw network pass through the bundle's inferer (what benchmarks compare against)."""
        with self._autocast():
            return self.inferer(network_input[None].to(self.device), self.network)[0].float()

    def warmup(self) -> None:
        """A forward pass on zeros of one window (allocators, kernels and thread pools start now, not on click 1)."""
        inputs = self.bundle.metadata.get("network_data_format", {}).get("inputs", {})
        channels = int(next(iter(inputs.values()), {}).get("num_channels", 1))
        roi = getattr(self.inferer, "roi_size", None) or (32, 32, 32)
        size = [max(int(v), 16) for v in (roi if isinstance(roi, list | tuple) else [roi] * 3)]
        self.forward(torch.zeros((channels, *size)))

    def model_image(self, volume: Volume) -> ModelImage:
        """The volume's image in this bundle's model space, with the stored-grid -> model index map."""
        return model_image(self.image_pipeline(), volume, self.image_key)

    def run(self, inputs: dict[str, Any], stored: Geometry) -> np.ndarray:
        """Channel-index label map on `stored`, the grid of `inputs[image_key]` as given (before preprocessing).

        The prediction always goes back through `model_space.to_stored_grid` (inverted with the records of
        the bundle's own transforms, then checked in world space): never decided by comparing shapes.
        """
        data = self.preprocess(inputs)
        data["pred"] = self.forward(data[self.input_key]).cpu()
        if self.postprocessing is not None:
            data = self.postprocessing(data)
        return to_stored_grid(
            data,
            data["pred"],
            stored,
            self.image_key,
            self._full_preprocessing,
            already_inverted=self._postprocessing_inverts,
        )

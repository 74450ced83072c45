"""The app's network as NVFlare's server builds it: a class constructible from plain JSON arguments.

NVFlare's server-side persistor instantiates the initial model from `{"path": "module.Class", "args": {...}}`
in the job config. A MONAI bundle describes its network as a `network_def` dict, so `BundleNetwork` takes
exactly that dict. This file is copied into the job's server app on its own (the coordinator needs torch and
MONAI, not annotation-server), so it must import nothing from this package.

Its state dict is the bundle network's own (same keys, no wrapper prefix): the initial checkpoint, every
site's update and the global model all load straight into `load_network(bundle)` and back into a bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class BundleNetwork(torch.nn.Module):
    """A MONAI bundle's `network_def` as a module whose state dict is the inner network's."""

    def __init__(self, network_def: dict[str, Any]) -> None:
        super().__init__()
        from monai.bundle import ConfigParser

        self.network_def = network_def  # NVFlare reads constructor args back from attributes of the same name
        self.net: torch.nn.Module = ConfigParser({"network": network_def}).get_parsed_content("network")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

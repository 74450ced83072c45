"""The oneDNN path for one-patch 3-D convolutions: same outputs, stock path while training, plain state dicts."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from monai.networks.nets import UNet

from annotation_server.inference.onednn import OneDNNConv3d, use_onednn_convolutions

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")


def small_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 3, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, norm="instance").eval()


@pytest.mark.slow
def test_same_outputs_as_the_stock_path_and_same_state_dict() -> None:
    stock, fast = small_unet(), small_unet()
    assert use_onednn_convolutions(fast, torch.device("cpu")) == sum(
        type(m) is torch.nn.Conv3d for m in stock.modules()
    )
    x = torch.randn(1, 3, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(stock(x), fast(x), atol=1e-4)
    assert list(stock.state_dict()) == list(fast.state_dict())
    clone = copy.deepcopy(fast)  # a deep copy (the uncertainty scorer's private network) keeps its own weights
    with torch.no_grad():
        clone.model[0].conv.unit0.conv.weight.mul_(0)
        assert not torch.allclose(clone(x), fast(x))
    assert isinstance(pickle.loads(pickle.dumps(fast)).model[0].conv.unit0.conv, OneDNNConv3d)


@pytest.mark.slow
def test_gradients_use_the_stock_path_so_training_is_unchanged() -> None:
    stock, fast = small_unet(), small_unet()
    use_onednn_convolutions(fast, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32, 32)
    for net in (stock, fast):
        net.train()
        net(x).sum().backward()
    for a, b in zip(stock.parameters(), fast.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


def test_not_applied_off_cpu() -> None:
    net = small_unet()
    assert use_onednn_convolutions(net, torch.device("meta")) == 0
    assert not any(isinstance(m, OneDNNConv3d) for m in net.modules())


def test_inference_service_call_runs_on_the_inference_thread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    from annotation_server.datastore import LocalDatastore
    from annotation_server.inference.cache import VolumeCache
    from annotation_server.inference.engine import InferenceService

    service = InferenceService({}, VolumeCache(1 << 20), LocalDatastore(tmp_path / "s"), tmp_path / "w")
    try:
        names = {service.call(lambda: threading.current_thread().name) for _ in range(3)}
        assert names == {"infer_0"}
    finally:
        service.close()

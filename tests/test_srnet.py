"""SRNet (Sec. 3.1): shapes, the residual over bilinear upscaling, layers, training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ifv.errors import UserError
from ifv.math.objective import tap
from ifv.zoo import get_spec, load
from ifv.zoo.models.srnet import SRNet, geometry_loss, srnet_layers, upscale, upscaling_quality
from ifv.zoo.registry import record_of


def test_output_is_four_times_the_input() -> None:
    torch.manual_seed(0)
    net = SRNet(channels=8, blocks=8, up_channels=4).eval()
    out = net(torch.randn(2, 5, 12, 10))
    assert out.shape == (2, 5, 48, 40)


def test_zero_last_convolution_gives_bilinear_upscaling() -> None:
    torch.manual_seed(0)
    net = SRNet(channels=8, blocks=8, up_channels=4).eval()
    nn.init.zeros_(net.out.weight)
    nn.init.zeros_(net.out.bias)
    x = torch.randn(3, 5, 9, 11)
    expected = nn.functional.interpolate(x, scale_factor=4, mode="bilinear",
                                         align_corners=False)
    with torch.no_grad():
        assert torch.equal(net(x), expected)
        assert torch.equal(upscale(x), expected)
        # with a nonzero residual the output differs from bilinear upscaling
        nn.init.constant_(net.out.bias, 0.5)
        torch.testing.assert_close(net(x), expected + 0.5)


@pytest.mark.parametrize("name", ["srnet_geometry", "srnet"])
def test_layers_and_channels_via_tap(name: str) -> None:
    spec = get_spec(name)
    assert spec.arch == "srnet" and spec.layers == srnet_layers(**spec.arch_kwargs)
    assert spec.layers["block8"] == 64  # the paper's layer: 64 filters of the 8th block
    model = load(spec, weights="random")
    h, w = 8, 6  # fully convolutional: a small input is enough to count the channels
    x = torch.randn(1, 5, h, w)
    for layer, channels in spec.layers.items():
        a = tap(model, layer, x)
        scale = 1 if layer == "conv0" or layer.startswith("block") else \
            2 if layer == "up1" else 4
        assert a.shape == (1, channels, scale * h, scale * w), layer


def test_paper_tier_architecture() -> None:
    spec = get_spec("srnet")
    assert spec.tier == "paper" and spec.input_size == (128, 128)
    assert spec.arch_kwargs == {"channels": 64, "blocks": 10, "up_channels": 64}
    offline = get_spec("srnet_geometry")
    assert offline.tier == "offline" and offline.arch_kwargs["blocks"] >= 8


def test_paper_tier_needs_weights_from_a_path(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match="model.weights=PATH"):
        load("srnet", cache_dir=tmp_path)
    # a state dict of the architecture loads from a path
    state = SRNet(**get_spec("srnet").arch_kwargs).state_dict()
    torch.save(state, tmp_path / "weiss.pt")
    model = load("srnet", weights=str(tmp_path / "weiss.pt"))
    assert not any(p.requires_grad for p in model.parameters())
    from ifv.zoo.train import train

    with pytest.raises(UserError, match="not public"):
        train(get_spec("srnet"), tmp_path, progress=False)


def test_quality_metrics_by_hand() -> None:
    truth = torch.zeros(1, 5, 2, 2)
    truth[:, 0] = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    truth[:, 3] = 1.0  # normals (0, 0, 1)
    truth[:, 4] = 0.5
    q = upscaling_quality(truth, truth)
    assert q == {"normal_error_deg": 0.0, "mask_accuracy": 1.0, "depth_error": 0.0}
    pred = truth.clone()
    pred[0, 1:4, 0, 0] = torch.tensor([2.0, 0.0, 2.0])  # 45 degrees, not normalized
    pred[0, 0, 1, 1] = 0.3  # one wrong mask pixel of four
    pred[0, 4, 0, 1] = 0.6
    q = upscaling_quality(pred, truth)
    assert q["normal_error_deg"] == pytest.approx(22.5)
    assert q["mask_accuracy"] == pytest.approx(0.75)
    assert q["depth_error"] == pytest.approx(0.05)
    assert geometry_loss(truth, truth).item() == 0.0


def test_short_training_beats_its_start(tmp_path) -> None:  # noqa: ANN001
    """A tiny recipe: the loss on held-out images falls below bilinear upscaling's (the
    network's starting point), and the record and checkpoint are written."""
    from ifv.zoo.train import train

    spec = get_spec("srnet_geometry").with_recipe(n_train=16, n_test=4, low=16, crop=8,
                                                  steps=50, batch_size=8)
    rec = train(spec, tmp_path, progress=False, device="cpu")
    assert rec["test_loss"] < rec["bilinear_test_loss"]
    path = spec.checkpoint(tmp_path)
    assert path.exists() and record_of(path)["srnet_normal_error_deg"] == \
        rec["srnet_normal_error_deg"]
    for key in ("srnet_normal_error_deg", "bilinear_normal_error_deg", "srnet_mask_accuracy",
                "bilinear_mask_accuracy", "beats_bilinear", "train_seconds"):
        assert key in rec
    model = load(spec, cache_dir=tmp_path)
    assert model(torch.zeros(1, 5, 8, 8)).shape == (1, 5, 32, 32)

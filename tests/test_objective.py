"""Feature response: tap, aggregation, significance (Sec. 2, 2.3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ifv.math.objective import Response, aggregate, significance, tap


def test_maxpool_mean_by_hand() -> None:
    a = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    # 3x3 windows of a 4x4 map (stride 1): maxima are 10, 11, 14, 15
    assert aggregate(a, "maxpool_mean").item() == pytest.approx((10 + 11 + 14 + 15) / 4)


def test_mean_and_center_by_hand() -> None:
    a = torch.zeros(2, 3, 5, 5)
    a[1, 2, 2, 2] = 25.0
    assert aggregate(a, "mean")[1, 2].item() == pytest.approx(1.0)
    assert aggregate(a, "center")[1, 2].item() == 25.0
    assert aggregate(a, "center")[0].abs().sum().item() == 0.0


def test_maxpool_breaks_linearity_that_mean_keeps() -> None:
    """Sec. 2.3: the mean of a zero-sum filter response vanishes, max pooling does not."""
    img = torch.randn(1, 1, 12, 12)
    sobel = torch.tensor([[[[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]]])
    a = nn.functional.conv2d(img, sobel, padding=1)
    inner = a[..., 1:-1, 1:-1]
    assert aggregate(inner, "maxpool_mean").item() > aggregate(inner, "mean").item()


def test_non_spatial_is_identity_and_identity_needs_non_spatial() -> None:
    a = torch.randn(4, 7)
    for how in ("maxpool_mean", "mean", "center", "identity"):
        assert torch.equal(aggregate(a, how), a)
    with pytest.raises(ValueError, match="non-spatial"):
        aggregate(torch.randn(1, 2, 3, 3), "identity")
    with pytest.raises(ValueError, match="valid"):
        aggregate(a, "median")


def test_significance_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([[3.0, 4.0]])
    # x^T y = 3, cos = 3/5
    assert significance(x, y, 0).item() == pytest.approx(3.0)
    assert significance(x, y, 2).item() == pytest.approx(3.0 * 0.36)


class _Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("work after the tapped layer")


def test_tap_stops_forward_and_leaves_no_hook() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), _Exploding())
    a = tap(model, "1", torch.randn(2, 3, 8, 8))
    assert a.shape == (2, 4, 6, 6)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(KeyError):
        tap(model, "nope", torch.randn(1, 3, 8, 8))


def test_response_selects_features(small_cnn: nn.Module) -> None:
    v = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    full = Response(small_cnn, torch.sigmoid, "conv2", range(6), "mean")(v)
    some = Response(small_cnn, torch.sigmoid, "conv2", [4, 1], "mean")(v)
    assert torch.allclose(some, full[:, [4, 1]])

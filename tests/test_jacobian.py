"""Tests of ifv.math.jacobian: y, Dy and G = Dy Dy^T against per-sample autograd (Sec. 2.1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifv.math.jacobian import METHODS, gram, jacobian, response_and_gram

B, SHAPE, N_F = 3, (3, 8, 8), 5
N_P = 3 * 8 * 8


def make_net(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(6, N_F, 3, padding=1))
    return net.to(dtype).eval()


def make_fn(net: nn.Module):
    """N~ = Agg o N o P_rgb: sigmoid, CNN, 3x3 max-pool stride 1, spatial mean."""

    def fn(v: Tensor) -> Tensor:
        a = net(torch.sigmoid(v))
        return F.max_pool2d(a, 3, stride=1).mean(dim=(-2, -1))

    return fn


def reference(fn, v: Tensor) -> Tensor:
    """Dy per sample via torch.autograd.functional.jacobian: (B, n_f, n_p)."""
    rows = []
    for b in range(v.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda x: fn(x[None])[0], v[b].detach())
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def setup():
    net = make_net()
    fn = make_fn(net)
    v = torch.randn(B, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, fn, v, reference(fn, v)


@pytest.mark.parametrize("method", METHODS)
def test_jacobian_matches_reference(setup, method):
    net, fn, v, ref = setup
    y, dy = jacobian(fn, v, method=method)
    assert y.shape == (B, N_F) and dy.shape == (B, N_F, N_P)
    assert y.dtype == dy.dtype == torch.float64
    assert not dy.requires_grad and not y.requires_grad
    torch.testing.assert_close(dy, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, fn(v).detach(), rtol=1e-12, atol=1e-14)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_gram_matches_reference_and_chunking(setup, method):
    net, fn, v, ref = setup
    v0 = v.clone()
    y_big, g_big = response_and_gram(fn, v, method=method)
    y_one, g_one = response_and_gram(fn, v, method=method, max_bytes=1)  # chunk of 1
    y_two, g_two = response_and_gram(fn, v, method=method, max_bytes=2 * N_F * N_P * 8)
    for y, g in ((y_big, g_big), (y_one, g_one), (y_two, g_two)):
        assert y.dtype == g.dtype == torch.float64
        assert y.shape == (B, N_F) and g.shape == (B, N_F, N_F)
        torch.testing.assert_close(g, ref @ ref.mT, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(y, fn(v).detach(), rtol=1e-12, atol=1e-14)
        assert torch.equal(g, g.mT)  # exactly symmetric
        assert torch.linalg.eigvalsh(g).min() >= -1e-12 * g.diagonal(dim1=-2, dim2=-1).max()
    # chunking changes nothing beyond rounding of the batched backward
    torch.testing.assert_close(g_one, g_big, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g_two, g_big, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(y_one, y_big, rtol=1e-13, atol=1e-15)
    assert torch.equal(v, v0)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_v_requiring_grad_and_no_grad_context(setup, method):
    net, fn, v, ref = setup
    w = v.clone().requires_grad_(True)
    with torch.no_grad():
        y, g = response_and_gram(fn, w, method=method)
    torch.testing.assert_close(g, ref @ ref.mT, rtol=1e-10, atol=1e-12)
    assert w.grad is None and w.requires_grad and torch.equal(w.detach(), v)
    assert not y.requires_grad and not g.requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_float32_network():
    """A float32 fn: Dy in float32, G accumulated in float64 and close to the reference."""
    net64 = make_net()
    net32 = make_net(torch.float32)
    v = torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(2))
    ref = reference(make_fn(net64), v.double())
    _, dy = jacobian(make_fn(net32), v)
    assert dy.dtype == torch.float32
    y, g = response_and_gram(make_fn(net32), v, max_bytes=1)
    assert g.dtype == torch.float64 and torch.equal(g, g.mT)
    torch.testing.assert_close(g, ref @ ref.mT, rtol=1e-4, atol=1e-6)


def test_gram_blocks_match_dense():
    """The feature-blocked float64 product equals Dy Dy^T with several blocks."""
    dy = torch.randn(37, 1000, generator=torch.Generator().manual_seed(3))
    d = dy.double()
    for block_bytes in (1, 10 * 1000 * 8, 1 << 30):  # 37, 4 and 1 block(s)
        g = gram(dy, block_bytes=block_bytes)
        assert g.dtype == torch.float64 and torch.equal(g, g.T)
        torch.testing.assert_close(g, d @ d.T, rtol=1e-12, atol=1e-10)


def test_progress_bar_only_when_asked(setup, capsys):
    _, fn, v, _ = setup
    response_and_gram(fn, v, max_bytes=1)
    assert capsys.readouterr().err == ""
    response_and_gram(fn, v, max_bytes=1, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_invalid_method_names_valid_ones(setup):
    _, fn, v, _ = setup
    for call in (jacobian, response_and_gram):
        with pytest.raises(ValueError, match="loop, batched, vmap"):
            call(fn, v, method="jacrev")


def test_bad_output_shape(setup):
    _, fn, v, _ = setup
    with pytest.raises(ValueError, match=r"\(B, n_f\)"):
        jacobian(lambda x: fn(x).sum(), v)


class _OldStyleSquare(torch.autograd.Function):
    """An autograd.Function without setup_context: torch.func cannot transform it."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_vmap_failure_is_clear(setup):
    _, fn, v, _ = setup

    def custom(x: Tensor) -> Tensor:
        return fn(_OldStyleSquare.apply(x))

    with pytest.raises(RuntimeError, match="method='loop'"):
        jacobian(custom, v, method="vmap")
    for method in ("loop", "batched"):
        _, dy = jacobian(custom, v, method=method)
        torch.testing.assert_close(dy, reference(custom, v), rtol=1e-10, atol=1e-12)

"""FV (Sec. 3.2): Adam then per-sample L-BFGS."""

from __future__ import annotations

import torch
from torch import nn

from ifv.math.fv import FVSettings, lbfgs, losses, realize
from ifv.math.objective import Response


def _setup(small_cnn: nn.Module) -> tuple[Response, torch.Tensor, torch.Tensor]:
    response = Response(small_cnn, torch.sigmoid, "conv2", range(6), "maxpool_mean")
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    x = torch.rand(3, 6, generator=g, dtype=torch.float64)
    return response, v, x / x.norm(dim=1, keepdim=True)


def test_lbfgs_decreases_loss_and_gradient(small_cnn: nn.Module) -> None:
    response, v, x = _setup(small_cnn)
    v_opt, iters = lbfgs(response, v, x, 2, steps=200, tol=1e-14)
    assert (losses(response, v_opt, x, 2) < losses(response, v, x, 2)).all()
    u = v_opt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(losses(response, u, x, 2).sum(), u)
    u0 = v.clone().requires_grad_(True)
    (g0,) = torch.autograd.grad(losses(response, u0, x, 2).sum(), u0)
    assert (g.flatten(1).norm(dim=1) < 1e-3 * g0.flatten(1).norm(dim=1)).all()
    assert (iters > 0).all()


def test_lbfgs_samples_are_independent(small_cnn: nn.Module) -> None:
    """Each sample follows its own path: the batch equals the samples run alone."""
    response, v, x = _setup(small_cnn)
    together, it_together = lbfgs(response, v, x, 2, steps=15)
    for i in range(3):
        alone, it_alone = lbfgs(response, v[i:i + 1], x[i:i + 1], 2, steps=15)
        assert torch.allclose(alone[0], together[i], atol=1e-8)
        assert it_alone[0] == it_together[i]


def test_realize_is_deterministic_and_records_convergence(small_cnn: nn.Module) -> None:
    response, _, x = _setup(small_cnn)

    def init(n: int, g: torch.Generator) -> torch.Tensor:
        return 0.01 * torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)

    settings = FVSettings(adam_steps=10, lbfgs_steps=10, batch_size=2)
    a = realize(response, x.double(), 2, settings, init=init, seed=5, progress=False)
    b = realize(response, x.double(), 2, settings, init=init, seed=5, progress=False)
    assert torch.equal(a.v, b.v)
    assert a.v.shape == (3, 3, 8, 8) and a.y.shape == (3, 6)
    assert (a.grad_norm >= 0).all() and a.iters.shape == (3,)
    assert torch.allclose(a.loss, losses(response, a.v, x, 2).detach())


class _Store:
    """A BatchStore in memory that counts the batches computed and saved."""

    def __init__(self, parts: dict[tuple[int, int], dict] | None = None) -> None:
        self.parts = dict(parts or {})
        self.saved: list[tuple[int, int]] = []

    def load(self, start: int, stop: int) -> dict | None:
        return self.parts.get((start, stop))

    def save(self, start: int, stop: int, out: dict) -> None:
        self.parts[(start, stop)] = out
        self.saved.append((start, stop))


def test_realize_resumes_from_its_stored_batches(small_cnn: nn.Module) -> None:
    response, _, x = _setup(small_cnn)

    def init(n: int, g: torch.Generator) -> torch.Tensor:
        return 0.01 * torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)

    settings = FVSettings(adam_steps=10, lbfgs_steps=10, batch_size=2)
    whole = _Store()
    a = realize(response, x.double(), 2, settings, init=init, seed=5, progress=False,
                store=whole)
    assert whole.saved == [(0, 2), (2, 3)]
    first = _Store({(0, 2): whole.parts[(0, 2)]})  # killed after the first batch
    b = realize(response, x.double(), 2, settings, init=init, seed=5, progress=False,
                store=first)
    assert first.saved == [(2, 3)]  # only the missing batch is computed
    assert torch.equal(a.v, b.v) and torch.equal(a.iters, b.iters)
    assert torch.equal(a.grad_norm, b.grad_norm) and torch.equal(a.loss, b.loss)

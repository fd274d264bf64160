"""Grad-IFV against independent derivations (Sec. 2.1, Supp. S1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ifv.math.inverse import solve, substitution, z_k, z_k_inv
from ifv.math.metrics import angular_distance
from ifv.math.objective import Response, significance


def _jacobian(response: Response, v: torch.Tensor) -> torch.Tensor:
    """Dy of one sample by torch.autograd.functional.jacobian: (n_f, n_p)."""
    jac = torch.autograd.functional.jacobian(lambda u: response(u.unsqueeze(0))[0], v)
    return jac.reshape(jac.shape[0], -1)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_gradient_of_significance_is_s1_closed_form(small_cnn: nn.Module, k: int) -> None:
    """grad_v S_x(N~(v)) = (k+1) q^k x^T Z_k(y) Dy (Sec. 2.1, S1)."""
    torch.manual_seed(k)
    response = Response(small_cnn, torch.sigmoid, "conv2", range(6), "maxpool_mean")
    for _ in range(3):
        v = torch.randn(3, 8, 8, dtype=torch.float64)
        x = torch.rand(6, dtype=torch.float64)
        x /= x.norm()
        u = v.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(significance(x[None], response(u[None]), k).sum(), u)
        y = response(v[None])[0]
        q = x @ y / y.norm()
        closed = (k + 1) * q**k * (x @ z_k(y[None], k)[0] @ _jacobian(response, v))
        assert torch.allclose(grad.flatten(), closed, rtol=1e-9, atol=1e-12)


def test_z_inverse_by_sherman_morrison() -> None:
    y = torch.randn(5, 7, dtype=torch.float64)
    eye = torch.eye(7, dtype=torch.float64).expand(5, 7, 7)
    for k in (0, 2, 5):
        assert torch.allclose(z_k(y, k) @ z_k_inv(y, k), eye, atol=1e-12)


def _planted(b: int, n_f: int, n_p: int, k: float, basis: torch.Tensor | None = None,
             seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, G) with x^T Z_k(y) Dy = 0 by construction and Z_k x in span(basis)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(b, n_f, generator=g, dtype=torch.float64)
    dy = torch.randn(b, n_f, n_p, generator=g, dtype=torch.float64)
    c = torch.rand(b, n_f, generator=g, dtype=torch.float64)
    if basis is not None:
        c = c @ basis @ basis.T
    x = (z_k_inv(y, k) @ c.unsqueeze(-1)).squeeze(-1)
    x /= x.norm(dim=1, keepdim=True)
    w = (z_k(y, k) @ x.unsqueeze(-1)).squeeze(-1)
    w /= w.norm(dim=1, keepdim=True)
    dy = dy - w.unsqueeze(-1) * (w.unsqueeze(1) @ dy)
    return x, y, dy @ dy.transpose(1, 2)


@pytest.mark.parametrize("k", [0, 2])
def test_solver_returns_planted_objective(k: float) -> None:
    x, y, gram = _planted(6, 9, 40, k)
    x_pred, residual = solve(y, gram, k)
    assert angular_distance(x, x_pred).max() < 1e-6
    assert residual.max() < 1e-10
    assert ((x_pred * y).sum(1) >= 0).all()
    assert torch.allclose(x_pred.norm(dim=1), torch.ones(6, dtype=torch.float64))


def test_solver_with_critical_space_removes_a_dead_neuron() -> None:
    """A zero row of Dy makes e_0 a trivial solution; C = e_0^perp removes it (Sec. 2.1)."""
    k, n_f = 2.0, 6
    basis = torch.eye(n_f, dtype=torch.float64)[:, 1:]
    x, y, gram = _planted(5, n_f, 30, k, basis=basis, seed=3)
    gram[:, 0, :] = 0.0
    gram[:, :, 0] = 0.0
    # the full space is fooled by the dead neuron for some sample (two co-kernel directions)
    x_full, _ = solve(y, gram, k)
    x_crit, _ = solve(y, gram, k, basis)
    assert angular_distance(x, x_crit).max() < 1e-6
    assert angular_distance(x, x_full).max() > 1.0


def test_substitution_is_orthonormal_and_spans_zinv_c() -> None:
    y = torch.rand(3, 5, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64))[0]
    u = substitution(y, 2, basis)
    assert torch.allclose(u.transpose(1, 2) @ u, torch.eye(2, dtype=torch.float64).expand(3, 2, 2))
    target = z_k_inv(y, 2) @ basis
    residual = target - u @ (u.transpose(1, 2) @ target)
    assert residual.abs().max() < 1e-12

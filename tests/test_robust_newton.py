"""The second-order condition's pieces (lab.robust_newton) on problems with a
known answer: the Hessian against autograd's, the damped inverse against an explicit one,
and a planted displacement that the metric undoes where the plain condition does not."""

from __future__ import annotations

import sys

import pytest
import torch

from ifv.math.metrics import angular_distance
from ifv.math.objective import significance
from lab.robust_newton import (
    displacement_factor,
    expected_hessian,
    main,
    metric_cross,
    solve_in_metric,
)


def _smooth_responses(n_f: int, n_p: int, n_t: int, seed: int) -> list:
    """n_t smooth response functions v (B, n_p) -> softplus(A_t v) (B, n_f)."""
    g = torch.Generator().manual_seed(seed)
    mats = [torch.randn(n_f, n_p, generator=g, dtype=torch.float64) for _ in range(n_t)]
    return [lambda v, a=a: torch.nn.functional.softplus(v.flatten(1) @ a.T) for a in mats]


def test_expected_hessian_matches_autograd() -> None:
    """Forward differences of the gradient equal the exact Hessian of
    (1/K) sum_t -S_x(y_t(v)) to the step's truncation error."""
    responses = _smooth_responses(4, 6, 3, seed=0)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(1, 6, generator=g, dtype=torch.float64)
    x = torch.rand(4, generator=g, dtype=torch.float64) + 0.1

    def loss(w: torch.Tensor) -> torch.Tensor:
        return sum(-significance(x[None], r(w[None]), 2.0).sum() for r in responses) / 3

    exact = torch.autograd.functional.hessian(loss, v[0])
    approx = expected_hessian(responses, v, x, 2.0, eps=1e-6, chunk=4)
    assert torch.allclose(approx, approx.T)
    assert (approx - exact).norm() / exact.norm() < 1e-4


def test_displacement_factor_is_the_damped_inverse() -> None:
    """W W^T = (H^2 + (mu ||H||)^2)^-1 for an indefinite H."""
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    lam = torch.tensor([-3.0, -1.0, -0.01, 0.0, 1e-4, 0.5, 2.0, 4.0], dtype=torch.float64)
    h = q @ torch.diag(lam) @ q.T
    w = displacement_factor(h, 0.1)
    expect = torch.linalg.inv(h @ h + (0.1 * 4.0) ** 2 * torch.eye(8, dtype=torch.float64))
    assert torch.allclose(w @ w.T, expect, atol=1e-10)


def test_metric_cross_with_the_identity_is_the_plain_cross_gram() -> None:
    g = torch.Generator().manual_seed(3)
    jac = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    stacked = jac.reshape(12, 10)
    assert torch.allclose(metric_cross(jac, torch.eye(10, dtype=torch.float64)),
                          stacked @ stacked.T)


def test_metric_undoes_a_planted_displacement() -> None:
    """k = 0, linear responses y_t = A_t v: the mean gradient of the target is planted as
    H delta, delta a small displacement along H's stiff directions. The plain condition
    then prefers another x; in the metric H^-2 the target's implied displacement is delta
    itself, the shortest, and it comes back."""
    n_f, n_p, n_t = 5, 40, 2
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(n_p, n_p, generator=g, dtype=torch.float64))
    lam = torch.logspace(-2, 0, n_p, dtype=torch.float64)
    h = q @ torch.diag(lam) @ q.T
    delta = 3 * q[:, -3:] @ torch.randn(3, generator=g, dtype=torch.float64)  # stiff
    x_true = torch.nn.functional.normalize(torch.rand(n_f, generator=g, dtype=torch.float64)
                                           + 0.5, dim=0)
    jac = torch.randn(n_t, n_f, n_p, generator=g, dtype=torch.float64)
    # plant mean_t A_t^T x_true = H delta (a rank-one change of every A_t)
    fix = h @ delta - jac.mean(0).T @ x_true
    jac = jac + torch.outer(x_true, fix)[None]
    assert torch.allclose(jac.mean(0).T @ x_true, h @ delta)
    ys = (jac @ torch.ones(n_p, dtype=torch.float64)).abs() + 1.0  # positive responses
    plain = solve_in_metric(ys, jac, torch.eye(n_p, dtype=torch.float64), 0.0)
    metric = solve_in_metric(ys, jac, displacement_factor(h, 1e-9), 0.0)
    assert float(angular_distance(x_true, plain)) > 20.0
    assert float(angular_distance(x_true, metric)) < 1.0


def test_hessian_draws_beyond_the_samples_is_one_clear_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--hessian-draws above --ks exits with argparse's usage error, before any work."""
    monkeypatch.setattr(sys, "argv", ["robust_newton", "--ks", "4", "--hessian-draws", "8"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "--hessian-draws must be in [1, --ks=4], got 8" in capsys.readouterr().err

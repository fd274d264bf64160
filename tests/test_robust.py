"""Grad-IFV for robust FV (ifv.math.robust) on planted problems with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ifv.math import transform as T
from ifv.math.inverse import solve, substitution, unit, z_k
from ifv.math.metrics import angular_distance, next_residual, relative_residual
from ifv.math.objective import Response, responses_under
from ifv.math.robust import (
    ESTIMATORS,
    Quantities,
    mean_gram,
    prior_weight,
    project_prior,
    quantities,
    second_gram,
    solve_known_weight,
    solve_mean,
    solve_prior,
    solve_quantities,
    solve_transformed,
    stationarity,
    weighted_gram,
    weighted_prior,
    weights,
)

F64 = torch.float64


def _basis(n_f: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n_f, d, generator=g, dtype=F64))
    return q


def _planted(b: int, n_t: int, n_f: int, n_p: int, k: float, spread: float = 0.3,
             seed: int = 0, basis: torch.Tensor | None = None, lam: float | None = None):
    """x, y_t, Dy_t, g, ||grad R|| with (1/K) sum_t c_t x^T Z_t Dy_t = lam ||grad R|| g^T
    exactly (lam = None: = 0), c_t = (k+1) q_t^k. With a basis C_M: x, y_t and the columns
    of every Dy_t lie in C."""
    g = torch.Generator().manual_seed(seed)
    proj = basis @ basis.T if basis is not None else torch.eye(n_f, dtype=F64)
    x = unit(torch.rand(b, n_f, generator=g, dtype=F64) @ proj)
    ys = (torch.rand(b, 1, n_f, generator=g, dtype=F64) + 0.5
          + spread * torch.rand(b, n_t, n_f, generator=g, dtype=F64)) @ proj
    dys = (torch.randn(b, 1, n_f, n_p, generator=g, dtype=F64)
           + spread * torch.randn(b, n_t, n_f, n_p, generator=g, dtype=F64))
    dys = proj @ dys
    gv = unit(torch.randn(b, n_p, generator=g, dtype=F64))
    rnorm = torch.rand(b, generator=g, dtype=F64) + 0.5
    c = weights(x, ys, k)
    w = (z_k(ys.reshape(-1, n_f), k).reshape(b, n_t, n_f, n_f) @ x[:, None, :, None]).squeeze(-1)
    lhs = (c[..., None] * (w.unsqueeze(-2) @ dys).squeeze(-2)).mean(1)  # (b, n_p)
    target = (lam or 0.0) * rnorm[:, None] * gv
    fix = (w[..., None] * (lhs - target)[:, None, None, :]
           / (c[..., None, None] * (w * w).sum(-1)[..., None, None]))
    dys = dys - fix
    return x, ys, dys, gv, rnorm


def _cross(dys: torch.Tensor) -> torch.Tensor:
    b, n_t, n_f, n_p = dys.shape
    s = dys.reshape(b, n_t * n_f, n_p)
    return s @ s.transpose(1, 2)


def _jvp(dys: torch.Tensor, gv: torch.Tensor) -> torch.Tensor:
    return (dys @ gv[:, None, :, None]).squeeze(-1)  # (b, K, n_f)


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(angular_distance(a, b).max())


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_planted_transforms_recovered(k: int, estimator: str) -> None:
    x, ys, dys, _, _ = _planted(4, 6, 5, 40, k, spread=0.5, seed=k)
    s = solve_transformed(ys, _cross(dys), k, tol=1e-13, estimator=estimator)
    assert bool(s.converged.all())
    assert torch.allclose(s.x, x, atol=1e-8)
    assert torch.allclose(s.weights, weights(x, ys, k), atol=1e-8)
    assert float(s.residual.max()) < 1e-6
    g = (s.weights[..., None, None] * z_k(ys.reshape(-1, 5), k).reshape(4, 6, 5, 5)
         @ dys).mean(1)  # the planted condition holds at the returned x and weights
    assert float((s.x.unsqueeze(1) @ g).norm()) < 1e-8


def test_fixed_point_iterations() -> None:
    """Equal weights at the answer: one step; spread weights: several, each contracting."""
    x, ys, dys, _, _ = _planted(2, 5, 4, 30, 2, spread=0.0, seed=1)
    s = solve_transformed(ys, _cross(dys), 2)
    assert s.iterations.tolist() == [1, 1] and torch.allclose(s.x, x, atol=1e-10)
    x, ys, dys, _, _ = _planted(2, 5, 4, 30, 2, spread=1.0, seed=1)
    cross = _cross(dys)
    s = solve_transformed(ys, cross, 2, tol=1e-12)
    assert bool(s.converged.all()) and int(s.iterations.min()) > 2
    assert torch.allclose(s.x, x, atol=1e-9)
    one = solve_transformed(ys, cross, 2, max_iter=1)
    assert not bool(one.converged.any()) and one.iterations.tolist() == [1, 1]
    assert _angle(one.x, x) > 1e-6  # equal weights alone are not the answer
    errors = [_angle(solve_transformed(ys, cross, 2, max_iter=n).x, x) for n in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]
    damped = solve_transformed(ys, cross, 2, tol=1e-12, damping=0.5)
    assert bool(damped.converged.all()) and torch.allclose(damped.x, x, atol=1e-9)
    assert (damped.iterations > s.iterations).all()


@pytest.mark.parametrize("k", [0, 1, 2])
def test_single_transform_is_inverse_solve(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    y = torch.rand(3, 6, generator=g, dtype=F64)
    dy = torch.randn(3, 6, 20, generator=g, dtype=F64)
    gr = dy @ dy.transpose(1, 2)
    basis = _basis(6, 4, k)
    for c in (None, basis):
        s = solve_transformed(y[:, None], gr, k, c)
        x, _ = solve(y, gr, k, c)
        assert torch.allclose(s.x, x, atol=1e-10)
        assert s.iterations.tolist() == [1, 1, 1]
        if c is None:
            assert torch.allclose(s.residual, relative_residual(x, y, gr, k), atol=1e-10)
        # the runner-up's residual is plain Grad-IFV's (``ifv invert``'s next_residual)
        assert torch.allclose(s.next_residual, next_residual(y, gr, k, c if c is not None
                                                              else torch.eye(6, dtype=F64)),
                              atol=1e-10)


def test_k0_is_opt3_on_the_mean_jacobian() -> None:
    g = torch.Generator().manual_seed(5)
    ys = torch.rand(3, 4, 6, generator=g, dtype=F64)
    dys = torch.randn(3, 4, 6, 25, generator=g, dtype=F64)
    cross = _cross(dys)
    mean = dys.mean(1)
    gm = mean @ mean.transpose(1, 2)
    assert torch.allclose(mean_gram(cross, 4), gm, atol=1e-12)
    assert torch.allclose(weighted_gram(ys, cross, torch.ones(3, 4, dtype=F64), 0), gm,
                          atol=1e-12)
    basis = _basis(6, 5, 0)
    y_ref = unit(ys).mean(1)
    x_ref, lam = solve(y_ref, gm, 0, basis)
    s = solve_transformed(ys, cross, 0, basis, estimator="mean")
    assert torch.allclose(s.x, x_ref, atol=1e-10)
    assert s.iterations.tolist() == [1, 1, 1] and torch.equal(s.weights, torch.ones(3, 4,
                                                                                   dtype=F64))
    xm, lm = solve_mean(y_ref, mean_gram(cross, 4), basis)
    assert torch.allclose(xm, x_ref, atol=1e-10) and torch.allclose(lm, lam, atol=1e-12)


def _per_transform(x: torch.Tensor, ys: torch.Tensor, dys: torch.Tensor, k: float,
                   g: torch.Tensor | None = None) -> torch.Tensor:
    """The per-transform gradients c_t x^T Z_t Dy_t (I - g g^T) straight from Dy_t:
    (b, K, n_p)."""
    b, n_t, n_f, _ = dys.shape
    z = z_k(ys.reshape(-1, n_f), k).reshape(b, n_t, n_f, n_f)
    grads = weights(x, ys, k)[..., None] * (x[:, None, None, :] @ z @ dys).squeeze(-2)
    if g is not None:
        grads = grads - (grads * g[:, None, :]).sum(-1, keepdim=True) * g[:, None, :]
    return grads


@pytest.mark.parametrize("k", [0, 2])
def test_second_gram_and_stationarity_from_the_per_transform_gradients(k: int) -> None:
    """x^T B x = mean_t ||g_t||^2 and stationarity = ||mean_t g_t|| / rms_t ||g_t||, with
    and without a prior's projection, against g_t formed from Dy_t."""
    g = torch.Generator().manual_seed(11)
    ys = torch.rand(3, 5, 6, generator=g, dtype=F64) + 0.2
    dys = torch.randn(3, 5, 6, 30, generator=g, dtype=F64)
    x = unit(torch.randn(3, 6, generator=g, dtype=F64))
    gv = unit(torch.randn(3, 30, generator=g, dtype=F64))
    cross = _cross(dys)
    c = weights(x, ys, k)
    for prior in (None, gv):
        grads = _per_transform(x, ys, dys, k, prior)
        bm = second_gram(ys, cross, c, k, None if prior is None else _jvp(dys, gv))
        quad = (x.unsqueeze(-2) @ bm @ x.unsqueeze(-1)).flatten()
        assert torch.allclose(quad, (grads**2).sum(-1).mean(1), rtol=1e-10)
        m = weighted_gram(ys, cross, c, k)
        if prior is not None:
            m = project_prior(m, weighted_prior(ys, _jvp(dys, gv), c, k))
        expect = grads.mean(1).norm(dim=-1) / (grads**2).sum(-1).mean(1).sqrt()
        assert torch.allclose(stationarity(x, m, bm), expect, rtol=1e-10)


def test_relative_estimator_is_the_generalized_eigenproblem() -> None:
    """k = 0, C_M given: the relative estimator minimizes the quotient x^T A x / x^T B x
    over Im C_M, as scipy's generalized symmetric eigensolver finds it."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(7)
    ys = torch.rand(2, 6, 5, generator=g, dtype=F64)
    dys = torch.randn(2, 6, 5, 40, generator=g, dtype=F64)
    basis = _basis(5, 4, 1)
    cross = _cross(dys)
    sec = torch.diagonal(cross.reshape(2, 6, 5, 6, 5), dim1=1, dim2=3).mean(-1)
    q = Quantities(y=ys, cross=cross, mean_gram=mean_gram(cross, 6), second=sec, prior=None,
                   prior_norm=None, evaluations=6)
    s = solve_quantities(q, 0, basis)
    mean = dys.mean(1)
    for i in range(2):
        a = (basis.T @ mean[i] @ mean[i].T @ basis).numpy()
        bb = (basis.T @ (dys[i] @ dys[i].transpose(-1, -2)).mean(0) @ basis).numpy()
        evals, vec = scipy_linalg.eigh(a, bb)
        ref = unit(basis @ torch.from_numpy(vec[:, 0]))
        assert float(angular_distance(s.x[i:i + 1], ref[None]).min()) < 1e-6 or \
            float(angular_distance(s.x[i:i + 1], -ref[None]).min()) < 1e-6
        # residual and runner-up: the square roots of the two smallest quotients
        assert float(s.residual[i]) == pytest.approx(np.sqrt(evals[0]), rel=1e-6)
        assert float(s.next_residual[i]) == pytest.approx(np.sqrt(evals[1]), rel=1e-6)
    t = solve_transformed(ys, cross, 0, basis)
    assert torch.allclose(t.x, s.x, atol=1e-10)
    assert torch.allclose(t.next_residual, s.next_residual, atol=1e-10)


def test_critical_basis_respected() -> None:
    """Dy_t share the co-kernel C^perp: without C_M, x is found only modulo C^perp."""
    basis = _basis(6, 4, 3)
    x, ys, dys, _, _ = _planted(3, 4, 6, 30, 2, spread=0.3, seed=3, basis=basis)
    cross = _cross(dys)
    free = solve_transformed(ys, cross, 2, estimator="mean")  # x* + C^perp: residual 0
    assert float(free.residual.max()) < 1e-6 and _angle(free.x, x) > 1.0
    assert _angle(free.x @ basis @ basis.T, x) < 1e-6  # x* modulo C^perp (Sec. 2.2)
    s = solve_transformed(ys, cross, 2, basis, tol=1e-13)
    assert torch.allclose(s.x, x, atol=1e-8)
    u = substitution(unit(ys).mean(1), 2, basis)
    inside = (u @ (u.transpose(1, 2) @ s.x.unsqueeze(-1))).squeeze(-1)
    assert torch.allclose(inside, s.x, atol=1e-12)


def test_prior_elimination_against_explicit_projection() -> None:
    """min over unit x in Im U and mu of ||x^T Z Dy - mu g^T||: the smallest eigenvector of
    U^T Z Dy (I - g g^T) Dy^T Z U, with the n_p x n_p projector formed explicitly."""
    k, n_f, n_p = 2, 5, 12
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, n_f, generator=g, dtype=F64)
    dy = torch.randn(2, n_f, n_p, generator=g, dtype=F64)
    gv = unit(torch.randn(2, n_p, generator=g, dtype=F64))
    basis = _basis(n_f, 4, 1)
    x, lam = solve_prior(y, dy @ dy.transpose(1, 2), (dy @ gv.unsqueeze(-1)).squeeze(-1), k,
                         basis)
    u = substitution(y, k, basis)
    zdy = z_k(y, k) @ dy
    proj = torch.eye(n_p, dtype=F64) - gv.unsqueeze(-1) * gv.unsqueeze(-2)
    m = u.transpose(1, 2) @ zdy @ proj @ zdy.transpose(1, 2) @ u
    evals, evecs = torch.linalg.eigh(m)
    brute = (u @ evecs[..., :1]).squeeze(-1)
    assert _angle(x, brute) < 1e-6 and torch.allclose(lam, evals[:, 0], atol=1e-10)
    # no unit x in Im U does better, mu fitted by least squares for each
    sig = unit(torch.randn(2, 2000, 4, generator=g, dtype=F64))
    xs = (u.unsqueeze(1) @ sig.unsqueeze(-1)).squeeze(-1)  # (2, 2000, n_f)
    grads = xs @ zdy  # (2, 2000, n_p)
    mu = (grads * gv.unsqueeze(1)).sum(-1, keepdim=True)
    best = (grads - mu * gv.unsqueeze(1)).square().sum(-1).min(dim=1).values
    assert (best >= lam - 1e-12).all()


@pytest.mark.parametrize("k", [0, 2])
def test_planted_prior_recovered_and_weight(k: int) -> None:
    lam = 0.7
    x, ys, dys, gv, rnorm = _planted(3, 1, 5, 30, k, spread=0.0, seed=2, lam=lam)
    y, dy = ys[:, 0], dys[:, 0]
    gr = dy @ dy.transpose(1, 2)
    u = (dy @ gv.unsqueeze(-1)).squeeze(-1)
    xp, ev = solve_prior(y, gr, u, k)
    assert torch.allclose(xp, x, atol=1e-8) and float(ev.max()) < 1e-12
    assert _angle(solve(y, gr, k)[0], x) > 1.0  # ignoring the prior misses
    assert torch.allclose(prior_weight(xp, ys, u[:, None], rnorm, k),
                          torch.full((3,), lam, dtype=F64), atol=1e-8)
    xk, scale, res = solve_known_weight(y, gr, u, rnorm, lam, k)
    assert torch.allclose(xk, x, atol=1e-8)
    assert torch.allclose(scale, torch.ones(3, dtype=F64), atol=1e-8)
    assert float(res.max()) < 1e-6
    xk2, scale2, res2 = solve_known_weight(y, gr, u, rnorm, 2 * lam, k)
    assert torch.allclose(xk2, x, atol=1e-8)  # the weight fixes only the scale
    assert torch.allclose(scale2, torch.full((3,), 2.0, dtype=F64), atol=1e-8)


def test_projected_gram_is_the_gram_of_dy_times_projector() -> None:
    g = torch.Generator().manual_seed(4)
    dy = torch.randn(2, 4, 9, generator=g, dtype=F64)
    gv = unit(torch.randn(2, 9, generator=g, dtype=F64))
    proj = torch.eye(9, dtype=F64) - gv.unsqueeze(-1) * gv.unsqueeze(-2)
    explicit = dy @ proj @ dy.transpose(1, 2)
    got = project_prior(dy @ dy.transpose(1, 2), (dy @ gv.unsqueeze(-1)).squeeze(-1))
    assert torch.allclose(got, explicit, atol=1e-12)


@pytest.mark.parametrize("k", [0, 2])
def test_combined_transforms_and_prior(k: int) -> None:
    lam = 0.4
    basis = _basis(6, 5, 7)
    x, ys, dys, gv, rnorm = _planted(3, 5, 6, 40, k, spread=0.4, seed=6, basis=basis,
                                     lam=lam)
    cross, u = _cross(dys), _jvp(dys, gv)
    s = solve_transformed(ys, cross, k, basis, prior=u, tol=1e-13)
    assert bool(s.converged.all()) and torch.allclose(s.x, x, atol=1e-8)
    assert float(s.residual.max()) < 1e-6
    assert torch.allclose(prior_weight(s.x, ys, u, rnorm, k),
                          torch.full((3,), lam, dtype=F64), atol=1e-8)
    for est in ESTIMATORS:  # ignoring the prior is wrong
        assert _angle(solve_transformed(ys, cross, k, basis, estimator=est).x, x) > 0.3
    known = solve_transformed(ys, cross, k, basis, prior=u, prior_norm=rnorm, weight=lam,
                              tol=1e-13)
    assert bool(known.converged.all()) and torch.allclose(known.x, x, atol=1e-8)
    assert torch.allclose(known.scale, torch.ones(3, dtype=F64), atol=1e-8)
    assert float(known.residual.max()) < 1e-6
    if k == 0:  # = Opt. (3) on the mean Jacobian projected against g
        xm, _ = solve_mean(unit(ys).mean(1), project_prior(mean_gram(cross, 5), u.mean(1)),
                           basis)
        assert torch.allclose(xm, x, atol=1e-8)
    with pytest.raises(ValueError, match="known prior weight"):
        solve_transformed(ys, cross, k, prior=u, weight=lam)


class _Net(nn.Module):
    """conv-tanh-conv, 4 output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


def _brute(fn, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """y and Dy of every sample by torch.autograd.functional.jacobian."""
    ys, dys = [], []
    for vi in v:
        jac = torch.autograd.functional.jacobian(lambda u: fn(u.unsqueeze(0))[0], vi)
        ys.append(fn(vi.unsqueeze(0))[0].detach())
        dys.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(ys), torch.stack(dys)


def test_quantities_match_brute_force_and_bounded_memory() -> None:
    torch.manual_seed(0)
    net = _Net().double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    response = Response(net, torch.sigmoid, "conv2", range(4), "mean")
    tr = T.Transform((T.Pad(1, "reflect"), T.Jitter(2), T.RandomScale((0.8, 1.2)),
                      T.RandomRotate((-15, 0, 15))))
    samples = tr.samples(3, seed=1)
    fns = responses_under(response, samples)
    v = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    for t, fn in zip(samples, fns, strict=True):  # N~_T = Agg o N o T o P
        direct = Response(net, lambda w, t=t: t(torch.sigmoid(w)), "conv2", range(4), "mean")
        assert torch.equal(fn(v), direct(v))

    def prior(w: torch.Tensor) -> torch.Tensor:  # L2 of the image about grey, per sample
        return (torch.sigmoid(w) - 0.5).square().flatten(1).sum(1)

    q = quantities(fns, v, prior=prior)
    assert q.evaluations == 3
    pairs = [_brute(fn, v) for fn in fns]
    ys = torch.stack([p[0] for p in pairs], 1)
    dys = torch.stack([p[1] for p in pairs], 1)
    assert torch.allclose(q.y, ys, atol=1e-12)
    assert torch.allclose(q.cross, _cross(dys), atol=1e-10)
    mean = dys.mean(1)
    assert torch.allclose(q.mean_gram, mean @ mean.transpose(1, 2), atol=1e-10)
    w = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(prior(w).sum(), w)
    grad = grad.flatten(1)
    assert torch.allclose(q.prior_norm, grad.norm(dim=1), atol=1e-12)
    assert torch.allclose(q.prior, _jvp(dys, unit(grad)), atol=1e-10)
    per_jac = 2 * 4 * v[0].numel() * 8
    tight = quantities(fns, v, prior=prior, max_bytes=2 * per_jac)  # hold = 1
    assert tight.evaluations == 6 and torch.allclose(tight.cross, q.cross, atol=1e-12)
    assert torch.allclose(tight.prior, q.prior, atol=1e-12)
    two = quantities(fns, v, max_bytes=3 * per_jac)  # hold = 2
    assert two.evaluations == 4 and torch.allclose(two.cross, q.cross, atol=1e-12)
    mean_only = quantities(fns, v, cross=False)
    assert mean_only.cross is None and mean_only.evaluations == 3
    assert torch.allclose(mean_only.mean_gram, q.mean_gram, atol=1e-10)
    s = solve_transformed(q.y, q.cross, 2, prior=q.prior)
    assert s.x.shape == (2, 4) and torch.isfinite(s.residual).all()

"""The tangent condition at a kink (ifv.math.kink, docs/kinks.md) against known answers."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ifv.math.inverse import solve, solve_log, unit, z_k
from ifv.math.jacobian import response_and_gram
from ifv.math.kink import (
    Kinks,
    directions,
    mixings,
    project_kinks,
    solve_at_kinks,
    tangent_gram,
)
from ifv.math.metrics import angular_distance
from ifv.math.objective import Response, significance
from ifv.math.param import make_param


def _planted(n_f: int = 5, n_p: int = 40, m: int = 7, seed: int = 0
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Dy (n_f, n_p), an orthonormal basis Q (n_p, m) of N, and second differences Delta
    (K n_f, n_p) whose rows span N."""
    g = torch.Generator().manual_seed(seed)
    dy = torch.randn(n_f, n_p, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(n_p, m, generator=g, dtype=torch.float64))
    delta = torch.randn(3 * n_f, m, generator=g, dtype=torch.float64) @ q.T
    return dy, q, delta


def test_projection_equals_the_explicit_tangent_gram() -> None:
    dy, q, delta = _planted()
    g_t, dim = project_kinks((dy @ dy.T)[None], (dy @ delta.T)[None], (delta @ delta.T)[None],
                             rho=1e-8)
    p_t = torch.eye(dy.shape[1], dtype=torch.float64) - q @ q.T
    assert int(dim) == q.shape[1]
    torch.testing.assert_close(g_t[0], dy @ p_t @ dy.T, rtol=1e-9, atol=1e-10)


def test_no_second_differences_leave_the_gram_as_it_is() -> None:
    dy, _, delta = _planted()
    g = (dy @ dy.T)[None]
    g_t, dim = project_kinks(g, (dy @ delta.T)[None] * 0, (delta @ delta.T)[None] * 0, rho=1e-3)
    assert int(dim) == 0 and torch.equal(g_t, g)
    # directions below rho ||Dy|| do not count: a tiny Delta leaves G as well
    tiny = 1e-6 * delta
    g_t, dim = project_kinks(g, (dy @ tiny.T)[None], (tiny @ tiny.T)[None], rho=1e-3)
    assert int(dim) == 0 and torch.equal(g_t, g)


class KinkToy(nn.Module):
    """y(v) = y0 + A v - sum_i (c_i relu(b_i^T v) + d_i relu(-b_i^T v)) - w ||v||^2, whose
    S_x has a strict local maximum at v = 0, on all m kinks b_i^T v = 0 at once, by
    construction: with h = Z_k(y0) x, h^T A = mu^T B lies in span{b_i} (the Clarke
    condition, weights fixed by h^T c_i = |mu_i| + 1, h^T d_i = |mu_i| + 2), and w's
    component along h makes the tangent directions descend."""

    def __init__(self, x: Tensor, k: float, n_p: int = 24, m: int = 4, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n_f = x.shape[0]
        self.y0 = torch.rand(n_f, generator=g, dtype=torch.float64) + 0.5
        h = (z_k(self.y0[None], k)[0] @ x).double()
        hn = h / h.dot(h)
        b, _ = torch.linalg.qr(torch.randn(n_p, m, generator=g, dtype=torch.float64))
        self.b = b.T  # (m, n_p), orthonormal rows
        a0 = torch.randn(n_f, n_p, generator=g, dtype=torch.float64)
        p_t = torch.eye(n_p, dtype=torch.float64) - self.b.T @ self.b
        self.a = a0 - torch.outer(h, h @ a0 @ p_t) / h.dot(h)
        mu = self.b @ (self.a.T @ h)

        def slopes(extra: float) -> Tensor:
            rnd = torch.randn(m, n_f, generator=g, dtype=torch.float64)
            rnd = rnd - torch.outer(rnd @ h, hn)  # no component along h ...
            return rnd + torch.outer(mu.abs() + extra, hn)  # ... but |mu_i| + extra

        self.c, self.d = slopes(1.0), slopes(2.0)
        self.w = 50.0 * hn + 0.1 * torch.randn(n_f, generator=g, dtype=torch.float64)

    def forward(self, v: Tensor) -> Tensor:
        t = v @ self.b.T  # (B, m)
        return (self.y0 + v @ self.a.T - torch.relu(t) @ self.c - torch.relu(-t) @ self.d
                - (v * v).sum(-1, keepdim=True) * self.w)


@pytest.mark.parametrize("rows", [64, 3])  # every row, or 3 random combinations of 6
def test_a_maximum_on_kinks_is_recovered_exactly_where_opt3_fails(rows: int) -> None:
    k = 2.0
    x = unit(torch.tensor([0.7, 0.1, 0.5, 0.2, 0.3, 0.4], dtype=torch.float64))
    toy = KinkToy(x, k)
    v0 = torch.zeros(1, 24, dtype=torch.float64)
    f0 = significance(x[None], toy(v0), k)
    probe = 1e-3 * torch.randn(200, 24, generator=torch.Generator().manual_seed(5),
                               dtype=torch.float64)
    assert bool((significance(x.expand(200, -1), toy(probe), k) < f0).all())  # a maximum
    grad = torch.autograd.functional.jacobian(lambda v: significance(x[None], toy(v), k), v0)
    assert float(grad.norm()) > 0.1  # ... where the gradient does not vanish

    y, g = response_and_gram(toy, v0)
    plain, _ = solve(y, g, k)
    assert float(angular_distance(plain, x[None])) > 5.0

    y, g_all, g_t, dim = tangent_gram(toy, v0, Kinks(samples=4, sigma=1e-3, rho=1e-6,
                                                     rows=rows))
    assert torch.equal(g_all, g) and int(dim) == 4  # the four switch normals
    pred, residual = solve(y, g_t, k)
    assert float(angular_distance(pred, x[None])) < 1e-5
    assert float(residual) < 1e-14 * float(torch.linalg.eigvalsh(g_t[0])[-1])
    # the estimator ifv runs where it finds kinks: the same exact answer
    pred = solve_at_kinks(y, g_t, k, None, dim)
    assert float(angular_distance(pred, x[None])) < 1e-5


def test_on_a_smooth_network_it_is_opt3() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(),
                        nn.Conv2d(6, 5, 3, padding=1)).double().eval()
    response = Response(net, make_param("rgb", 8, 8), "2", list(range(5)), "mean")
    v = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    y, g = response_and_gram(response, v)
    y2, g2, g_t, dim = tangent_gram(response, v, Kinks(samples=6, sigma=1e-4, rho=1e-3))
    assert torch.equal(y, y2) and torch.equal(g, g2)
    assert dim.tolist() == [0, 0, 0] and torch.equal(g_t, g)
    torch.testing.assert_close(solve(y2, g_t, 2.0)[0], solve(y, g, 2.0)[0], rtol=0, atol=0)
    torch.testing.assert_close(solve_at_kinks(y2, g_t, 2.0, None, dim), solve(y, g, 2.0)[0],
                               rtol=0, atol=0)


def _ratio(x: Tensor, y: Tensor, g: Tensor, k: float) -> Tensor:
    """||grad log f_x||^2 / (k+1)^2 = x^T Z_k G Z_k x / (x^T y)^2. x: (N, n_f)."""
    z = z_k(y[None], k)[0]
    a = z @ g @ z
    return ((x @ a) * x).sum(-1) / (x @ y) ** 2


@pytest.mark.parametrize("k", [0.0, 2.0])
def test_least_relative_stationarity_is_the_closed_form_minimum(k: float) -> None:
    """solve_log attains the minimum 1 / (y^T Z^-1 G^-1 Z^-1 y) of the ratio, which no
    other of 2000 random objectives beats, in R^{n_f} and in a critical space."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    g = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64)
    y = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    x = solve_log(y[None], g[None], k)[0]
    assert float(x @ y) > 0 and abs(float(x.norm()) - 1) < 1e-12
    zi = torch.linalg.inv(z_k(y[None], k)[0])
    best = 1 / (y @ zi @ torch.linalg.inv(g) @ zi @ y)
    torch.testing.assert_close(_ratio(x[None], y, g, k)[0], best, rtol=1e-10, atol=0)
    others = torch.randn(2000, 6, generator=gen, dtype=torch.float64)
    assert bool((_ratio(others, y, g, k) >= best * (1 - 1e-9)).all())
    basis, _ = torch.linalg.qr(torch.randn(6, 3, generator=gen, dtype=torch.float64))
    xc = solve_log(y[None], g[None], k, basis)[0]
    inside = torch.linalg.inv(z_k(y[None], k)[0]) @ basis  # x = Z_k^-1 C_M s (Supp. S1)
    s = torch.randn(2000, 3, generator=gen, dtype=torch.float64) @ inside.T
    assert bool((_ratio(s, y, g, k) >= _ratio(xc[None], y, g, k)[0] * (1 - 1e-9)).all())
    assert float((xc - inside @ torch.linalg.lstsq(inside, xc).solution).norm()) < 1e-10


def test_a_weak_feature_fools_opt3_not_the_relative_condition() -> None:
    """A planted problem: x is stationary up to a small residual, and a feature that hardly
    responds (y_j = 1e-3, its Jacobian row 3e-3 of the others) has a smaller gradient still.
    Opt. (3) leans on that feature, a near-trivial solution (Sec. 2.2); the least relative
    stationarity finds x; an exact null space with x^T y > 0 is taken exactly."""
    gen = torch.Generator().manual_seed(4)
    n_f, n_p, k = 6, 30, 2.0
    y = torch.tensor([1.0, 0.8, 1e-3, 1.2, 0.6, 0.5], dtype=torch.float64)
    w = torch.tensor([0.5, 0.4, 0.0, 0.6, 0.3, 0.2], dtype=torch.float64)
    x = unit(torch.linalg.solve(z_k(y[None], k)[0], w))  # x^T Z_k Dy = w^T Dy
    dy = torch.randn(n_f, n_p, generator=gen, dtype=torch.float64)
    dy = dy - torch.outer(w, w @ dy) / (w @ w)  # w^T Dy = 0, kept as row 2 shrinks (w_2 = 0)
    dy[2] *= 3e-3
    noise = 1e-2 * torch.randn(n_f, n_p, generator=gen, dtype=torch.float64)
    noise[2] *= 3e-3  # FV short of the optimum; the weak feature stays weak
    noisy = dy + noise
    for d, exact in ((dy, True), (noisy, False)):
        g = (d @ d.T)[None]
        plain = solve(y[None], g, k)[0]
        rel = solve_log(y[None], g, k)[0]
        if not exact:  # Opt. (3) leans on the weak feature
            assert float(angular_distance(plain, x[None])) > 20 and abs(float(plain[0, 2])) > 0.5
        assert float(angular_distance(rel, x[None])) < (1e-5 if exact else 3.0)


def test_directions_and_mixings_are_drawn_from_their_seed() -> None:
    a, b = directions((3, 4), 5, seed=7), directions((3, 4), 5, seed=7)
    assert a.shape == (5, 3, 4) and torch.equal(a, b)
    assert not torch.equal(a, directions((3, 4), 5, seed=8))
    assert mixings(6, 6, 5, seed=7) is None  # n_f <= rows: every row, no mixing
    m = mixings(6, 3, 5, seed=7)
    assert m.shape == (5, 3, 6) and torch.equal(m, mixings(6, 3, 5, seed=7))
    torch.testing.assert_close(m.norm(dim=-1), torch.ones(5, 3))

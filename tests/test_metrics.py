"""Tests for ifv.math.metrics (Sec. 3.4, 3.5, caption of Fig. 2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from ifv.math.inverse import full_space, solve, unit, z_k
from ifv.math.metrics import (
    alpha,
    alpha_coefficients,
    angular_distance,
    critical_fraction,
    high_frequency_share,
    projected_angle,
    random_objective,
    relative_residual,
    ssim,
)

D = torch.float64


def t(*rows: list[float]) -> Tensor:
    return torch.tensor(rows, dtype=D)


# ---------------------------------------------------------------- angular distance


def test_angular_distance_hand_cases() -> None:
    s = 1.0 / math.sqrt(2.0)
    a = t([1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0])
    b = t([0.0, 1.0], [-1.0, 0.0], [s, s], [1.0, 0.0], [-s, s])
    ang = angular_distance(a, b)
    assert ang.dtype == D and ang.shape == (5,)
    torch.testing.assert_close(ang, t([90.0, 0.0, 45.0, 0.0, 45.0])[0], atol=1e-10, rtol=0)


def test_angular_distance_sign_free_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 7, generator=g, dtype=D)
    b = torch.randn(16, 7, generator=g, dtype=D)
    ang = angular_distance(a, b)
    ref = torch.rad2deg(torch.acos((unit(a) * unit(b)).sum(-1).abs()))
    torch.testing.assert_close(ang, ref, atol=1e-9, rtol=0)
    torch.testing.assert_close(angular_distance(3.0 * a, 0.01 * b), ang)
    torch.testing.assert_close(angular_distance(a, -b), ang)
    torch.testing.assert_close(angular_distance(b, a), ang)
    assert bool(((ang >= 0) & (ang <= 90)).all())


def test_angular_distance_tiny_angle() -> None:
    eps = 1e-6
    a = t([1.0, 0.0, 0.0])
    b = t([math.cos(eps), math.sin(eps), 0.0])
    ang = angular_distance(a, b)
    assert ang.item() == pytest.approx(math.degrees(eps), rel=1e-6)  # 5.73e-5 degrees
    # and nearly opposite vectors are a tiny sign-free angle, too
    assert angular_distance(a, -b).item() == pytest.approx(math.degrees(eps), rel=1e-6)


def test_angular_distance_float32_input_and_zero_vector() -> None:
    a = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    ang = angular_distance(a, b)
    assert ang.dtype == D
    assert ang[0].item() == pytest.approx(45.0)
    assert math.isnan(ang[1].item())


# ---------------------------------------------------------------- critical space


def test_projected_angle_identity_basis_equals_angular_distance() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 6, generator=g, dtype=D)
    xp = torch.randn(8, 6, generator=g, dtype=D)
    y = torch.rand(8, 6, generator=g, dtype=D)
    for k in (0.0, 2.0):
        got = projected_angle(x, xp, y, k, full_space(6))
        torch.testing.assert_close(got, angular_distance(x, xp), atol=1e-9, rtol=0)


def test_projected_angle_ignores_components_outside_critical_space() -> None:
    basis = torch.eye(4, dtype=D)[:, :2]  # C = span(e_1, e_2)
    y = t([1.0, 2.0, 3.0, 4.0])
    x = t([0.6, 0.8, 0.0, 0.0])
    xp = t([0.6, 0.8, 5.0, -3.0])
    assert projected_angle(x, xp, y, 0.0, basis).item() == pytest.approx(0.0, abs=1e-9)
    # ...whereas the unprojected angle is large
    assert angular_distance(x, xp).item() > 60.0


def test_projected_angle_with_cosine_term_ignores_z_c_perp_shifts() -> None:
    # (Z_k(y)^{-1} C)^perp = Z_k(y) C^perp since Z_k is symmetric
    g = torch.Generator().manual_seed(2)
    n_f, k = 5, 2.0
    q, _ = torch.linalg.qr(torch.randn(n_f, n_f, generator=g, dtype=D))
    basis, perp = q[:, :3], q[:, 3:]
    y = torch.rand(4, n_f, generator=g, dtype=D)
    x = torch.rand(4, n_f, generator=g, dtype=D)
    xp = torch.rand(4, n_f, generator=g, dtype=D)
    shift = (z_k(y, k) @ perp @ torch.randn(4, 2, 1, generator=g, dtype=D)).squeeze(-1)
    a0 = projected_angle(x, xp, y, k, basis)
    a1 = projected_angle(x, xp + 3.0 * shift, y, k, basis)
    torch.testing.assert_close(a0, a1, atol=1e-8, rtol=0)
    assert not torch.allclose(angular_distance(xp, xp + 3.0 * shift), torch.zeros(4, dtype=D))


def test_critical_fraction_hand_case() -> None:
    basis = torch.eye(2, dtype=D)[:, :1]  # C = span(e_1)
    x = t([0.6, 0.8])
    y = t([1.0, 1.0])
    got = critical_fraction(x, y, 0.0, basis)
    assert got.item() == pytest.approx(3.0 / 7.0, abs=1e-12)


def test_critical_fraction_full_space_and_inside() -> None:
    g = torch.Generator().manual_seed(3)
    n_f, k = 6, 2.0
    x = torch.rand(5, n_f, generator=g, dtype=D)
    y = torch.rand(5, n_f, generator=g, dtype=D)
    torch.testing.assert_close(
        critical_fraction(x, y, k, full_space(n_f)), torch.ones(5, dtype=D), atol=1e-12, rtol=0
    )
    # x = Z_k^{-1} c with c in C lies in the critical space: fraction 1
    q, _ = torch.linalg.qr(torch.randn(n_f, n_f, generator=g, dtype=D))
    basis = q[:, :4]
    c = basis @ torch.randn(4, 5, generator=g, dtype=D)
    x_in = torch.linalg.solve(z_k(y, k), c.T.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(
        critical_fraction(x_in, y, k, basis), torch.ones(5, dtype=D), atol=1e-10, rtol=0
    )
    # x in the orthogonal complement: fraction 0
    x_out = (z_k(y, k) @ q[:, 4:] @ torch.randn(5, 2, 1, generator=g, dtype=D)).squeeze(-1)
    torch.testing.assert_close(
        critical_fraction(x_out, y, k, basis), torch.zeros(5, dtype=D), atol=1e-10, rtol=0
    )


# ---------------------------------------------------------------- alpha_j and residual


def _planted(b: int, n_f: int, n_p: int, k: float, seed: int) -> tuple[Tensor, ...]:
    """x in coker Z_k(y) Dy by construction: Dy = (I - zx zx^T) A with zx = unit(Z_k x)."""
    g = torch.Generator().manual_seed(seed)
    x = unit(torch.rand(b, n_f, generator=g, dtype=D))
    y = torch.rand(b, n_f, generator=g, dtype=D) + 0.1
    a = torch.randn(b, n_f, n_p, generator=g, dtype=D)
    zx = unit((z_k(y, k) @ x.unsqueeze(-1)).squeeze(-1))
    proj = torch.eye(n_f, dtype=D) - zx.unsqueeze(-1) * zx.unsqueeze(-2)
    dy = proj @ a
    gram = dy @ dy.transpose(-1, -2)
    return x, y, gram


@pytest.mark.parametrize("k", [0.0, 2.0])
def test_alpha_planted_optimum(k: float) -> None:
    x, y, gram = _planted(6, 8, 20, k, seed=4)
    c2 = alpha_coefficients(x, y, gram, k)
    assert c2.shape == (6, 8)
    torch.testing.assert_close(c2.sum(-1), torch.ones(6, dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(c2[:, 0], torch.ones(6, dtype=D), atol=1e-10, rtol=0)
    al = alpha(x, y, gram, k)
    assert al.shape == (8,)
    assert al[0].item() == pytest.approx(1.0, abs=1e-10)
    res = relative_residual(x, y, gram, k)
    torch.testing.assert_close(res, torch.zeros(6, dtype=D), atol=1e-7, rtol=0)
    # Grad-IFV recovers the planted x, and with C = R^{n_f} that is what alpha_1 measures
    x_star, _ = solve(y, gram, k)
    assert float(angular_distance(x, x_star).max()) < 1e-5


def test_alpha_generic_rows_and_first_coefficient() -> None:
    g = torch.Generator().manual_seed(5)
    b, n_f, k = 7, 6, 2.0
    x = torch.rand(b, n_f, generator=g, dtype=D) * 3.0  # not unit: normalized inside
    y = torch.rand(b, n_f, generator=g, dtype=D)
    dy = torch.randn(b, n_f, 12, generator=g, dtype=D)
    gram = dy @ dy.transpose(-1, -2)
    c2 = alpha_coefficients(x, y, gram, k)
    torch.testing.assert_close(c2.sum(-1), torch.ones(b, dtype=D), atol=1e-12, rtol=0)
    assert bool((c2 >= 0).all())
    assert float(c2[:, 0].max()) < 0.999  # not planted: alpha_1 < 1
    # Sec. 3.5: c_{i,1} = x_i^T x_i^* (x^* = smallest left-singular vector of Z_k Dy)
    x_star, _ = solve(y, gram, k)
    torch.testing.assert_close(c2[:, 0], ((unit(x) * x_star).sum(-1)) ** 2, atol=1e-10, rtol=0)
    torch.testing.assert_close(alpha(x, y, gram, k), c2.mean(0))


def test_relative_residual_positive_off_optimum_and_bounded() -> None:
    x, y, gram = _planted(6, 8, 20, 2.0, seed=6)
    g = torch.Generator().manual_seed(7)
    other = torch.rand(6, 8, generator=g, dtype=D)
    res = relative_residual(other, y, gram, 2.0)
    assert bool((res > 1e-3).all()) and bool((res <= 1.0 + 1e-12).all())
    # the eigenvector of the largest eigenvalue has relative residual exactly 1
    m = z_k(y, 2.0) @ gram @ z_k(y, 2.0)
    top = torch.linalg.eigh(m)[1][..., -1]
    torch.testing.assert_close(relative_residual(top, y, gram, 2.0), torch.ones(6, dtype=D))
    # scale-invariant in x and in Dy
    torch.testing.assert_close(relative_residual(5.0 * other, y, 9.0 * gram, 2.0), res)


# ---------------------------------------------------------------- SSIM and the baseline


@pytest.mark.parametrize("c,h", [(3, 16), (1, 16), (4, 12), (3, 5), (2, 4)])
def test_ssim_identity_and_difference(c: int, h: int) -> None:
    g = torch.Generator().manual_seed(8)
    a = torch.rand(3, c, h, h, generator=g)
    b = (a + 0.3 * torch.randn(3, c, h, h, generator=g)).clamp(0, 1)
    same = ssim(a, a)
    assert same.dtype == D and same.shape == (3,)
    torch.testing.assert_close(same, torch.ones(3, dtype=D), atol=1e-9, rtol=0)
    diff = ssim(a, b)
    assert bool((diff < 0.99).all())
    # symmetric and a uniform image is far from a random one
    torch.testing.assert_close(ssim(b, a), diff)
    assert bool((ssim(a, torch.full_like(a, 0.5)) < 0.2).all())


def test_ssim_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 2, 2), torch.rand(1, 3, 2, 2))


@pytest.mark.parametrize("w", [12, 13])
def test_high_frequency_share_against_the_full_spectrum(w: int) -> None:
    """The one-sided rfft2 sum with conjugate pairs counted twice equals the share computed
    on the full two-sided fft2 spectrum (odd and even widths)."""
    g = torch.Generator().manual_seed(10)
    im = torch.rand(4, 3, 10, w, generator=g, dtype=D)
    c = im - im.mean(dim=(-2, -1), keepdim=True)
    energy = torch.fft.fft2(c).abs() ** 2
    fy = torch.fft.fftfreq(10, dtype=D)[:, None]
    fx = torch.fft.fftfreq(w, dtype=D)[None, :]
    high = torch.sqrt(fy**2 + fx**2) > 0.25
    expected = (energy * high).sum(dim=(-3, -2, -1)) / energy.sum(dim=(-3, -2, -1))
    share = high_frequency_share(im)
    assert share.shape == (4,) and share.dtype == D
    torch.testing.assert_close(share, expected)
    # white noise: about the share of bins beyond the cutoff, 1 - pi / 16
    assert bool(((share > 0.7) & (share < 0.95)).all())


def test_high_frequency_share_hand_cases() -> None:
    yy, xx = torch.meshgrid(torch.arange(16, dtype=D), torch.arange(16, dtype=D),
                            indexing="ij")
    slow = 0.5 + 0.4 * torch.cos(2 * math.pi * (xx + 2 * yy) / 16)  # f = sqrt(5)/16 < 0.25
    checker = (xx + yy) % 2  # the Nyquist corner, f = sqrt(2)/2
    fast = 0.5 + 0.4 * torch.cos(2 * math.pi * 5 * xx / 16)  # f = 5/16 > 0.25
    images = torch.stack([slow, checker, fast, torch.full_like(xx, 0.3)])
    share = high_frequency_share(images.unsqueeze(1).expand(-1, 3, -1, -1))
    torch.testing.assert_close(share, t(0.0, 1.0, 1.0, 0.0), atol=1e-12, rtol=0)
    # a mix: half the energy in each band
    mixed = high_frequency_share((slow + fast - 0.5).expand(1, 1, -1, -1))
    torch.testing.assert_close(mixed, t(0.5), atol=1e-12, rtol=0)
    # the cutoff is a strict threshold on the frequency
    assert float(high_frequency_share(fast.expand(1, 1, -1, -1), cutoff=5 / 16)) < 1e-12
    with pytest.raises(ValueError):
        high_frequency_share(slow)


def test_random_objective() -> None:
    x = random_objective(500, 12, torch.Generator().manual_seed(9))
    assert x.shape == (500, 12) and x.dtype == D
    assert bool((x >= 0).all())
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(500, dtype=D))
    again = random_objective(500, 12, torch.Generator().manual_seed(9))
    torch.testing.assert_close(x, again)
    # not degenerate: directions differ and the mean is near the positive diagonal
    assert float(angular_distance(x[:-1], x[1:]).mean()) > 10.0
    assert float(angular_distance(x.mean(0, keepdim=True), torch.ones(1, 12))) < 5.0

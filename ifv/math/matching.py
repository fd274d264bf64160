"""The algebra of network comparison (Sec. 4): matchings, weight shares, the correlation
baseline of Li et al. 2015, and what Grad-IFV must recover on a planted copy.

A planted B computes A's function with A's tapped channels permuted (P) and positively
rescaled (D): with a positively homogeneous aggregation, y_B = P D y_A and Dy_B = P D Dy_A,
so at an exact optimum of f_{x_A} on A the one direction with x^T Z_k(y_B) Dy_B = 0 is

    x_B ~ Z_k(y_B)^{-1} P D^{-1} Z_k(y_A) x_A                              (*)

(``expected_objective``). For k = 0 a canonical e_i maps to e_pi(i); for k = 2 a rescaling
mixes in y (S_x normalizes by ||y||), and (*) still holds. w = Z_k(y) x transforms as
w_B ~ P D^{-1} w_A, from which ``fit_scales`` recovers D (docs/compare.md).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ifv.math.inverse import unit, z_k, z_k_inv


def hungarian(weights: Tensor) -> Tensor:
    """A one-to-one matching of rows to columns maximizing the summed weight.

    weights: (R, n) -> (R,) long, the matched column of each row; -1 for rows left over
    (R > n). Non-finite weights count as the lowest."""
    w = weights.detach().double().cpu().numpy()
    w = np.where(np.isfinite(w), w, np.nanmin(np.where(np.isfinite(w), w, np.inf)) - 1.0
                 if np.isfinite(w).any() else 0.0)
    rows, cols = linear_sum_assignment(w, maximize=True)
    out = torch.full((w.shape[0],), -1, dtype=torch.long)
    out[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return out


def shares(x_b: Tensor, match: Tensor) -> Tensor:
    """Weight share x_B(i)_match(i)^2 / ||x_B(i)||^2 of each row's matched feature, the
    pair's confidence in [0, 1] (NaN where unmatched). x_b: (R, n), match: (R,) -> (R,)."""
    x = unit(x_b.double())
    j = match.clamp_min(0).to(x.device)
    s = x.gather(1, j[:, None]).squeeze(1) ** 2
    return torch.where(match.to(x.device) >= 0, s, torch.full_like(s, math.nan))


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of every channel of ``a`` with every channel of ``b`` over images
    and positions (Li et al. 2015): a: (N, C_a, H, W), b: (N, C_b, H', W') -> (C_a, C_b)
    float64. Maps of different size are average-pooled to the smaller one; a channel that
    does not vary correlates 0 with everything."""
    a, b = a.double(), b.double()
    if a.dim() == 4 and a.shape[-2:] != b.shape[-2:]:
        size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
        a = torch.nn.functional.adaptive_avg_pool2d(a, size)
        b = torch.nn.functional.adaptive_avg_pool2d(b, size)

    def standard(t: Tensor) -> Tensor:
        t = t.transpose(0, 1).reshape(t.shape[1], -1)  # (C, N H W)
        t = t - t.mean(1, keepdim=True)
        norm = t.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, t / norm.clamp_min(1e-300), torch.zeros_like(t))

    return standard(a) @ standard(b.to(a.device)).T


def agreement(m1: Tensor, m2: Tensor, rows: Tensor | None = None) -> float:
    """Share of rows (all, or those where ``rows`` is True) that two matchings (R,) assign to
    the same column; NaN where there are none."""
    keep = (m1 >= 0) & (m2 >= 0)
    if rows is not None:
        keep &= rows.to(keep.device)
    return float((m1[keep] == m2[keep]).double().mean()) if bool(keep.any()) else math.nan


def expected_objective(x_a: Tensor, y_a: Tensor, y_b: Tensor, to_a: Tensor, d_a: Tensor,
                       k: float) -> Tensor:
    """x_B of (*) for a planted y_B = P D y_A: Z_k(y_B)^{-1} P D^{-1} Z_k(y_A) x_A, unit, with
    x_B^T y_B >= 0. x_a, y_a: (R, n); y_b: (R, n); to_a: (n,) long, the A feature of each
    B feature (P); d_a: (n,) the scale of each A feature."""
    u = (z_k(y_a, k) @ x_a.double().unsqueeze(-1)).squeeze(-1) / d_a.double().to(y_a.device)
    x = unit((z_k_inv(y_b, k) @ u[:, to_a.to(u.device)].unsqueeze(-1)).squeeze(-1))
    return x * torch.where((x * y_b.double()).sum(-1) < 0, -1.0, 1.0).unsqueeze(-1)


def fit_scales(w_a: Tensor, w_b: Tensor, match: Tensor) -> tuple[Tensor, float]:
    """The diagonal D with w_B ~ P D^{-1} w_A (P: ``match``) by homogeneous least squares.

    Unknowns d_i and a factor c_r per objective: d_i w_B[r, match_i] = c_r w_A[r, i] for
    every objective r and matched A feature i; the solution is the right singular vector of
    the smallest singular value. w_a: (R, n_a), w_b: (R, n_b), match: (n_a,) (-1: left out).
    Returns d (n_a,) float64 with geometric mean 1 over the matched features (NaN for the
    others) and the fit's relative residual sigma_min / sigma_max."""
    idx = (match >= 0).nonzero().squeeze(1)
    n, r = len(idx), w_a.shape[0]
    out = torch.full((w_a.shape[1],), math.nan, dtype=torch.float64)
    if n == 0 or r == 0:
        return out, math.nan
    wa = w_a.double().cpu()[:, idx]
    wb = w_b.double().cpu()[:, match[idx]]
    a = torch.zeros(r, n, n + r, dtype=torch.float64)
    a[:, torch.arange(n), torch.arange(n)] = wb
    a[torch.arange(r)[:, None], torch.arange(n)[None, :], n + torch.arange(r)[:, None]] = -wa
    _, s, vh = torch.linalg.svd(a.reshape(r * n, n + r), full_matrices=False)
    d = vh[-1, :n]
    d = d * torch.sign(d.sum())
    out[idx] = d / torch.exp(torch.log(d.abs().clamp_min(1e-300)).mean())
    return out, float(s[-1] / s[0])


def geometric_unit(d: Tensor) -> Tensor:
    """d / geometric mean(d) over its finite entries."""
    ok = torch.isfinite(d)
    return d / torch.exp(torch.log(d[ok].double()).mean())

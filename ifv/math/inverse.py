"""Grad-IFV: the closed-form solution of Opt. (3) (Sec. 2.1, Supp. S1).

Everything here is float64 algebra on n_f x n_f matrices. The network enters only through
the feature response ``y`` and the Gram matrix ``G = Dy Dy^T`` (see ``ifv.math.jacobian``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def unit(y: Tensor) -> Tensor:
    """y / ||y|| along the last axis. y: (..., n_f)."""
    return y / y.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)


def z_k(y: Tensor, k: float) -> Tensor:
    """Z_k(y) = Id - k/(k+1) ybar ybar^T (Sec. 2.1). y: (B, n_f) -> (B, n_f, n_f), float64."""
    yb = unit(y.double())
    eye = torch.eye(yb.shape[-1], dtype=torch.float64, device=yb.device)
    return eye - (k / (k + 1.0)) * yb.unsqueeze(-1) * yb.unsqueeze(-2)


def z_k_inv(y: Tensor, k: float) -> Tensor:
    """Z_k(y)^{-1} = Id + k ybar ybar^T (Sherman-Morrison, S1). (B, n_f) -> (B, n_f, n_f)."""
    yb = unit(y.double())
    eye = torch.eye(yb.shape[-1], dtype=torch.float64, device=yb.device)
    return eye + float(k) * yb.unsqueeze(-1) * yb.unsqueeze(-2)


def symmetric(m: Tensor) -> Tensor:
    """(m + m^T) / 2 over the last two axes: removes rounding asymmetry before eigh.
    m: (..., n, n)."""
    return 0.5 * (m + m.transpose(-1, -2))


def full_space(n_f: int, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal basis C_M of the critical space C = R^{n_f}: (n_f, n_f)."""
    return torch.eye(n_f, dtype=torch.float64, device=device)


def substitution(y: Tensor, k: float, basis: Tensor) -> Tensor:
    """Orthonormal U with Im U = Im Z_k(y)^{-1} C_M, so that x = U sigma (Supp. S1).

    y: (B, n_f); basis C_M: (n_f, d) with orthonormal columns -> U: (B, n_f, d).
    """
    a = z_k_inv(y, k) @ basis.double().to(y.device)
    u, _, _ = torch.linalg.svd(a, full_matrices=False)
    return u


def reduced_gram(y: Tensor, gram: Tensor, k: float) -> Tensor:
    """Z_k G Z_k = (Z_k Dy)(Z_k Dy)^T, symmetric. y: (B, n_f), gram: (B, n_f, n_f) ->
    (B, n_f, n_f), float64."""
    z = z_k(y, k)
    return symmetric(z @ gram.double() @ z)


def reduced_spectrum(y: Tensor, gram: Tensor, k: float,
                     basis: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """U and the eigen-decomposition of M M^T = U^T Z_k G Z_k U, M = U^T Z_k Dy (Supp. S1).

    y: (B, n_f); gram: (B, n_f, n_f); basis C_M: (n_f, d), default R^{n_f}. Returns
    U: (B, n_f, d), eigenvalues (B, d) ascending (squared singular values of M) and
    eigenvectors (B, d, d) as columns.
    """
    y = y.double()
    if basis is None:
        basis = full_space(y.shape[-1], y.device)
    u = substitution(y, k, basis)
    evals, evecs = torch.linalg.eigh(symmetric(u.transpose(-1, -2) @ reduced_gram(y, gram, k) @ u))
    return u, evals, evecs


def solve(y: Tensor, gram: Tensor, k: float, basis: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Predicted objectives x* of Opt. (3) for a batch of realizations.

    x* = U sigma*, sigma* the eigenvector of the smallest eigenvalue of
    M M^T = U^T Z_k G Z_k U (Sec. 2.1). The sign is fixed so that x*^T y >= 0, the side on
    which S_x is maximized.

    y: (B, n_f); gram G = Dy Dy^T: (B, n_f, n_f); basis C_M: (n_f, d), default R^{n_f}.
    Returns x*: (B, n_f) unit vectors and the smallest eigenvalue (B,) (= residual^2).
    """
    y = y.double()
    u, evals, evecs = reduced_spectrum(y, gram, k, basis)
    x = (u @ evecs[..., :1]).squeeze(-1)
    x = unit(x)
    sign = torch.where((x * y).sum(-1) < 0, -1.0, 1.0).to(x)
    return x * sign.unsqueeze(-1), evals[..., 0].clamp_min(0.0)


def solve_log(y: Tensor, gram: Tensor, k: float, basis: Tensor | None = None,
              eps: float = 1e-12) -> Tensor:
    """The objectives of least relative stationarity, argmin ||grad log f_x|| over x.

    For x^T y > 0, grad_v log f_x = (k+1) x^T Z_k(y) Dy / (x^T y) (Sec. 2.1's gradient
    divided by f_x), so x* = U sigma* with sigma* = argmin sigma^T B sigma / (sigma^T c)^2,
    B = U^T Z_k G Z_k U and c = U^T y: sigma* proportional to B^{-1} c, with B's eigenvalues
    floored at ``eps`` lambda_max (an exact null space of B then takes over, as the exact
    answer of Opt. (3) would). Unlike Opt. (3) it does not favour objectives on features that
    hardly respond (x^T y near 0, the trivial solutions of Sec. 2.2); where x^T Z_k Dy = 0
    holds exactly for an x with x^T y > 0, both give that x (docs/kinks.md).

    y: (B, n_f); gram: (B, n_f, n_f); basis C_M: (n_f, d), default R^{n_f} -> x*: (B, n_f)
    unit vectors with x*^T y > 0.
    """
    y = y.double()
    u, evals, evecs = reduced_spectrum(y, gram, k, basis)
    floor = eps * evals[..., -1:].clamp_min(torch.finfo(torch.float64).tiny)
    c = (evecs.transpose(-1, -2) @ u.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)
    sigma = (evecs @ (c / torch.maximum(evals, floor)).unsqueeze(-1)).squeeze(-1)
    return unit((u @ sigma.unsqueeze(-1)).squeeze(-1))

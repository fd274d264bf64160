"""Evaluation metrics of Sec. 3: angular distance, critical-space projections, the alpha_j
decomposition, the relative residual, SSIM, the high-frequency share of an image (how smooth
a realization is, Fig. 4) and the random-objective baseline.

All n_f x n_f algebra is float64 and reuses ``ifv.math.inverse`` (Z_k, the substitution U with
Im U = Im Z_k(y)^{-1} C_M, and the reduced Gram matrix Z_k G Z_k).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ifv.math.inverse import reduced_gram, reduced_spectrum, substitution, unit


def angular_distance(a: Tensor, b: Tensor) -> Tensor:
    """Sign-free angle in degrees, 180/pi * min(acos(a^T b), acos(-a^T b)) of the normalized
    vectors (Sec. 3.4).

    Computed as 2 atan2(min(|a-b|, |a+b|), max(|a-b|, |a+b|)) on unit vectors, which is exact
    for tiny angles (no acos near 1). a, b: (..., n) -> (...) float64 in [0, 90]; NaN where
    a or b is the zero vector (the angle is undefined).
    """
    a = a.double()
    b = b.double().to(a.device)
    na = a.norm(dim=-1)
    nb = b.norm(dim=-1)
    ua = unit(a)
    ub = unit(b)
    d = (ua - ub).norm(dim=-1)
    s = (ua + ub).norm(dim=-1)
    ang = 2.0 * torch.atan2(torch.minimum(d, s), torch.maximum(d, s))
    ang = torch.rad2deg(ang).clamp(0.0, 90.0)
    return torch.where((na > 0) & (nb > 0), ang, torch.full_like(ang, math.nan))


def _project(x: Tensor, y: Tensor, k: float, basis: Tensor) -> Tensor:
    """Orthogonal projection U U^T x onto Z_k(y)^{-1} C (Supp. S1). x, y: (B, n_f) -> (B, n_f)."""
    u = substitution(y.double(), k, basis)
    x = x.double().to(u.device)
    return (u @ (u.transpose(-1, -2) @ x.unsqueeze(-1))).squeeze(-1)


def projected_angle(x: Tensor, x_pred: Tensor, y: Tensor, k: float, basis: Tensor) -> Tensor:
    """Angular distance of target and prediction after projecting both orthogonally onto
    Z_k(y)^{-1} C = Im U (Sec. 3.5); components in (Z_k(y)^{-1} C)^perp are ignored.

    x, x_pred, y: (B, n_f); basis C_M: (n_f, d) orthonormal columns -> (B,) degrees. With
    C = R^{n_f} (identity basis) this equals ``angular_distance(x, x_pred)``. NaN where a
    projection vanishes.
    """
    u = substitution(y.double(), k, basis)
    ut = u.transpose(-1, -2)
    # U has orthonormal columns, so angles between U^T x are angles between U U^T x.
    px = (ut @ x.double().to(u.device).unsqueeze(-1)).squeeze(-1)
    pp = (ut @ x_pred.double().to(u.device).unsqueeze(-1)).squeeze(-1)
    return angular_distance(px, pp)


def critical_fraction(x: Tensor, y: Tensor, k: float, basis: Tensor) -> Tensor:
    """Fraction ||v|| / (||v|| + ||w||) of x = v + w living in the critical space, with
    v in Z_k(y)^{-1} C and w in its orthogonal complement (caption of Fig. 2).

    x, y: (B, n_f); basis C_M: (n_f, d) -> (B,) in [0, 1]; 1 for C = R^{n_f}.
    """
    v = _project(x, y, k, basis)
    w = x.double().to(v.device) - v
    nv = v.norm(dim=-1)
    nw = w.norm(dim=-1)
    return nv / (nv + nw)


def alpha_coefficients(x: Tensor, y: Tensor, gram: Tensor, k: float) -> Tensor:
    """Squared coefficients c_{i,j}^2 of x_i in the left-singular vectors v_{i,j} of
    Z_k(y_i) Dy_i, ordered by ascending singular value (Sec. 3.5).

    The v_{i,j} are the eigenvectors of Z_k G Z_k (``inverse.reduced_gram``; eigh returns
    ascending eigenvalues = squared singular values). x is normalized first, so each row sums
    to 1. x, y: (B, n_f); gram G = Dy Dy^T: (B, n_f, n_f) -> (B, n_f), column j-1 is c_{i,j}^2.
    """
    m = reduced_gram(y.double(), gram, k)
    _, vecs = torch.linalg.eigh(m)
    xu = unit(x.double().to(m.device))
    c = (vecs.transpose(-1, -2) @ xu.unsqueeze(-1)).squeeze(-1)
    return c * c


def alpha(x: Tensor, y: Tensor, gram: Tensor, k: float) -> Tensor:
    """alpha_j = sum_i c_{i,j}^2 / n, the mean contribution of the j-th left-singular vectors
    to the target objectives (Sec. 3.5, Fig. 2 top, Fig. 3). Shapes as in
    ``alpha_coefficients`` -> (n_f,), ascending singular values; sums to 1.
    """
    return alpha_coefficients(x, y, gram, k).mean(dim=0)


def relative_residual(x: Tensor, y: Tensor, gram: Tensor, k: float) -> Tensor:
    """||x^T Z_k Dy|| / ||Z_k Dy||_2 = sqrt(x^T Z_k G Z_k x / lambda_max(Z_k G Z_k)) for unit x
    (Sec. 2.1: zero at an optimum of f_x). x is normalized first.

    Grad-IFV needs this well below sigma_min / sigma_max of Z_k Dy. x, y: (B, n_f);
    gram: (B, n_f, n_f) -> (B,) in [0, 1]; NaN where Z_k Dy = 0.
    """
    m = reduced_gram(y.double(), gram, k)
    lam_max = torch.linalg.eigvalsh(m)[..., -1]
    xu = unit(x.double().to(m.device))
    num = (xu.unsqueeze(-2) @ m @ xu.unsqueeze(-1)).reshape(lam_max.shape).clamp_min(0.0)
    return torch.sqrt(num / lam_max.clamp_min(0.0))


def next_residual(y: Tensor, gram: Tensor, k: float, basis: Tensor) -> Tensor:
    """The runner-up's relative residual sqrt(lambda_2(M M^T) / lambda_max(Z_k G Z_k)),
    M = U^T Z_k Dy (Supp. S1): x* is well determined where its residual lies far below it.
    y: (B, n_f); gram: (B, n_f, n_f); basis C_M: (n_f, d) -> (B,); NaN for d = 1."""
    _, evals, _ = reduced_spectrum(y, gram, k, basis)
    if evals.shape[-1] < 2:
        return torch.full(y.shape[:1], math.nan, dtype=torch.float64, device=y.device)
    lam_max = torch.linalg.eigvalsh(reduced_gram(y.double(), gram, k))[..., -1]
    return torch.sqrt(evals[..., 1].clamp_min(0.0) / lam_max)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM index (Wang et al., 2004) per sample between image batches in [0, 1] (Sec. 3.4),
    on the images' device, in float64.

    The definition of ``skimage.metrics.structural_similarity`` with data_range 1, its
    defaults (a uniform 7x7 window, sample covariances, K1 = 0.01, K2 = 0.03) and the mean
    over channels: the local statistics are taken over every window that lies inside the
    image (skimage filters the whole image and then crops the border the window reaches
    past, which leaves the same windows). a, b: (B, C, H, W), any C -> (B,) float64.
    Images under 7 px on a side use the largest odd window that fits (at least 3 px is
    required).
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) batches of equal shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    side = min(a.shape[-2:])
    if side < 3:
        raise ValueError(f"ssim needs images of at least 3x3 pixels, got {tuple(a.shape[-2:])}")
    win = 7 if side >= 7 else (side if side % 2 == 1 else side - 1)
    x, y = a.detach().double(), b.detach().to(a.device, torch.float64)

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, win, stride=1)

    c1, c2, cov_norm = 0.01 ** 2, 0.03 ** 2, win * win / (win * win - 1.0)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(-2, -1)).mean(dim=-1)


def high_frequency_share(images: Tensor, cutoff: float = 0.25) -> Tensor:
    """Share of an image's spectral energy above ``cutoff`` cycles per pixel (Fig. 4:
    P_ffte's realizations should have less of it than P_rgb's).

    Each channel's mean is removed, then the energy |rfft2|^2 (norm="ortho", with
    ``ifv.math.param.frequency_scale``'s frequencies) is summed over channels, the columns that
    stand for a conjugate pair counted twice (so that the total is the image's energy,
    Parseval); bins with sqrt(fy^2 + fx^2) > cutoff count as high. A uniform image has
    share 0.
    images: (B, C, H, W) -> (B,) float64 in [0, 1].
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    im = images.detach().to(torch.float64)
    energy = torch.fft.rfft2(im - im.mean(dim=(-2, -1), keepdim=True), norm="ortho").abs() ** 2
    fy = torch.fft.fftfreq(im.shape[-2], dtype=torch.float64, device=im.device)[:, None]
    fx = torch.fft.rfftfreq(im.shape[-1], dtype=torch.float64, device=im.device)[None, :]
    high = torch.sqrt(fy * fy + fx * fx) > cutoff
    pairs = torch.full_like(fx, 2.0)
    pairs[:, 0] = 1.0
    if im.shape[-1] % 2 == 0:
        pairs[:, -1] = 1.0  # the Nyquist column is its own conjugate
    energy = energy * pairs
    total = energy.sum(dim=(-3, -2, -1))
    share = (energy * high).sum(dim=(-3, -2, -1)) / total.clamp_min(torch.finfo(im.dtype).tiny)
    return torch.where(total > 0, share, torch.zeros_like(share))


def random_objective(n: int, n_f: int, generator: torch.Generator | None = None) -> Tensor:
    """The "random feature vector" baseline of Sec. 3.4: nonnegative unit vectors
    |g| / ||g|| with g ~ N(0, I). -> (n, n_f) float64 (on the generator's device)."""
    device = generator.device if generator is not None else None
    g = torch.randn(n, n_f, generator=generator, dtype=torch.float64, device=device)
    return unit(g.abs())

"""Grad-IFV for robust FV: transformation robustness and image priors (docs/robust-ifv.md).

With random transformations T (``ifv.math.transform``) a realization is a stationary point of
E_T[S_x(y_T(v))], y_T = Agg o N o T o P. Estimated from K fixed samples T_1..T_K, with
Z_t = Z_k(y_t), q_t = x^T ybar_t and weights c_t = (k+1) q_t^k, the condition is

    x^T A(c) = 0,   A(c) = (1/K) sum_t c_t Z_t Dy_t   (n_f x n_p),

and with a prior R subtracted from the objective, x^T A(c) = lambda grad R(v)^T, lambda > 0.
Everything reduces to n_f x n_f algebra in float64 on

- ys: (B, K, n_f), the responses y_t;
- cross: (B, K n_f, K n_f), the block cross-Gram H with blocks H[t, s] = Dy_t Dy_s^T (the
  Gram of the stacked Jacobian [Dy_1; ..; Dy_K]); then A(c) A(c)^T = L(c) H L(c)^T with
  L(c) = (1/K) [c_1 Z_1, .., c_K Z_K]: (n_f, K n_f);
- prior: (B, K, n_f), the Jacobian-vector products Dy_t g with the prior's unit gradient
  g = grad_v R / ||grad_v R||, and its norm ||grad_v R||: (B,).

For k = 0 the weights are 1 and A is the mean Jacobian: Opt. (3) on it (``solve_mean``).
For k > 0 ``solve_transformed`` iterates on the weights. ``quantities`` computes ys,
cross, the mean Gram and the prior products from one response function per transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ifv.errors import UserError
from ifv.math.fv import FVSettings
from ifv.math.inverse import solve, substitution, symmetric, unit, z_k, z_k_inv
from ifv.math.jacobian import gram, jacobian
from ifv.math.objective import ResponseFn
from ifv.validate import choice, count, number

ESTIMATORS = ("relative", "mean")  # the robust solver's objective (``solve_transformed``)
DRAWS = ("auto", "fv", "sampled")  # inversion.draws (``Robust``)


@dataclass(frozen=True)
class Robust:
    """The robust solver's options (docs/robust-ifv.md). ``draws``: the transforms that
    estimate the expectation: ``fv``, the fixed draws FV's L-BFGS averaged over
    (``ifv.math.fv.lbfgs_draws``, exact for realizations ifv made); ``sampled``, ``samples``
    draws of their own ``seed`` (for realizations made elsewhere); ``auto``, fv where ifv
    made the realizations with L-BFGS (``ifv run``), else sampled. ``estimator``: relative
    (the relative stationarity) or mean (Opt. (3) on the mean gradient). The fixed point on
    the weights (k > 0) stops at relative change ``tol`` or after ``max_iter`` steps;
    ``batch_size`` realizations at a time (each holds K^2 n_f^2 float64 of cross-Grams)."""

    samples: int = 32
    seed: int = 12345
    tol: float = 1e-10
    max_iter: int = 100
    batch_size: int = 8
    draws: str = "auto"
    estimator: str = "relative"

    def uses_fv_draws(self, fv: FVSettings | None) -> bool:
        """Whether the draws are FV's own: ``fv`` describes how ifv made the realizations
        (None: made elsewhere)."""
        if self.draws == "fv" and fv is None:
            raise UserError("inversion.draws=fv needs the FV settings the realizations were "
                            "made with; valid here: auto, sampled")
        return self.draws == "fv" or (self.draws == "auto" and fv is not None
                                      and fv.lbfgs_steps > 0)

    def record(self, transformed: bool, fv: FVSettings | None) -> dict[str, Any]:
        """The results' inversion_* columns for realizations made with (``transformed``) or
        without transforms; ``fv`` as in ``uses_fv_draws``."""
        if not transformed:
            return {"inversion_samples": 1, "inversion_draws": "none",
                    "inversion_estimator": "mean"}
        draws, n, _ = self.source(fv, 0)
        return {"inversion_samples": n, "inversion_draws": draws,
                "inversion_estimator": self.estimator}

    def options(self, transformed: bool, fv: FVSettings | None) -> dict[str, Any]:
        """``record`` without the column prefix (samples, draws, estimator): what the JSON
        of ``ifv invert`` and the summary of ``ifv compare`` record under "inversion"."""
        return {key.removeprefix("inversion_"): value
                for key, value in self.record(transformed, fv).items()}

    def source(self, fv: FVSettings | None, seed: int) -> tuple[str, int, int]:
        """The transform draws used, as (draws, K, seed): ("fv", fv.transform_samples, the
        run's ``seed``) for FV's own draws, else ("sampled", samples, self.seed)."""
        if self.uses_fv_draws(fv):
            return "fv", fv.transform_samples, seed  # type: ignore[union-attr]
        return "sampled", self.samples, self.seed

    @classmethod
    def from_config(cls, c: Any) -> Robust:
        """``inversion.*`` of a composed config."""
        return cls(samples=count("inversion.samples", c.samples, 1),
                   seed=count("inversion.seed", c.seed),
                   tol=number("inversion.tol", c.tol),
                   max_iter=count("inversion.max_iter", c.max_iter, 1),
                   batch_size=count("inversion.batch_size", c.batch_size, 1),
                   draws=choice("inversion.draws", c.draws, DRAWS),
                   estimator=choice("inversion.estimator", c.estimator, ESTIMATORS))


def weights(x: Tensor, ys: Tensor, k: float) -> Tensor:
    """c_t = (k+1) q_t^k, q_t = x^T ybar_t, for unit x (the factor of grad S_x, Sec. 2.1).

    x: (B, n_f); ys: (B, K, n_f) -> (B, K) float64.
    """
    q = (unit(ys.double()) * unit(x.double()).unsqueeze(1)).sum(-1)
    return (k + 1.0) * q.pow(k)


def mixing(ys: Tensor, c: Tensor, k: float) -> Tensor:
    """L(c) = (1/K) [c_1 Z_k(y_1), .., c_K Z_k(y_K)], so that A(c) = L(c) [Dy_1; ..; Dy_K].

    ys: (B, K, n_f); c: (B, K) -> (B, n_f, K n_f) float64.
    """
    b, n_t, n_f = ys.shape
    z = z_k(ys.double().reshape(b * n_t, n_f), k).reshape(b, n_t, n_f, n_f)
    z = z * (c.double() / n_t)[..., None, None]
    return z.permute(0, 2, 1, 3).reshape(b, n_f, n_t * n_f)


def weighted_gram(ys: Tensor, cross: Tensor, c: Tensor, k: float) -> Tensor:
    """A(c) A(c)^T = L(c) H L(c)^T = (1/K^2) sum_{t,s} c_t c_s Z_t Dy_t Dy_s^T Z_s, the
    (Z-reduced) Gram of the weighted mean gradient.

    ys: (B, K, n_f); cross H: (B, K n_f, K n_f); c: (B, K) -> (B, n_f, n_f).
    """
    m = mixing(ys, c, k)
    return symmetric(m @ cross.double() @ m.transpose(-1, -2))


def weighted_prior(ys: Tensor, prior: Tensor, c: Tensor, k: float) -> Tensor:
    """A(c) g = (1/K) sum_t c_t Z_t (Dy_t g). ys, prior: (B, K, n_f); c: (B, K) -> (B, n_f)."""
    b, n_t, n_f = ys.shape
    return (mixing(ys, c, k) @ prior.double().reshape(b, n_t * n_f, 1)).squeeze(-1)


def mean_gram(cross: Tensor, n_t: int) -> Tensor:
    """Gram of the mean Jacobian, (1/K^2) sum_{t,s} Dy_t Dy_s^T. cross: (B, K n_f, K n_f)
    -> (B, n_f, n_f)."""
    b, m, _ = cross.shape
    n_f = m // n_t
    return symmetric(cross.double().reshape(b, n_t, n_f, n_t, n_f).sum((1, 3)) / n_t**2)


def second_gram(ys: Tensor, cross: Tensor, c: Tensor, k: float,
                prior: Tensor | None = None) -> Tensor:
    """B(c) = (1/K) sum_t c_t^2 Z_t Dy_t (I - g g^T) Dy_t^T Z_t, the Gram of the mean squared
    per-transform gradient: x^T B(c) x = (1/K) sum_t ||c_t x^T Z_t Dy_t (I - g g^T)||^2
    (without ``prior``: g = 0). The denominator of the relative stationarity.

    ys: (B, K, n_f); cross H: (B, K n_f, K n_f); c: (B, K); prior: (B, K, n_f) = Dy_t g
    -> (B, n_f, n_f).
    """
    b, n_t, n_f = ys.shape
    diag = torch.diagonal(cross.double().reshape(b, n_t, n_f, n_t, n_f), dim1=1, dim2=3)
    blocks = diag.permute(0, 3, 1, 2)  # (B, K, n_f, n_f): H[t, t] = Dy_t Dy_t^T
    if prior is not None:
        u = prior.double()
        blocks = blocks - u.unsqueeze(-1) * u.unsqueeze(-2)
    z = z_k(ys.double().reshape(b * n_t, n_f), k).reshape(b, n_t, n_f, n_f)
    w = (c.double() ** 2)[..., None, None]
    return symmetric((w * (z @ blocks @ z)).mean(1))


def project_prior(gram: Tensor, u: Tensor) -> Tensor:
    """Gram of Dy (I - g g^T): G - (Dy g)(Dy g)^T, which eliminates the unknown prior weight.

    gram: (B, n_f, n_f); u = Dy g with unit g: (B, n_f) -> (B, n_f, n_f). The same holds
    after reduction: Z (G - u u^T) Z = Z G Z - (Z u)(Z u)^T.
    """
    u = u.double()
    return symmetric(gram.double() - u.unsqueeze(-1) * u.unsqueeze(-2))


def reduced_residual(x: Tensor, gram: Tensor) -> Tensor:
    """sqrt(x^T M x / lambda_max(M)) for unit x, M the reduced Gram of the gradient (e.g.
    ``weighted_gram``): ||x^T A|| / ||A||_2 as ``ifv.math.metrics.relative_residual``.
    x: (B, n_f); gram: (B, n_f, n_f) -> (B,); NaN where M = 0."""
    m = symmetric(gram.double())
    top = torch.linalg.eigvalsh(m)[..., -1]
    xu = unit(x.double())
    num = (xu.unsqueeze(-2) @ m @ xu.unsqueeze(-1)).reshape(top.shape).clamp_min(0.0)
    return torch.sqrt(num / top.clamp_min(0.0))


def solve_mean(y: Tensor, gram_mean: Tensor, basis: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """k = 0: Opt. (3) on the mean Jacobian, exact for the K-sample expectation.

    y: (B, n_f) for the sign (x^T y >= 0; e.g. the mean response); gram_mean: (B, n_f, n_f)
    (``mean_gram`` or ``Quantities.mean_gram``, minus u u^T with a prior); basis C_M:
    (n_f, d). Returns x*: (B, n_f) and the smallest eigenvalue (B,).
    """
    return solve(y, gram_mean, 0.0, basis)


def _smallest(m: Tensor, u: Tensor, y_ref: Tensor) -> tuple[Tensor, Tensor]:
    """x = U sigma, sigma the eigenvector of the smallest eigenvalue of U^T M U, signed so
    that x^T y_ref >= 0, and the eigenvalues (ascending). m: (B, n_f, n_f); u: (B, n_f, d)
    -> (B, n_f), (B, d)."""
    evals, vecs = torch.linalg.eigh(symmetric(u.transpose(-1, -2) @ m @ u))
    x = unit((u @ vecs[..., :1]).squeeze(-1))
    sign = torch.where((x * y_ref).sum(-1) < 0, -1.0, 1.0).to(x)
    return x * sign.unsqueeze(-1), evals


def _smallest_ratio(m: Tensor, bm: Tensor, u: Tensor, y_ref: Tensor,
                    eps: float = 1e-10) -> tuple[Tensor, Tensor]:
    """x = U sigma, sigma minimizing the generalized Rayleigh quotient
    sigma^T U^T M U sigma / sigma^T U^T B U sigma (the relative stationarity), signed so that
    x^T y_ref >= 0, and the generalized eigenvalues (ascending: the squared stationarity of
    x, of the runner-up, ...). B is regularized by ``eps`` times its mean eigenvalue, so that
    directions with no gradient under any transform (trivial solutions, Sec. 2.2) have
    quotient 0, as in Opt. (3). m, bm: (B, n_f, n_f); u: (B, n_f, d) -> (B, n_f), (B, d)."""
    ut = u.transpose(-1, -2)
    a = symmetric(ut @ m @ u)
    bb = symmetric(ut @ bm @ u)
    d = bb.shape[-1]
    eye = torch.eye(d, dtype=bb.dtype, device=bb.device)
    scale = torch.diagonal(bb, dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(bb.dtype).tiny)
    chol = torch.linalg.cholesky(bb + eps * scale[..., None, None] * eye)
    half = torch.linalg.solve_triangular(chol, a, upper=False)  # L^-1 A
    c = symmetric(torch.linalg.solve_triangular(chol, half.transpose(-1, -2), upper=False))
    evals, vecs = torch.linalg.eigh(c)
    sigma = torch.linalg.solve_triangular(chol.transpose(-1, -2), vecs[..., :1], upper=True)
    x = unit((u @ sigma).squeeze(-1))
    sign = torch.where((x * y_ref).sum(-1) < 0, -1.0, 1.0).to(x)
    return x * sign.unsqueeze(-1), evals


def _runner_up(evals: Tensor, top: Tensor | None = None) -> Tensor:
    """The runner-up's residual from ascending eigenvalues (B, d): sqrt(lambda_2), or
    sqrt(lambda_2 / top) with ``top`` (B,) (the relative residual's normalization); NaN
    where d < 2."""
    if evals.shape[-1] < 2:
        return torch.full(evals.shape[:-1], float("nan"), dtype=evals.dtype,
                          device=evals.device)
    second = evals[..., 1].clamp_min(0.0)
    return torch.sqrt(second if top is None else second / top.clamp_min(0.0))


def _mean_solution(m: Tensor, u: Tensor, y_ref: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Opt. (3) on M over Im U (estimator "mean"): x (``_smallest``), its relative residual
    and the runner-up's. m: (B, n_f, n_f); u: (B, n_f, d) -> (B, n_f), (B,), (B,)."""
    x, evals = _smallest(m, u, y_ref)
    return x, reduced_residual(x, m), _runner_up(
        evals, torch.linalg.eigvalsh(symmetric(m))[..., -1])


def _ratio_solution(m: Tensor, bm: Tensor, u: Tensor, y_ref: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """The relative estimator over Im U: x (``_smallest_ratio``), its relative stationarity
    and the runner-up's. m, bm: (B, n_f, n_f); u: (B, n_f, d) -> (B, n_f), (B,), (B,)."""
    x, evals = _smallest_ratio(m, bm, u, y_ref)
    return x, stationarity(x, m, bm), _runner_up(evals)


def stationarity(x: Tensor, m: Tensor, bm: Tensor) -> Tensor:
    """The relative stationarity sqrt(x^T M x / x^T B x) = ||mean_t g_t|| / rms_t ||g_t||
    of the per-transform gradients g_t (``weighted_gram`` M, ``second_gram`` B), in [0, 1]
    (0: a stationary point of the K-sample expectation). x: (B, n_f) -> (B,)."""
    xd = x.double()
    num = (xd.unsqueeze(-2) @ m.double() @ xd.unsqueeze(-1)).reshape(x.shape[:-1])
    den = (xd.unsqueeze(-2) @ bm.double() @ xd.unsqueeze(-1)).reshape(x.shape[:-1])
    num = num.clamp_min(0.0)
    return torch.sqrt(num / den.clamp_min(torch.finfo(torch.float64).tiny))


def _least_squares(m: Tensor, u: Tensor, rhs: Tensor, rtol: float) -> Tensor:
    """x = U (U^T M U)^+ U^T rhs. m: (B, n_f, n_f); u: (B, n_f, d); rhs: (B, n_f)."""
    ut = u.transpose(-1, -2)
    inv = torch.linalg.pinv(symmetric(ut @ m @ u), rtol=rtol, hermitian=True)
    return (u @ (inv @ (ut @ rhs.unsqueeze(-1)))).squeeze(-1)


def _fit_residual(x: Tensor, m: Tensor, a: Tensor, rhs_norm: Tensor) -> Tensor:
    """||x^T A - r^T|| / ||r|| from M = A A^T, a = A r / ||r|| and ||r||: (B,)."""
    quad = (x.unsqueeze(-2) @ m @ x.unsqueeze(-1)).reshape(rhs_norm.shape)
    e2 = quad - 2 * rhs_norm * (x * a).sum(-1) + rhs_norm**2
    return torch.sqrt(e2.clamp_min(0.0)) / rhs_norm


@dataclass
class Solution:
    """Result of ``solve_transformed``: x (B, n_f) unit; weights c_t = (k+1) q_t^k at x
    (B, K); residual (B,): the relative stationarity (``stationarity``; estimator "mean":
    the relative residual) of the (projected) mean gradient, or with a known weight
    ||x_raw^T A - lambda grad R^T|| / (lambda ||grad R||); iterations (B,) eigen or linear
    solves used; converged (B,) whether the weights settled within tol; scale (B,)
    with a known weight: ||x_raw||, the norm of the least-squares solution (1 for a unit
    target and the right weight), else NaN; next_residual (B,): the runner-up's residual
    at the final weights (the second eigenvector's, as ``ifv invert`` reports for plain
    Grad-IFV; NaN with a known weight): x is well determined where residual lies far below
    it."""

    x: Tensor
    weights: Tensor
    residual: Tensor
    iterations: Tensor
    converged: Tensor
    scale: Tensor
    next_residual: Tensor


def solve_transformed(ys: Tensor, cross: Tensor, k: float, basis: Tensor | None = None, *,
                      prior: Tensor | None = None, prior_norm: Tensor | None = None,
                      weight: float | Tensor | None = None, y_ref: Tensor | None = None,
                      tol: float = 1e-10, max_iter: int = 100, damping: float = 0.0,
                      rtol: float = 1e-12, estimator: str = "relative") -> Solution:
    """Grad-IFV for FV with transformation robustness (and a prior): the fixed point on c.

    Starting from equal weights, repeat: x = argmin ||x^T A(c)||^2 over unit x in
    Im Z_k(y_ref)^{-1} C_M (Opt. (3) on the weighted mean gradient; with ``prior``: on
    A(c)(I - g g^T), the weight eliminated; with ``prior``, ``prior_norm`` and a known
    ``weight`` lambda: the least-squares x^T A(c) = lambda grad R^T instead, normalized);
    then c <- (1-damping) c(x) + damping c. ``estimator`` "relative" (the default) minimizes
    the relative stationarity ||x^T A(c)||^2 / x^T B(c) x instead of ||x^T A(c)||^2 over unit
    x ("mean"), B(c) the mean squared per-transform gradient (``second_gram``); both are
    exact for a stationary point of the K-sample expectation (K = 1: "mean"). Stops per
    sample when the relative change of c / mean|c| is at most ``tol``. k = 0: c = 1, one
    step, exact. Converges locally when the per-transform gradients are small against the
    spectral gap (docs/robust-ifv.md).

    ys: (B, K, n_f); cross: (B, K n_f, K n_f); basis C_M: (n_f, d), default R^{n_f};
    prior: (B, K, n_f) = Dy_t g; prior_norm: (B,) = ||grad_v R||; y_ref: (B, n_f) for the
    critical-space substitution and the sign, default the mean of the ybar_t.
    """
    ys = ys.double()
    b, n_t, n_f = ys.shape
    known = weight is not None
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    ratio = estimator == "relative" and n_t > 1  # K = 1: the quotient is 1 everywhere
    if known and (prior is None or prior_norm is None):
        raise ValueError("a known prior weight needs prior and prior_norm")
    if y_ref is None:
        y_ref = unit(ys).mean(1)
    y_ref = y_ref.double()
    if basis is None:
        basis = torch.eye(n_f, dtype=torch.float64, device=ys.device)
    u = substitution(y_ref, k, basis)
    rhs_norm = None
    if known:
        rhs_norm = (torch.as_tensor(weight, dtype=torch.float64, device=ys.device)
                    * prior_norm.double()).expand(b)

    nan = torch.full((b,), float("nan"), dtype=torch.float64, device=ys.device)

    def step(c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x, its raw least-squares norm (NaN unless the weight is known), residual, the
        runner-up's residual."""
        m = weighted_gram(ys, cross, c, k)
        if not known:
            if prior is not None:
                m = project_prior(m, weighted_prior(ys, prior, c, k))
            if ratio:
                x, r, n = _ratio_solution(m, second_gram(ys, cross, c, k, prior), u, y_ref)
            else:
                x, r, n = _mean_solution(m, u, y_ref)
            return x, nan, r, n
        a = weighted_prior(ys, prior, c, k)
        raw = _least_squares(m, u, rhs_norm.unsqueeze(-1) * a, rtol)
        return unit(raw), raw.norm(dim=-1), _fit_residual(raw, m, a, rhs_norm), nan

    def relative(c: Tensor) -> Tensor:
        if known:  # the raw norm depends on the weights' scale
            return c
        return c / c.abs().mean(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)

    c = torch.ones(b, n_t, dtype=torch.float64, device=ys.device)
    x = torch.zeros(b, n_f, dtype=torch.float64, device=ys.device)
    scale = nan.clone()
    res = torch.zeros_like(scale)
    nxt = nan.clone()
    iters = torch.zeros(b, dtype=torch.long, device=ys.device)
    done = torch.zeros(b, dtype=torch.bool, device=ys.device)
    for it in range(1, max_iter + 1):
        xi, si, ri, ni = step(c)
        c_new = weights(xi, ys, k)
        old = relative(c)
        change = (relative(c_new) - old).norm(dim=-1) / old.norm(dim=-1)
        keep = ~done
        x = torch.where(keep.unsqueeze(-1), xi, x)
        scale = torch.where(keep, si, scale)
        res = torch.where(keep, ri, res)
        nxt = torch.where(keep, ni, nxt)
        iters = torch.where(keep, it, iters)
        c = torch.where(keep.unsqueeze(-1), (1.0 - damping) * c_new + damping * c, c)
        done = done | (change <= tol)
        if bool(done.all()):
            break
    return Solution(x=x, weights=weights(x, ys, k), residual=res, iterations=iters,
                    converged=done, scale=scale, next_residual=nxt)


def solve_prior(y: Tensor, gram: Tensor, u: Tensor, k: float, basis: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Opt. (3) for a realization of S_x - lambda R with lambda unknown (no transforms):
    ``inverse.solve`` on G - (Dy g)(Dy g)^T.

    y: (B, n_f); gram G: (B, n_f, n_f); u = Dy g: (B, n_f), g the unit gradient of R o P
    w.r.t. v. Returns x*: (B, n_f) and the smallest eigenvalue (B,).
    """
    return solve(y, project_prior(gram, u), k, basis)


def prior_weight(x: Tensor, ys: Tensor, prior: Tensor, prior_norm: Tensor, k: float
                 ) -> Tensor:
    """The prior weight lambda that x implies: the least-squares factor of
    x^T A(c) = lambda grad R^T, i.e. x^T A(c) g / ||grad R|| with c_t = (k+1) q_t^k at unit
    x. Positive at a realization of S_x - lambda R with lambda > 0.

    x: (B, n_f); ys, prior: (B, K, n_f) (K = 1 without transforms); prior_norm: (B,) -> (B,).
    """
    xu = unit(x.double())
    a = weighted_prior(ys, prior, weights(xu, ys, k), k)
    return (xu * a).sum(-1) / prior_norm.double()


def solve_known_weight(y: Tensor, gram: Tensor, u: Tensor, prior_norm: Tensor,
                       weight: float | Tensor, k: float, basis: Tensor | None = None, *,
                       rtol: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """Opt. (3) with a known prior weight lambda (no transforms): the stationarity
    h^T Dy = lambda grad R^T, h = grad S_x(y) = (k+1) q^k Z_k x, is linear in h: h is the
    least-squares solution over h in C, x = Z_k^{-1} h / ||Z_k^{-1} h||.

    y: (B, n_f); gram: (B, n_f, n_f); u = Dy g: (B, n_f); prior_norm: (B,); weight: lambda.
    Returns x: (B, n_f); scale (B,) = ||Z^{-1} h|| / ((k+1) q^k) (1 for a unit target with
    the right weight, proportional to the weight given); the relative residual
    ||h^T Dy - lambda grad R^T|| / (lambda ||grad R||) (B,).
    """
    y = y.double()
    n_f = y.shape[-1]
    if basis is None:
        basis = torch.eye(n_f, dtype=torch.float64, device=y.device)
    cm = basis.double().to(y.device)
    g = gram.double()
    rhs_norm = (torch.as_tensor(weight, dtype=torch.float64, device=y.device)
                * prior_norm.double()).expand(y.shape[0])
    a = u.double()
    cb = cm.expand(y.shape[0], *cm.shape)
    h = _least_squares(g, cb, rhs_norm.unsqueeze(-1) * a, rtol)  # h in C
    raw = (z_k_inv(y, k) @ h.unsqueeze(-1)).squeeze(-1)  # (k+1) q^k x
    x = unit(raw)
    q = (x * unit(y)).sum(-1)
    scale = raw.norm(dim=-1) / ((k + 1.0) * q.pow(k))
    return x, scale, _fit_residual(h, g, a, rhs_norm)


# --- the quantities from a network -----------------------------------------------------------


@dataclass
class Quantities:
    """What ``solve_transformed`` / ``solve_mean`` need, float64: y (B, K, n_f); cross
    (B, K n_f, K n_f) or None; mean_gram (B, n_f, n_f), the Gram of the mean Jacobian;
    second (B, n_f, n_f), the mean of the per-transform Grams (1/K) sum_t Dy_t Dy_t^T;
    prior (B, K, n_f) = Dy_t g and prior_norm (B,) = ||grad_v R|| or None; evaluations: the
    Jacobians computed (each is one forward and n_f backward passes of the batch)."""

    y: Tensor
    cross: Tensor | None
    mean_gram: Tensor
    second: Tensor
    prior: Tensor | None
    prior_norm: Tensor | None
    evaluations: int


def prior_gradient(prior: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
    """grad_v R(v) per sample, R: (B, *shape) -> (B,) (e.g. a penalty on P(v)):
    (B, n_p) in v's dtype."""
    with torch.enable_grad():
        w = v.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(prior(w).sum(), w)
    return g.reshape(v.shape[0], -1)


def quantities(responses: Sequence[ResponseFn], v: Tensor, *,
               prior: Callable[[Tensor], Tensor] | None = None, cross: bool = True,
               max_bytes: int = 1 << 30) -> Quantities:
    """y_t, the cross-Grams Dy_t Dy_s^T, the mean Gram and Dy_t g for K response functions
    (one per fixed transform, e.g. ``responses_under``) at realizations v: (B, *shape).

    Jacobians come from ``ifv.math.jacobian.jacobian`` (method "loop"), one transform at a time
    for the whole batch: each is B n_f n_p elements (J bytes). ``cross=False`` (k = 0):
    K Jacobians, one at a time, and the mean Jacobian in float64 (memory ~ J + 8 B n_f n_p
    bytes). ``cross=True``: the transforms are taken in groups of ``hold`` = max(1,
    max_bytes // J - 1) Jacobians held at once; each group's blocks with every later
    transform are formed by computing that one's Jacobian again, so memory is (hold + 1) J
    plus the K^2 B n_f^2 float64 of ``cross``, and the Jacobians computed number K if all
    fit (hold >= K), K (K + 1) / 2 at most (hold = 1). Responses must be deterministic.
    """
    n_t = len(responses)
    if n_t == 0:
        raise ValueError("need at least one transform")
    b, n_p = v.shape[0], v[0].numel()
    g = None
    pnorm = None
    if prior is not None:
        grad = prior_gradient(prior, v).double()
        pnorm = grad.norm(dim=-1)
        g = grad / pnorm.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)
    ys: list[Tensor | None] = [None] * n_t
    us: list[Tensor | None] = [None] * n_t
    evaluations = 0

    def jac(t: int) -> Tensor:
        nonlocal evaluations
        y, dy = jacobian(responses[t], v, method="loop")
        evaluations += 1
        if ys[t] is None:
            ys[t] = y.double()
            if g is not None:
                us[t] = torch.stack([dy[i].double() @ g[i] for i in range(b)])
        return dy

    n_f = None
    h = None
    mean_jac = None
    if not cross:
        second = None
        for t in range(n_t):
            dy = jac(t)
            if mean_jac is None:
                mean_jac = torch.zeros(dy.shape, dtype=torch.float64, device=dy.device)
                second = torch.zeros((b, dy.shape[1], dy.shape[1]), dtype=torch.float64,
                                     device=dy.device)
            mean_jac += dy.double() / n_t
            second += torch.stack([gram(dy[i]) for i in range(b)]) / n_t
            del dy
        n_f = mean_jac.shape[1]
        mg = torch.stack([gram(mean_jac[i]) for i in range(b)])
    else:
        with torch.no_grad():
            n_f = responses[0](v[:1].detach()).shape[-1]
        per_jac = max(1, b * n_f * n_p * v.element_size())
        hold = max(1, min(n_t, max_bytes // per_jac - 1))
        h = torch.empty((b, n_t, n_f, n_t, n_f), dtype=torch.float64, device=v.device)

        def block(dt: Tensor, ds: Tensor, t: int, s: int) -> None:
            for i in range(b):
                if t == s:
                    h[i, t, :, t, :] = gram(dt[i])
                else:
                    h[i, t, :, s, :] = dt[i].double() @ ds[i].double().T
                    h[i, s, :, t, :] = h[i, t, :, s, :].T

        for start in range(0, n_t, hold):
            group = range(start, min(start + hold, n_t))
            held = {t: jac(t) for t in group}
            for t in group:
                for s in group:
                    if s >= t:
                        block(held[t], held[s], t, s)
            for s in range(group.stop, n_t):
                ds = jac(s)
                for t in group:
                    block(held[t], ds, t, s)
                del ds
            del held
        h = h.reshape(b, n_t * n_f, n_t * n_f)
        mg = mean_gram(h, n_t)
        second = torch.diagonal(h.reshape(b, n_t, n_f, n_t, n_f), dim1=1, dim2=3).mean(-1)
    y = torch.stack(ys, dim=1)  # type: ignore[arg-type]
    u = torch.stack(us, dim=1) if g is not None else None  # type: ignore[arg-type]
    return Quantities(y=y, cross=h, mean_gram=mg, second=second, prior=u, prior_norm=pnorm,
                      evaluations=evaluations)


def solve_quantities(q: Quantities, k: float, basis: Tensor | None = None, *,
                     tol: float = 1e-10, max_iter: int = 100,
                     estimator: str = "relative") -> Solution:
    """The robust solution from ``quantities``: k = 0 on the mean Jacobian (estimator
    "mean": ``solve_mean``; "relative": the quotient with the mean per-transform Gram, with a
    prior both projected), k > 0 the fixed point (``solve_transformed``, which needs
    ``q.cross``); the prior's weight is eliminated. With K = 1 the estimator is "mean".
    basis C_M: (n_f, d), default R^{n_f}. Returns a ``Solution`` ((B, n_f) x and its record)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    b, n_t, n_f = q.y.shape
    if n_t == 1:  # one transform (a prior alone): the quotient is 1 everywhere
        estimator = "mean"
    y_ref = unit(q.y.double()).mean(1)
    if k == 0:
        g, second = q.mean_gram, q.second
        if q.prior is not None:
            u = q.prior.double()
            g = project_prior(g, u.mean(1))
            second = symmetric(second - (u.unsqueeze(-1) * u.unsqueeze(-2)).mean(1))
        u = substitution(y_ref, 0.0, basis if basis is not None else
                         torch.eye(n_f, dtype=torch.float64, device=g.device))
        if estimator == "mean":  # solve_mean's x: Z_0 = Id, so U^T G U is Opt. (3)'s matrix
            x, residual, runner_up = _mean_solution(g, u, y_ref)
        else:
            x, residual, runner_up = _ratio_solution(g, second, u, y_ref)
        ones = torch.ones(b, n_t, dtype=torch.float64, device=x.device)
        nan = torch.full((b,), float("nan"), dtype=torch.float64, device=x.device)
        return Solution(x=x, weights=ones, residual=residual,
                        iterations=torch.ones(b, dtype=torch.long, device=x.device),
                        converged=torch.ones(b, dtype=torch.bool, device=x.device), scale=nan,
                        next_residual=runner_up)
    if q.cross is None:
        raise ValueError("k > 0 needs the cross-Grams (quantities(..., cross=True))")
    return solve_transformed(q.y, q.cross, k, basis, prior=q.prior, y_ref=y_ref, tol=tol,
                             max_iter=max_iter, estimator=estimator)

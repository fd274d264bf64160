"""Grad-IFV where FV's optimum is a kink: the tangent condition (docs/kinks.md).

On a network with ReLUs and max pooling, N~ is piecewise smooth: its pieces are selected by
the signs of switch functions z_i(v) (pre-activations, differences within a pooling window).
FV's optimum v* of f_x usually lies on switches, z_i(v*) = 0 for i in an active set A, where
the gradient x^T Z_k Dy does not vanish and Opt. (3) answers a different question. The
pieces meeting at v* agree on the manifold {z_i = 0, i in A}, so their Jacobians agree on
its tangent space T = N^perp, N = span{grad z_i, i in A}; the Clarke condition
0 in conv{x^T Z_k Dy_r} then gives

    x^T Z_k(y) Dy P_T = 0,   P_T the orthogonal projection onto T,

Opt. (3) with the Gram G_T = Dy P_T Dy^T in place of G = Dy Dy^T. N is estimated from the
second differences of the Jacobian along K random directions eps_j,

    Delta_j = Dy(v + s eps_j) + Dy(v - s eps_j) - 2 Dy(v),

whose rows lie in N (one of +-s eps_j crosses each active switch) and which vanish as s^2 on
a smooth network. Everything reduces to float64 algebra on G (n_f x n_f), the cross products
C = Dy Delta^T (n_f x K n_f) and E = Delta Delta^T (K n_f x K n_f), Delta = [Delta_1; ..].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ifv.errors import UserError
from ifv.math.inverse import solve, solve_log, symmetric
from ifv.math.jacobian import chunk_size, gram, jacobian, pick, response_and_gram
from ifv.math.objective import ResponseFn
from ifv.validate import count, number


@dataclass(frozen=True)
class Kinks:
    """The tangent condition's options: ``samples`` directions K (0: off, plain Opt. (3)),
    their step ``sigma`` in P's variables v and their ``seed``; ``rows``: the rows of each
    second difference, all n_f where n_f <= rows, else that many random combinations
    (``mixings``); ``rho``: a direction of the second differences counts as a switch normal
    where its singular value exceeds rho ||Dy||_2."""

    samples: int = 4
    sigma: float = 1e-3
    rho: float = 1e-3
    seed: int = 0
    rows: int = 64

    @property
    def on(self) -> bool:
        return self.samples > 0

    @classmethod
    def from_config(cls, c: Any) -> Kinks:
        """``kinks.*`` of a composed config."""
        rho = number("kinks.rho", c.rho, strict=True)
        if rho >= 1:
            raise UserError(f"kinks.rho must be a number in (0, 1), got {c.rho!r}")
        return cls(samples=count("kinks.samples", c.samples),
                   sigma=number("kinks.sigma", c.sigma, strict=True), rho=rho,
                   seed=count("kinks.seed", c.seed), rows=count("kinks.rows", c.rows, 1))


def directions(shape: tuple[int, ...], samples: int, seed: int) -> Tensor:
    """K standard normal directions eps_j in P's variables, drawn on the CPU from ``seed``:
    (K, *shape) float32."""
    return torch.randn((samples, *shape), generator=torch.Generator().manual_seed(seed))


def mixings(n_f: int, rows: int, samples: int, seed: int) -> Tensor | None:
    """Per direction, ``rows`` random unit combinations of the n_f outputs, drawn on the
    CPU from ``seed``: (K, rows, n_f) float32; None where n_f <= rows (every row is taken,
    so the second differences are exact)."""
    if n_f <= rows:
        return None
    g = torch.Generator().manual_seed(seed + 1)
    m = torch.randn((samples, rows, n_f), generator=g)
    return m / m.norm(dim=-1, keepdim=True)


class _Mixed:
    """v -> N~(v) M^T: the response's combinations M (rows, n_f)."""

    def __init__(self, fn: ResponseFn, mix: Tensor) -> None:
        self.fn, self.mix = fn, mix

    def __call__(self, v: Tensor) -> Tensor:
        return self.fn(v) @ self.mix.T


def project_kinks(g: Tensor, cross: Tensor, second: Tensor, rho: float
                  ) -> tuple[Tensor, Tensor]:
    """G_T = Dy P_T Dy^T, P_T the projection off the switch normals N (Opt. (3) at a kink).

    N is spanned by the right singular vectors of Delta whose singular values exceed rho
    ||Dy||_2; with E = Delta Delta^T = V L V^T and C = Dy Delta^T, N's basis is
    Delta^T V_r L_r^{-1/2}, so G_T = G - (C V_r L_r^{-1/2})(C V_r L_r^{-1/2})^T.

    g: (B, n_f, n_f); cross C: (B, n_f, m); second E: (B, m, m) -> G_T (B, n_f, n_f) float64
    and dim N (B,) int64. Where dim N = 0 (or a sample holds non-finite values), G_T is G
    itself.
    """
    g, cross, second = g.double(), cross.double(), second.double()
    finite = (torch.isfinite(g).flatten(1).all(1) & torch.isfinite(cross).flatten(1).all(1)
              & torch.isfinite(second).flatten(1).all(1))
    ok = finite[:, None, None]
    top = torch.linalg.eigvalsh(symmetric(torch.where(ok, g, 0.0)))[..., -1].clamp_min(0.0)
    lam, vec = torch.linalg.eigh(symmetric(torch.where(ok, second, 0.0)))
    keep = (lam > (rho * rho) * top.unsqueeze(-1)) & finite[:, None]
    scale = torch.where(keep, lam.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(),
                        torch.zeros_like(lam))
    f = torch.where(ok, cross, 0.0) @ (vec * scale.unsqueeze(-2))  # zero columns off N
    dim = keep.sum(-1)
    g_t = torch.where((dim > 0)[:, None, None], symmetric(g - f @ f.transpose(-1, -2)), g)
    return g_t, dim


def tangent_gram(fn: ResponseFn, v: Tensor, kinks: Kinks, *, method: str = "auto",
                 max_bytes: int = 1 << 30, progress: bool = False
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Responses y, the Gram G = Dy Dy^T, the tangent Gram G_T (``project_kinks``) and the
    estimated dim N of every sample (docs/kinks.md).

    v: (B, *shape) -> y (B, n_f), G and G_T (B, n_f, n_f) float64, dim N (B,) int64, on v's
    device. Per sample, the Jacobian at v and, for each of K directions eps_j =
    ``directions(shape, K, seed)`` (the same for every sample), the Jacobians of W = min(n_f,
    ``rows``) combinations of the outputs (``mixings``) at v +- sigma eps_j: n_f + 2 K W
    backward passes. Samples are taken in chunks whose K second differences (K W n_p values
    a sample) fit ``max_bytes``.
    """
    method = pick(method, v.device)
    batch, n_t = v.shape[0], kinks.samples
    with torch.no_grad():
        n_f = fn(v[:1].detach()).shape[-1]
    n_p = v[0].numel()
    steps = kinks.sigma * directions(tuple(v.shape[1:]), n_t, kinks.seed).to(v)
    mix = mixings(n_f, kinks.rows, n_t, kinks.seed)
    width = n_f if mix is None else kinks.rows
    chunk = min(batch, chunk_size(n_t * width + n_f, n_p, v.element_size(), max_bytes))
    y_all = torch.empty((batch, n_f), dtype=torch.float64, device=v.device)
    g_all = torch.empty((batch, n_f, n_f), dtype=torch.float64, device=v.device)
    t_all = torch.empty_like(g_all)
    dim = torch.empty(batch, dtype=torch.long, device=v.device)
    for s in tqdm(range(0, batch, chunk), desc="Dy at kinks", unit="chunk",
                  disable=not progress, leave=False):
        e = min(s + chunk, batch)
        y, dy = jacobian(fn, v[s:e], method=method)
        delta = torch.empty((e - s, n_t, width, n_p), dtype=dy.dtype, device=v.device)
        for j in range(n_t):
            f, center = fn, dy
            if mix is not None:
                m = mix[j].to(v)
                f, center = _Mixed(fn, m), m @ dy
            delta[:, j] = (jacobian(f, v[s:e] + steps[j], method=method)[1]
                           + jacobian(f, v[s:e] - steps[j], method=method)[1] - 2 * center)
        y_all[s:e] = y.double()
        for b in range(e - s):
            rows = delta[b].reshape(n_t * width, n_p)
            g_all[s + b] = gram(dy[b])
            t_all[s + b], dim[s + b] = project_kinks(
                g_all[s + b:s + b + 1], (dy[b].double() @ rows.double().T).unsqueeze(0),
                gram(rows).unsqueeze(0), kinks.rho)
        del dy, delta
    return y_all, g_all, t_all, dim


def response_and_grams(fn: ResponseFn, v: Tensor, kinks: Kinks, *, method: str = "auto",
                       max_bytes: int = 1 << 30, progress: bool = False
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y, G, G_T and dim N of every sample (``tangent_gram``); with ``kinks`` off
    (``samples=0``) plain Opt. (3)'s y and G (``ifv.math.jacobian.response_and_gram``), G_T = G
    and dim N = 0. v: (B, *shape) -> (B, n_f), (B, n_f, n_f) twice, (B,)."""
    if kinks.on:
        return tangent_gram(fn, v, kinks, method=method, max_bytes=max_bytes,
                            progress=progress)
    y, g = response_and_gram(fn, v, method=method, max_bytes=max_bytes, progress=progress)
    return y, g, g, torch.zeros(len(v), dtype=torch.long, device=v.device)


def solve_at_kinks(y: Tensor, gram: Tensor, k: float, basis: Tensor | None,
                   kink_dim: Tensor) -> Tensor:
    """Grad-IFV's x* with the tangent condition: per sample, where switch normals were found
    (dim N > 0) the objective of least relative stationarity on G_T
    (``ifv.math.inverse.solve_log``), elsewhere Opt. (3) (``ifv.math.inverse.solve``), so a
    smooth network gets Opt. (3)'s answer.

    y: (B, n_f); gram: G_T (B, n_f, n_f); basis C_M: (n_f, d) or None; kink_dim: (B,) ->
    x*: (B, n_f) unit vectors with x*^T y >= 0.
    """
    kinked = (kink_dim > 0).to(y.device)
    x = torch.empty(y.shape, dtype=torch.float64, device=y.device)
    if bool(kinked.any()):
        x[kinked] = solve_log(y[kinked], gram[kinked], k, basis)
    if not bool(kinked.all()):
        x[~kinked] = solve(y[~kinked], gram[~kinked], k, basis)[0]
    return x

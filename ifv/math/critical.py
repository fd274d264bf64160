"""Algorithm 1 (co-kernel approximation) and the rho search of Sec. 3.5.

The critical space C of Opt. (3) approximates (intersect_I coker Dy_I)^perp, Eq. (4)
(Sec. 2.2). Algorithm 1 needs the left-singular vectors and singular values of each
Dy^(i); they are the eigenpairs of G_i = Dy^(i) Dy^(i)^T (singular value = sqrt(eigenvalue)),
so everything here works on the per-sample Gram matrices G: (B, n_f, n_f), in float64.

Conventions: bases are (n_f, d) matrices with orthonormal columns; angles of
``principal_vectors`` are in radians, ``max_angle`` of ``merge`` is in degrees.
Note that singular values obtained from G are resolved only down to about
sqrt(eps) ~ 1e-8 of ||Dy^(i)||_2, so thresholds rho below ~1e-7 are meaningless.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from ifv.math.inverse import symmetric


def principal_vectors(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Principal angles and vectors of Im a and Im b (Knyazev & Argentati 2002, Alg. 3.1).

    a: (n, p), b: (n, q) with orthonormal columns; m = min(p, q). The SVD of a^T b gives the
    cosines and the principal vectors; for the angles with cos^2 > 1/2 the pairs are refined
    by the SVD of the sine matrix (I - a a^T) b restricted to their right singular subspace,
    which resolves angles down to ~1e-16 rad (the arccos of a cosine cannot). Angles are
    computed as atan2(sin, cos) of each pair.

    Returns (angles (m,) radians ascending, pu (n, m), pv (n, m)) with pu, pv orthonormal,
    Im pu in Im a, Im pv in Im b, and pu[:, j]^T pv[:, j] = cos(angles[j]) >= 0.
    """
    a = a.double()
    b = b.double().to(a.device)
    n, p = a.shape
    q = b.shape[1]
    if p < q:
        angles, pv, pu = principal_vectors(b, a)
        return angles, pu, pv
    if q == 0:
        empty = a.new_zeros(n, 0)
        return a.new_zeros(0), empty, empty.clone()
    y, cos, zh = torch.linalg.svd(a.T @ b, full_matrices=False)  # (p, q), (q,), (q, q)
    z = zh.T
    k = int((cos * cos > 0.5).sum())  # cos is descending: the k smallest angles come first
    # Small angles: SVD of the sine matrix on the right singular subspace of the k largest
    # cosines (an invariant subspace separated from the rest, so z[:, :k] is accurate).
    bk = b @ z[:, :k]
    _, _, wh = torch.linalg.svd(bk - a @ (a.T @ bk), full_matrices=False)
    pv_s = bk @ wh.T.flip(-1)  # ascending sines
    proj = a.T @ pv_s  # (p, k), columns of norm cos > 1/sqrt(2)
    pu_s = a @ (proj / proj.norm(dim=0, keepdim=True))
    # Large angles: straight from the cosine SVD.
    pu = torch.cat([pu_s, a @ y[:, k:]], dim=1)
    pv = torch.cat([pv_s, b @ z[:, k:]], dim=1)
    cosines = (pu * pv).sum(0).clamp_min(0.0)
    sines = (pv - a @ (a.T @ pv)).norm(dim=0)
    angles = torch.atan2(sines, cosines)
    order = torch.argsort(angles, stable=True)
    return angles[order], pu[:, order], pv[:, order]


def slerp(p: Tensor, q: Tensor, t: float | Tensor) -> Tensor:
    """Spherical linear interpolation of unit vectors along the last axis (rows).

    p, q: (..., n) unit vectors; t: scalar or (...) broadcastable, t=0 -> p, t=1 -> q.
    Computed as cos(t theta) p + sin(t theta) w, w the unit direction of q in p^perp and
    theta = 2 atan2(|p - q|, |p + q|), which is stable for p == q (then w = 0, result p).
    Undefined for antipodal p = -q. Returns (..., n) unit vectors, float64.
    """
    p = p.double()
    q = q.double().to(p.device)
    t = torch.as_tensor(t, dtype=torch.float64, device=p.device)
    theta = 2.0 * torch.atan2((p - q).norm(dim=-1), (p + q).norm(dim=-1))
    w = q - (p * q).sum(-1, keepdim=True) * p
    nw = w.norm(dim=-1, keepdim=True)
    w = torch.where(nw > 0, w / nw.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    ang = (t * theta).unsqueeze(-1)
    out = torch.cos(ang) * p + torch.sin(ang) * w
    return out / out.norm(dim=-1, keepdim=True)


def _singular_ratios(gram: Tensor) -> tuple[Tensor, Tensor]:
    """sigma_j / ||Dy||_2 ascending and the left-singular vectors of Dy from G = Dy Dy^T.

    gram: (B, n_f, n_f) -> ratios (B, n_f), vectors (B, n_f, n_f) (columns). A sample with
    Dy = 0 gets ratios 0 (every direction is in its co-kernel).
    """
    g = symmetric(gram.double())
    evals, evecs = torch.linalg.eigh(g)
    sv = evals.clamp_min(0.0).sqrt()
    top = sv[..., -1:]
    ratios = torch.where(top > 0, sv / top.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return ratios, evecs


def _spaces(ratios: Tensor, evecs: Tensor, rho: float) -> list[Tensor]:
    """S_i = span{U_j | sigma_j < rho ||Dy^(i)||_2} (Algorithm 1, first loop)."""
    return [v[:, r < rho] for r, v in zip(ratios, evecs, strict=True)]


def cokernel_approximation(gram: Tensor, rho: float) -> list[Tensor]:
    """The spaces S_i of Algorithm 1: left-singular vectors of Dy^(i) with singular value
    < rho ||Dy^(i)||_2, from the eigenpairs of G_i (sigma = sqrt(max(lambda, 0))).

    gram: (B, n_f, n_f) -> B orthonormal bases S_i: (n_f, d_i). For rho <= 1 the largest
    singular direction is never included; a sample with Dy = 0 gives S_i = R^{n_f}.
    """
    return _spaces(*_singular_ratios(gram), rho)


def _merge_two(u: Tensor, w_u: float, v: Tensor, w_v: float, max_angle: float) -> Tensor:
    """One step of Algorithm 1's while-loop: the approximate intersection of Im u and Im v.

    Pairs of principal vectors at angle > max_angle degrees are dropped, the rest are
    SLERPed with t = w_V / (w_U + w_V). The SLERPed vectors are orthogonal in exact
    arithmetic (p_U^j, p_V^j are orthogonal to p_U^l, p_V^l for j != l); QR cleans up the
    rounding. u: (n_f, d_u), v: (n_f, d_v) -> (n_f, d) with d <= min(d_u, d_v).
    """
    angles, pu, pv = principal_vectors(u, v)
    keep = angles <= math.radians(max_angle)
    if not bool(keep.any()):
        return u.new_zeros(u.shape[0], 0)
    t = w_v / (w_u + w_v)
    pi = slerp(pu[:, keep].T, pv[:, keep].T, t).T
    basis, _ = torch.linalg.qr(pi)
    return basis


def merge(spaces: list[Tensor], weights: list[float] | None = None, order: str = "sequential",
          max_angle: float = 45.0) -> Tensor:
    """The while-loop of Algorithm 1: merge the (S_i, w_i) two at a time into one space.

    spaces: bases (n_f, d_i); weights w_i default 1. Merging (U, w_U) with (V, w_V) gives
    (span{SLERP(p_U^j, p_V^j; w_V / (w_U + w_V))}, w_U + w_V) over the principal pairs at
    angle <= max_angle degrees. The result depends on the order (Sec. 2.2):
    "sequential": left fold ((S1, S2), S3), ...; "pairwise": balanced tree, neighbours merged
    level by level (an odd last one moves up unchanged); "random:<seed>": two random
    entries of L at a time (Python's random.Random(seed)). An empty space absorbs everything.
    Returns the merged basis U: (n_f, d), float64.
    """
    if not spaces:
        raise ValueError("merge needs at least one space")
    if weights is None:
        weights = [1.0] * len(spaces)
    if len(weights) != len(spaces):
        raise ValueError(f"got {len(spaces)} spaces but {len(weights)} weights")
    n_f = spaces[0].shape[0]
    if any(s.dim() != 2 or s.shape[0] != n_f for s in spaces):
        raise ValueError("all spaces must be (n_f, d_i) matrices with the same n_f")
    items = [(s.double(), float(w)) for s, w in zip(spaces, weights, strict=True)]

    def step(x: tuple[Tensor, float], y: tuple[Tensor, float]) -> tuple[Tensor, float]:
        (u, w_u), (v, w_v) = x, y
        if u.shape[1] == 0 or v.shape[1] == 0:
            return u.new_zeros(n_f, 0), w_u + w_v
        return _merge_two(u, w_u, v, w_v, max_angle), w_u + w_v

    if order == "sequential":
        acc = items[0]
        for item in items[1:]:
            acc = step(acc, item)
        return acc[0]
    if order == "pairwise":
        while len(items) > 1:
            nxt = [step(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
            if len(items) % 2:
                nxt.append(items[-1])
            items = nxt
        return items[0][0]
    if order.startswith("random:"):
        try:
            seed = int(order.split(":", 1)[1])
        except ValueError:
            msg = f"order 'random:<seed>' needs an integer seed, got {order!r}"
            raise ValueError(msg) from None
        rng = random.Random(seed)
        while len(items) > 1:
            i, j = sorted(rng.sample(range(len(items)), 2))
            y = items.pop(j)
            x = items.pop(i)
            items.append(step(x, y))
        return items[0][0]
    raise ValueError(f"unknown merge order {order!r}: use 'sequential', 'pairwise' or "
                     f"'random:<seed>'")


def complement(basis: Tensor) -> Tensor:
    """Orthonormal basis of (Im basis)^perp. basis: (n_f, d) of full column rank ->
    (n_f, n_f - d), float64 (the identity for d = 0)."""
    basis = basis.double()
    q, _ = torch.linalg.qr(basis, mode="complete")
    return q[:, basis.shape[1]:]


def critical_space(gram: Tensor, rho: float, order: str = "sequential") -> Tensor:
    """Algorithm 1 end to end: C_M, an orthonormal basis of C = U^perp, U the merged
    co-kernel approximation of the samples' S_i (Sec. 2.2).

    gram: (B, n_f, n_f) -> (n_f, n_f - dim U). dim C = n_f where some S_i is empty (e.g.
    rho below every sample's smallest singular ratio); dim C = 0 for rho > 1.
    """
    return _critical_from(*_singular_ratios(gram), rho, order)


def _critical_from(ratios: Tensor, evecs: Tensor, rho: float, order: str) -> Tensor:
    """``critical_space`` from precomputed singular ratios and vectors (one eigh per G)."""
    return complement(merge(_spaces(ratios, evecs, rho), order=order))


@dataclass(frozen=True)
class CriticalSpace:
    """A critical space found by ``rho_search``: dim C, the rho interval that yields it,
    C_M: (n_f, dim) and its orthogonal complement (the trivial solutions): (n_f, n_f - dim)."""

    dim: int
    rho_min: float
    rho_max: float
    basis: Tensor
    complement: Tensor


def rho_search(gram: Tensor, *, order: str = "sequential", lo: float = 1e-6, hi: float = 1.0,
               tol: float = 1e-4, max_evals: int = 200, grid: int = 9,
               include_full: bool = False) -> list[CriticalSpace]:
    """Sec. 3.5's nested intervals: every distinct dim C that rho in [lo, hi] yields.

    Algorithm 1 is run on a log-spaced grid of ``grid`` values of rho, then every bracket
    whose ends give different dims is bisected at its geometric midpoint (widest bracket
    first) until hi/lo of each bracket is <= 1 + tol (a relative, i.e. log-scale, tolerance)
    or ``max_evals`` runs of Algorithm 1 are spent. Jumps in either direction are followed,
    so a non-monotone dim(rho) is recorded as found: each dim once, with the hull of the rho
    values that gave it.

    rho_min / rho_max are the smallest / largest *evaluated* rho giving that dim (inner
    bounds: both give the dim; the next evaluated rho beyond each lies within a factor
    1 + tol unless it is lo / hi or max_evals ran out). ``basis`` is computed at the
    geometric midpoint of [rho_min, rho_max] (at the evaluated rho nearest to it if the
    midpoint gives another dim). dim 0 (no critical space, only for rho > 1) is never
    returned; the full space dim = n_f (nothing removed) only with ``include_full``, since
    callers add R^{n_f} themselves. gram: (B, n_f, n_f). Sorted by dim descending.
    """
    if not 0 < lo < hi:
        raise ValueError(f"rho_search needs 0 < lo < hi, got lo={lo}, hi={hi}")
    if grid < 2:
        raise ValueError(f"grid needs at least 2 points, got {grid}")
    ratios, evecs = _singular_ratios(gram)
    n_f = ratios.shape[-1]
    dims: dict[float, int] = {}

    def evaluate(rho: float) -> None:
        dims[rho] = _critical_from(ratios, evecs, rho, order).shape[1]

    log_lo, log_hi = math.log(lo), math.log(hi)
    points = [math.exp(log_lo + (log_hi - log_lo) * i / (grid - 1)) for i in range(grid)]
    points[0], points[-1] = lo, hi
    for rho in points:
        evaluate(rho)
    heap = [(-math.log(b / a), a, b) for a, b in zip(points[:-1], points[1:], strict=True)
            if dims[a] != dims[b]]
    heapq.heapify(heap)
    limit = math.log1p(tol)
    while heap and len(dims) < max_evals:
        width, a, b = heapq.heappop(heap)
        if -width <= limit:
            continue
        mid = math.sqrt(a * b)
        evaluate(mid)
        for x, y in ((a, mid), (mid, b)):
            if dims[x] != dims[y]:
                heapq.heappush(heap, (-math.log(y / x), x, y))

    found: list[CriticalSpace] = []
    for dim in sorted(set(dims.values()), reverse=True):
        if dim == 0 or (dim == n_f and not include_full):
            continue
        rhos = sorted(r for r, d in dims.items() if d == dim)
        r_min, r_max = rhos[0], rhos[-1]
        mid = math.sqrt(r_min * r_max)
        basis = _critical_from(ratios, evecs, mid, order)
        if basis.shape[1] != dim:
            nearest = min(rhos, key=lambda r: abs(math.log(r / mid)))
            basis = _critical_from(ratios, evecs, nearest, order)
        found.append(CriticalSpace(dim, r_min, r_max, basis, complement(basis)))
    return found


def best_space(angles_by_space: dict[int, Tensor]) -> int:
    """Sec. 3.5: the critical space that performs best on samples with known targets.

    angles_by_space maps a key (e.g. dim C) to the angles (n,) of its predictions; returns
    the key with the lowest median angle (NaNs ignored; ties go to the first key).
    """
    best_key, best_med = None, math.inf
    for key, angles in angles_by_space.items():
        values = torch.as_tensor(angles, dtype=torch.float64).flatten()
        med = float(torch.nanmedian(values)) if values.numel() else math.nan
        if not math.isnan(med) and med < best_med:
            best_key, best_med = key, med
    if best_key is None:
        raise ValueError("best_space needs at least one space with a finite median angle")
    return best_key

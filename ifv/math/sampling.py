"""Target objective sampling with uniform Hoyer sparseness (Supp. S2).

Uniform samples of the sphere are almost never sparse in high dimension (Fig. S1), so the
target objectives x are drawn such that hoyer(x) ~ U[0, 1] (Supp. S2, Sec. 3.2): draw
s ~ U[0, 1] and x0 uniformly on the sphere, then minimize (hoyer(x) - s)^2 on the sphere
by curvilinear search (Wen & Yin, 2013), starting at x0. Because hoyer is sign
invariant, the search runs over nonnegative x = y*y / ||y*y|| with y on the sphere
(``match_sparseness``), which keeps the objective smooth where components vanish.

``hoyer`` is the sparseness measure of Hoyer (2004); ``curvilinear_search`` is the feasible
Cayley-transform method with Barzilai-Borwein steps and the nonmonotone line search of
Zhang & Hager (2004), as in Wen & Yin (2013), vectorized over independent rows.
All functions are pure and work in float64; randomness comes only from the given generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

DTYPE = torch.float64

Objective = Callable[[Tensor], tuple[Tensor, Tensor]]


def hoyer(x: Tensor) -> Tensor:
    """Hoyer (2004) sparseness along the last axis; x: (..., n) -> (...).

    hoyer(x) = (sqrt(n) - ||x||_1 / ||x||_2) / (sqrt(n) - 1): 1 for a (signed) canonical
    vector, 0 when all |x_i| are equal (Supp. S2). Sign invariant. Requires n >= 2; the
    value is NaN for x = 0.
    """
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"hoyer sparseness needs n >= 2 components, got {n}")
    x = x.to(DTYPE)
    sqrt_n = math.sqrt(n)
    ratio = x.abs().sum(-1) / torch.linalg.vector_norm(x, dim=-1)
    return (sqrt_n - ratio) / (sqrt_n - 1.0)


def _hoyer_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
    """hoyer(x) and its gradient; x: (N, n) -> ((N,), (N, n)).

    d/dx (||x||_1/||x||_2) = sign(x)/||x||_2 - ||x||_1 x/||x||_2^3, with sign(0) = 0 (a
    subgradient where a component vanishes).
    """
    n = x.shape[-1]
    sqrt_n = math.sqrt(n)
    l1 = x.abs().sum(-1, keepdim=True)
    l2 = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    ratio = l1 / l2
    h = ((sqrt_n - ratio) / (sqrt_n - 1.0)).squeeze(-1)
    d_ratio = torch.sign(x) / l2 - l1 * x / l2**3
    return h, -d_ratio / (sqrt_n - 1.0)


def _cayley_curve(x: Tensor, g: Tensor, tau: Tensor) -> Tensor:
    """Point Y(tau) of the Cayley curve of Wen & Yin (2013), rowwise on the sphere.

    Y(tau) = (I + tau/2 W)^{-1} (I - tau/2 W) X with W = G X^T - X G^T = U V^T,
    U = [G, X], V = [X, -G]. By Sherman-Morrison-Woodbury,
    Y(tau) = X - tau U (I_2 + tau/2 V^T U)^{-1} V^T X, so only a 2 x 2 system per row is
    solved (here in closed form). x, g: (N, n); tau: (N,) -> (N, n).
    """
    a = (x * g).sum(-1)  # X^T G
    b = (x * x).sum(-1)  # X^T X
    c = (g * g).sum(-1)  # G^T G
    t = tau / 2.0
    # M = I_2 + tau/2 V^T U = [[1 + t a, t b], [-t c, 1 - t a]]; rhs = V^T X = [b, -a].
    m11, m12, m21, m22 = 1.0 + t * a, t * b, -t * c, 1.0 - t * a
    det = m11 * m22 - m12 * m21  # = 1 + t^2 (b c - a^2) >= 1 (Cauchy-Schwarz)
    z1 = (m22 * b - m12 * -a) / det
    z2 = (-m21 * b + m11 * -a) / det
    return x - tau[:, None] * (g * z1[:, None] + x * z2[:, None])


def curvilinear_search(
    fun: Objective,
    x0: Tensor,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
    xtol: float = 1e-12,
    ftol: float = 1e-15,
    tau0: float = 1e-3,
    rho: float = 1e-4,
    delta: float = 0.1,
    eta: float = 0.85,
    max_backtracks: int = 40,
    window: int = 5,
    tau_min: float = 1e-20,
    tau_max: float = 1e20,
) -> Tensor:
    """Minimize ``fun`` on the unit sphere, each row of x0: (N, n) independently -> (N, n).

    Feasible method of Wen & Yin (2013, Alg. 2) for the sphere (p = 1): steps follow the
    Cayley curve Y(tau) (``_cayley_curve``) with alternating Barzilai-Borwein step sizes,
    accepted by the nonmonotone Armijo line search of Zhang & Hager (2004):
    F(Y(tau)) <= C - rho tau ||grad_R F||^2, backtracking tau <- delta tau, and
    C <- (eta Q C + F) / Q with Q <- eta Q + 1.

    ``fun(x)`` takes the whole batch x: (N, n) and returns (value (N,), euclidean gradient
    (N, n)); row i of the outputs must depend on row i of x only (rows that have stopped
    are passed unchanged). Every row has its own tau, C and Q and stops once its Riemannian
    gradient norm ||G - X X^T G|| < tol, or once it stagnates: ||X_new - X|| < xtol and
    |F_new - F| / (1 + |F|) < ftol, or both means over the last ``window`` iterations are
    below 10 xtol / 10 ftol (the stopping rule of Wen & Yin's code). A row also stops when
    backtracking finds no sufficient decrease before its trial step drops below xtol (or
    within ``max_backtracks`` reductions); it then keeps its current point.
    x0 is normalized first; a 1-D x0: (n,) is treated as one row. The result is normalized.
    """
    squeeze = x0.dim() == 1
    x = x0.to(DTYPE).reshape(-1, x0.shape[-1]) if squeeze else x0.to(DTYPE)
    if x.dim() != 2:
        raise ValueError(f"x0 must be (N, n) or (n,), got shape {tuple(x0.shape)}")
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    n_rows = x.shape[0]

    def evaluate(y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f, g = fun(y)
        f, g = f.to(DTYPE).reshape(n_rows), g.to(DTYPE)
        rgrad = g - y * (y * g).sum(-1, keepdim=True)  # G - X X^T G
        return f, g, rgrad

    f, g, rgrad = evaluate(x)
    nrm2 = (rgrad * rgrad).sum(-1)
    tau = torch.full((n_rows,), tau0, dtype=DTYPE)
    c_ref, q = f.clone(), torch.ones(n_rows, dtype=DTYPE)
    active = nrm2.sqrt() >= tol
    x_hist = torch.full((window, n_rows), math.inf, dtype=DTYPE)
    f_hist = torch.full((window, n_rows), math.inf, dtype=DTYPE)

    for it in range(max_iter):
        if not bool(active.any()):
            break
        # Nonmonotone line search, all rows at once; `need` rows still backtrack.
        need = active.clone()
        x_new, f_new, g_new, r_new = x.clone(), f.clone(), g.clone(), rgrad.clone()
        tau_try = torch.where(active, tau, torch.zeros_like(tau))
        stationary = torch.zeros_like(active)
        for _ in range(max_backtracks + 1):
            y = torch.where(need[:, None], _cayley_curve(x, g, tau_try), x_new)
            fy, gy, ry = evaluate(y)
            ok = need & (fy <= c_ref - rho * tau_try * nrm2)
            x_new = torch.where(ok[:, None], y, x_new)
            f_new = torch.where(ok, fy, f_new)
            g_new = torch.where(ok[:, None], gy, g_new)
            r_new = torch.where(ok[:, None], ry, r_new)
            # No sufficient decrease even for a step below xtol: numerically stationary.
            tiny = need & ~ok & (torch.linalg.vector_norm(y - x, dim=-1) < xtol)
            stationary |= tiny
            need = need & ~ok & ~tiny
            if not bool(need.any()):
                break
            tau_try = torch.where(need, tau_try * delta, tau_try)
        stationary |= need

        s_step = x_new - x
        y_step = r_new - rgrad
        x_diff = torch.linalg.vector_norm(s_step, dim=-1)
        f_diff = (f_new - f).abs() / (f.abs() + 1.0)

        # Alternating Barzilai-Borwein step sizes on the Riemannian gradients.
        sy = (s_step * y_step).sum(-1).abs()
        if it % 2 == 0:
            tau_bb = (s_step * s_step).sum(-1) / sy
        else:
            tau_bb = sy / (y_step * y_step).sum(-1)
        tau_bb = torch.where(torch.isfinite(tau_bb) & (tau_bb > 0), tau_bb, tau)
        tau_bb = tau_bb.clamp(tau_min, tau_max)

        q_new = eta * q + 1.0
        c_new = (eta * q * c_ref + f_new) / q_new

        x = torch.where(active[:, None], x_new, x)
        f = torch.where(active, f_new, f)
        g = torch.where(active[:, None], g_new, g)
        rgrad = torch.where(active[:, None], r_new, rgrad)
        nrm2 = (rgrad * rgrad).sum(-1)
        tau = torch.where(active, tau_bb, tau)
        q = torch.where(active, q_new, q)
        c_ref = torch.where(active, c_new, c_ref)

        x_hist = torch.cat([x_hist[1:], x_diff[None]])
        f_hist = torch.cat([f_hist[1:], f_diff[None]])
        stalled = (x_diff < xtol) & (f_diff < ftol)
        stalled |= (x_hist.mean(0) < 10 * xtol) & (f_hist.mean(0) < 10 * ftol)
        active = active & ~stalled & ~stationary & (nrm2.sqrt() >= tol)

    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x[0] if squeeze else x


def uniform_sphere(n: int, dim: int, generator: torch.Generator) -> Tensor:
    """n points uniform on the unit sphere in R^dim (normalized Gaussians); -> (n, dim)."""
    x = torch.randn(n, dim, generator=generator, dtype=DTYPE)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def _squared_hoyer_objective(s: Tensor) -> Objective:
    """y: (N, n) -> ((hoyer(y*y) - s)^2 (N,), gradient (N, n)) for targets s: (N,).

    Since y*y >= 0, hoyer(y*y) = (sqrt(n) - ||y||_2^2 / ||y*y||_2) / (sqrt(n) - 1) is smooth
    in y (no |.| kink), and grad_y = 2 y * grad_x.
    """

    def fun(y: Tensor) -> tuple[Tensor, Tensor]:
        h, dh = _hoyer_and_grad(y * y)
        r = h - s
        return r * r, (4.0 * r)[:, None] * y * dh

    return fun


def match_sparseness(
    x0: Tensor, s: Tensor, *, max_iter: int = 2000, chunk_size: int = 2**14
) -> Tensor:
    """Nonnegative unit x near x0 with hoyer(x) = s (Supp. S2); x0: (N, n), s: (N,) -> (N, n).

    Minimizes (hoyer(x) - s)^2 over the sphere by ``curvilinear_search`` started at |x0|.
    hoyer is sign invariant, so the search may stay in the nonnegative orthant, which it
    does through x = y*y / ||y*y|| with y on the unit sphere, starting at y0 = sqrt(|x0|)
    (normalized), i.e. at x = |x0|/||x0||. Searching x directly stalls for s near 1: the
    |x_i| kink at x_i = 0 makes the components that must vanish oscillate around 0, and the
    line search shrinks the steps to nothing. In y the objective is smooth; its only
    critical points with hoyer != s are saddles and the global extrema (hoyer = 0 or 1).
    Rows are independent and are searched in chunks of at most ``chunk_size`` entries:
    tensors below torch's intra-op parallel grain size avoid thread oversubscription,
    which on a busy CPU made a 150 x 512 batch 70x slower than five 30 x 512 chunks.
    """
    x0 = x0.to(DTYPE)
    n = x0.shape[-1]
    if n < 2:
        raise ValueError(f"hoyer sparseness needs n >= 2 components, got {n}")
    if x0.shape[0] == 0:
        return x0.clone()
    y0, s = x0.abs().sqrt(), s.to(DTYPE)
    rows = max(1, chunk_size // n)
    y = torch.cat(
        [
            curvilinear_search(
                _squared_hoyer_objective(s[i : i + rows]), y0[i : i + rows], max_iter=max_iter
            )
            for i in range(0, y0.shape[0], rows)
        ]
    )
    x = y * y
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def sample_sparse(n: int, n_f: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n nonnegative unit targets in R^{n_f} with hoyer(x) ~ U[0, 1] (Supp. S2).

    Draws s ~ U[0, 1] per target, then x0 uniform on the sphere, and moves x0 to
    sparseness s with ``match_sparseness`` (curvilinear search on (hoyer(x) - s)^2).
    Returns (x: (n, n_f) nonnegative unit rows, s: (n,) requested sparseness), float64.
    """
    if n_f < 2:
        raise ValueError(f"sparse sampling needs n_f >= 2, got {n_f}")
    s = torch.rand(n, generator=generator, dtype=DTYPE)
    x0 = uniform_sphere(n, n_f, generator)
    if n == 0:
        return x0, s
    return match_sparseness(x0, s), s


def canonical(indices: Sequence[int] | Tensor, n_f: int) -> Tensor:
    """Canonical vectors e_i as rows; indices: (K,) -> (K, n_f) float64."""
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    if idx.numel() and (idx.min() < 0 or idx.max() >= n_f):
        raise ValueError(f"indices must lie in [0, {n_f}), got {idx.tolist()}")
    x = torch.zeros(idx.numel(), n_f, dtype=DTYPE)
    x[torch.arange(idx.numel()), idx] = 1.0
    return x


def sample_targets(n_random: int, n_canonical: int, n_f: int, seed: int) -> tuple[Tensor, Tensor]:
    """The paper's target set (Sec. 3.4, Supp. S2): canonical vectors, then sparse samples.

    The first ``n_canonical`` rows are e_i, with i running through random permutations of
    range(n_f) (a fresh one each time n_f are used up); then ``n_random`` rows from
    ``sample_sparse``. One torch.Generator seeded with ``seed`` drives everything, so equal
    seeds give bitwise equal output. Returns (x: (N, n_f) float64, unit, nonnegative;
    is_canonical: (N,) bool), N = n_canonical + n_random.
    """
    if n_random < 0 or n_canonical < 0:
        raise ValueError("n_random and n_canonical must be nonnegative")
    if n_f < 1:
        raise ValueError(f"n_f must be positive, got {n_f}")
    gen = torch.Generator().manual_seed(seed)
    n_perm = -(-n_canonical // n_f)
    perms = [torch.randperm(n_f, generator=gen) for _ in range(n_perm)]
    idx = torch.cat(perms)[:n_canonical] if perms else torch.zeros(0, dtype=torch.long)
    x_can = canonical(idx, n_f)
    if n_random:
        x_rand, _ = sample_sparse(n_random, n_f, gen)
    else:
        x_rand = torch.zeros(0, n_f, dtype=DTYPE)
    x = torch.cat([x_can, x_rand])
    is_canonical = torch.zeros(x.shape[0], dtype=torch.bool)
    is_canonical[:n_canonical] = True
    return x, is_canonical

"""The second-order condition for another tool's realizations (docs/robust-ifv.md Sec. 9).

Adam at a fixed learning rate with a fresh transform every step leaves a realization v off
the stationary point v*(x) of the expectation by a displacement delta, so the mean
gradient there is g(x) ~ H_x delta, H_x the Hessian of the expected loss
L_x = E_T[-S_x(y_T(v))] in P's parameters. The target is the x whose implied displacement
H_x^-1 g(x) is shortest. For a fixed H this is the robust solver (``solve_transformed``) on
the Jacobians in the metric M = (H^2 + (mu ||H||_2)^2)^-1 (Tikhonov-damped: H is
indefinite there), whose cross-Grams are Dy_t M Dy_s^T.

    OMP_NUM_THREADS=1 python -m lab.robust_newton --maker adam --adam 512 \\
        --ks 32 --hessian-draws 4 --iters 3 --out newton.json

measures, on ``--n`` realizations (``lab.robust_curve.realizations``): the response,
the robust solver, the oracle (the metric of the target's own H) and the iteration
x_{i+1} = the solver in the metric of H at x_i from ``--start`` (the mean response or the
solver's answer). H is a forward difference of the loss' gradient over the first
``--hessian-draws`` of the K sampled transforms: n_p + 1 gradients of that many draws per
realization and step (about 3 min of one core for 4 draws on the 32 px stand-in).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from ifv.math.inverse import symmetric, unit
from ifv.math.jacobian import jacobian
from ifv.math.metrics import angular_distance
from ifv.math.objective import ResponseFn, significance
from ifv.math.robust import Robust, solve_transformed
from lab.robust_curve import add_realization_args, emit, median, realizations


def loss_gradients(responses: Sequence[ResponseFn], v: Tensor, x: Tensor, k: float
                   ) -> Tensor:
    """grad_v of (1/K) sum_t -S_x(y_t(v)) per sample. v: (B, *shape); x: (n_f,) one
    objective for all -> (B, n_p) float64."""
    v = v.detach().requires_grad_(True)
    xs = x.to(v.dtype).expand(v.shape[0], -1)
    g = torch.zeros(v.shape[0], v[0].numel(), dtype=torch.float64, device=v.device)
    for r in responses:
        (gt,) = torch.autograd.grad(-significance(xs, r(v), k).sum() / len(responses), v)
        g += gt.reshape(v.shape[0], -1).double()
    return g


def expected_hessian(responses: Sequence[ResponseFn], v: Tensor, x: Tensor, k: float, *,
                     eps: float = 1e-3, chunk: int = 128, progress: bool = False) -> Tensor:
    """H of L_x = (1/K) sum_t -S_x(y_t(v)) at one realization, by forward differences of
    the gradient along each parameter (``chunk`` of them per batch), symmetrized.

    v: (1, *shape); x: (n_f,) -> (n_p, n_p) float64."""
    n_p = v[0].numel()
    basis = torch.eye(n_p, dtype=v.dtype, device=v.device).reshape(n_p, *v.shape[1:])
    g0 = loss_gradients(responses, v, x, k)
    h = torch.empty(n_p, n_p, dtype=torch.float64, device=v.device)
    for j in tqdm(range(0, n_p, chunk), desc="H", disable=not progress, leave=False):
        h[:, j:j + chunk] = ((loss_gradients(responses, v + eps * basis[j:j + chunk], x, k)
                              - g0) / eps).T
    return symmetric(h)


def displacement_factor(h: Tensor, mu: float) -> Tensor:
    """W with W W^T = (H^2 + (mu ||H||_2)^2)^-1, so that ||W^T g|| is the damped length of
    the Newton step H^-1 g. h: (n_p, n_p) -> (n_p, n_p) float64."""
    lam, vecs = torch.linalg.eigh(symmetric(h.double()))
    damp = mu * lam.abs().max()
    return vecs * (lam**2 + damp**2).rsqrt()


def metric_cross(jac: Tensor, w: Tensor) -> Tensor:
    """The cross-Grams Dy_t M Dy_s^T, M = W W^T, of one realization's K Jacobians.
    jac: (K, n_f, n_p); w: (n_p, r) -> (K n_f, K n_f) float64."""
    a = jac.double().reshape(-1, jac.shape[-1]) @ w.double()
    return a @ a.T


def solve_in_metric(ys: Tensor, jac: Tensor, w: Tensor, k: float) -> Tensor:
    """The robust solver (relative estimator) on one realization's Jacobians in the metric
    W W^T. ys: (K, n_f); jac: (K, n_f, n_p); w: (n_p, r) -> x: (n_f,)."""
    return solve_transformed(ys[None], metric_cross(jac, w)[None], k).x[0]


def _realization(a: argparse.Namespace, responses: Sequence[ResponseFn], v: Tensor,
                 target: Tensor) -> dict:
    """The angles of one realization v: (1, *shape) to its target: (n_f,)."""
    ys, jac = zip(*(jacobian(resp, v, method="loop") for resp in responses), strict=True)
    ys = torch.cat(ys).double()  # (K, n_f)
    jac = torch.cat(jac)  # (K, n_f, n_p)
    plain = solve_in_metric(ys, jac, torch.eye(jac.shape[-1], dtype=torch.float64,
                                                device=jac.device), a.k)
    response = unit(ys).mean(0)

    def step(at: Tensor) -> Tensor:
        h = expected_hessian(responses[:a.hessian_draws], v, unit(at.double()).float(), a.k,
                             progress=True)
        return solve_in_metric(ys, jac, displacement_factor(h, a.mu), a.k)

    def angle(t: Tensor) -> float:
        return round(float(angular_distance(target, t)), 2)

    row = {"response": angle(response), "robust": angle(plain), "oracle": angle(step(target)),
           "iterations": []}
    x = response if a.start == "response" else plain
    for _ in range(a.iters):
        x = step(x)
        row["iterations"].append(angle(x))
    return row


def measure(a: argparse.Namespace) -> dict:
    """Every angle of the module's docstring, per realization, and their medians."""
    _, b, x, r, fv = realizations(a)
    responses, _ = b.robust_inputs(Robust(draws="sampled", samples=a.ks, seed=a.inv_seed), fv)
    rows = []
    for i in tqdm(range(a.n), desc="realizations"):
        rows.append(_realization(a, responses, r["v"][i:i + 1], x[i]))
        print(json.dumps({"realization": i, **rows[-1]}), flush=True)

    out = {"k": a.k, "param": a.param, "maker": a.maker, "n": a.n, "adam": a.adam,
           "ks": a.ks, "hessian_draws": a.hessian_draws, "mu": a.mu, "start": a.start,
           "iters": a.iters}
    for key in ("response", "robust", "oracle"):
        out[key] = median(torch.tensor([row[key] for row in rows], dtype=torch.float64))
    out["iterated"] = [median(torch.tensor([row["iterations"][j] for row in rows],
                                           dtype=torch.float64)) for j in range(a.iters)]
    return {**out, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m lab.robust_newton")
    add_realization_args(ap)
    ap.add_argument("--ks", type=int, default=32, help="transform samples of the condition")
    ap.add_argument("--inv-seed", type=int, default=12345, help="seed of the sampled draws")
    ap.add_argument("--hessian-draws", type=int, default=4,
                    help="the first this many of the K draws make H")
    ap.add_argument("--mu", type=float, default=1e-3, help="damping, relative to ||H||_2")
    ap.add_argument("--start", default="response", choices=["response", "solver"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out", help="write the JSON line here too")
    a = ap.parse_args()
    if not 1 <= a.hessian_draws <= a.ks:
        ap.error(f"--hessian-draws must be in [1, --ks={a.ks}], got {a.hessian_draws}")
    emit(measure(a), a.out)


if __name__ == "__main__":
    main()

"""The one stage chain of Grad-IFV on a bound setting:

    realize (FV, Sec. 3.2) -> grams (y and G = Dy Dy^T, or G_T at kinks; Sec. 2.1,
    docs/kinks.md) -> solve (Opt. (3), or the robust solver, docs/robust-ifv.md)
    -> reoptimize (Sec. 3.4)

``ifv run`` (``ifv.run.pipeline``), ``ifv invert`` and the API (``ifv.faces.api``),
``ifv compare`` and the lab scripts call these stages and nothing else. Each stage computes
in parts (batches of samples); with a stage cache and a key, each finished part is kept
and the whole entry is stored (``ifv.run.store.StageCache``), so a rerun reads it and a
killed run resumes. Without a key, a stage computes in memory. Every output is on the
bound network's device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ifv.device import synchronize, to
from ifv.math.fv import FVSettings, realize
from ifv.math.kink import Kinks, response_and_grams, solve_at_kinks
from ifv.math.metrics import next_residual, relative_residual, ssim
from ifv.math.robust import Robust, prior_weight, quantities, solve_quantities
from ifv.run.setting import Bound
from ifv.run.store import StageCache

# a stage's version: raise it where its computation changes, so old entries are not read
STAGE_VERSION = {"realizations": 2, "jacobian": 2, "reopt": 3, "robust": 1, "compare_fv": 1}
# rendered images kept per re-optimized objective (images.npz, Fig. 4 and S2)
N_IMAGES = 16
Log = Callable[[str], None]
Compute = Callable[[Any], dict[str, Any]]


class _InMemory:
    """The parts of a stage computed without a cache: nothing to find, nothing kept."""

    def load(self, start: int, stop: int) -> None:
        return None

    def save(self, start: int, stop: int, out: dict[str, Any]) -> None:
        pass


def kinks_key(kinks: Kinks) -> dict[str, Any]:
    """The tangent condition's part of the Jacobian stage's key: its settings where it is
    on, nothing where it is off (the entries of plain Opt. (3) keep their keys)."""
    return {"kinks": asdict(kinks)} if kinks.on else {}


@dataclass
class Inverted:
    """Grad-IFV of realizations on one critical space: y (B, n_f); gram (B, n_f, n_f), G or
    G_T; x (B, n_f) unit; residual and next_residual (B,): the prediction's and the
    runner-up's relative residuals (the robust solver: its relative stationarity; NaN where
    it has none); kink_dim (B,): dim N of the switch normals (0: none found, or kinks off)."""

    y: Tensor
    gram: Tensor
    x: Tensor
    residual: Tensor
    next_residual: Tensor
    kink_dim: Tensor


@dataclass
class Chain:
    """The stages on ``bound``'s network; ``cache``: where keyed stages are kept (None:
    every stage computes in memory)."""

    bound: Bound
    cache: StageCache | None = None
    progress: bool = True
    log: Log = print

    def stage(self, name: str, key: dict[str, Any] | None, compute: Compute
              ) -> dict[str, Any]:
        """``compute(parts)``'s output on the device: from the cache where ``key`` is given
        and the chain has one (stage ``name`` at ``STAGE_VERSION[name]``), else in memory."""
        if self.cache is None or key is None:
            out = compute(_InMemory())
        else:
            out = self.cache.get_or_compute(name, STAGE_VERSION[name], key, compute)
        return to(out, self.bound.device)

    def realize(self, x: Tensor, fv: FVSettings, seed: int, *,
                key: dict[str, Any] | None = None, name: str = "realizations",
                desc: str = "FV realizations") -> dict[str, Any]:
        """FV's realizations of the targets x (N, n_f) (Opt. (1), ``ifv.math.fv.realize``
        under the setting's transforms and prior): v (N, *shape), loss, grad_norm, iters
        (N,) and seconds."""
        b = self.bound

        def compute(parts: Any) -> dict[str, Any]:
            r = realize(b.response, x.to(b.device), b.setting.k, fv, init=b.init, seed=seed,
                        progress=self.progress, desc=desc, store=parts,
                        transform=b.transform, prior=b.prior)
            return {"v": r.v, "loss": r.loss, "grad_norm": r.grad_norm, "iters": r.iters,
                    "seconds": r.seconds}

        return self.stage(name, key, compute)

    def grams(self, v: Tensor, kinks: Kinks, *, method: str = "auto",
              max_bytes: int = 1 << 30, batch: int | None = None,
              key: dict[str, Any] | None = None) -> dict[str, Any]:
        """y (N, n_f), the Gram matrices G_T (``gram``) and G (``gram_plain``) (N, n_f, n_f)
        and dim N (``kink_dim``, N) at the realizations v (``ifv.math.kink``; with ``kinks``
        off G_T = G), in parts of ``batch`` samples, and seconds."""
        n = len(v)
        batch = batch or n

        def compute(parts: Any) -> dict[str, Any]:
            done = []
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                part = parts.load(start, stop)
                if part is None:
                    t0 = time.perf_counter()
                    y, plain, gram, dim = response_and_grams(
                        self.bound.response, v[start:stop], kinks, method=method,
                        max_bytes=max_bytes, progress=self.progress)
                    synchronize(v.device)
                    part = {"y": y, "gram": gram, "seconds": time.perf_counter() - t0}
                    if kinks.on:
                        part |= {"gram_plain": plain, "kink_dim": dim}
                    parts.save(start, stop, part)
                done.append(to(part, v.device))
            out = {name: torch.cat([p[name] for p in done]) for name in done[0]
                   if name != "seconds"}
            return {**out, "seconds": sum(float(p["seconds"]) for p in done)}

        out = self.stage("jacobian", key, compute)
        return {"gram_plain": out["gram"],
                "kink_dim": torch.zeros(n, dtype=torch.long, device=v.device), **out}

    def robust(self, v: Tensor, bases: Sequence[Tensor], rb: Robust, *,
               fv: FVSettings | None = None, seed: int = 0, max_bytes: int = 1 << 30,
               key: dict[str, Any] | None = None) -> dict[str, Any]:
        """The robust solver (docs/robust-ifv.md) at the realizations v (N, *shape), per
        part of ``rb.batch_size`` realizations: ``ifv.math.robust.quantities`` on its K
        transform draws (FV's own where ``rb`` uses them: ``fv`` and ``seed`` made the
        realizations) and the solution in every critical space C_M of ``bases``. Returns x
        (S, N, n_f), residual, next_residual, converged, prior_weight (S, N), y_mean (N,
        n_f), the mean response over the draws, and seconds."""
        s, n = self.bound.setting, len(v)
        responses, prior = self.bound.robust_inputs(rb, fv, seed)

        def compute(parts: Any) -> dict[str, Any]:
            done = []
            for start in range(0, n, rb.batch_size):
                stop = min(start + rb.batch_size, n)
                part = parts.load(start, stop)
                if part is None:
                    t0 = time.perf_counter()
                    q = quantities(responses, v[start:stop], prior=prior, cross=s.k > 0,
                                   max_bytes=max_bytes)
                    sols = [solve_quantities(q, s.k, basis.double(), tol=rb.tol,
                                             max_iter=rb.max_iter, estimator=rb.estimator)
                            for basis in bases]
                    nan = torch.full((stop - start,), float("nan"), dtype=torch.float64,
                                     device=v.device)
                    weight = [nan if q.prior is None else
                              prior_weight(sol.x, q.y, q.prior, q.prior_norm, s.k)
                              for sol in sols]
                    synchronize(v.device)
                    part = {"x": torch.stack([sol.x for sol in sols]),
                            "residual": torch.stack([sol.residual for sol in sols]),
                            "next_residual": torch.stack([sol.next_residual for sol in sols]),
                            "converged": torch.stack([sol.converged for sol in sols]),
                            "prior_weight": torch.stack(weight),
                            "y_mean": q.y.mean(1), "seconds": time.perf_counter() - t0}
                    parts.save(start, stop, part)
                    if self.progress:
                        print(f"robust solver: {stop} of {n} realizations", flush=True)
                done.append(to(part, v.device))
            names = [k for k in done[0] if k not in ("y_mean", "seconds")
                     and all(k in p for p in done)]  # parts kept before next_residual
            out = {name: torch.cat([p[name] for p in done], dim=1) for name in names}
            return {**out, "y_mean": torch.cat([p["y_mean"] for p in done]),
                    "seconds": sum(float(p["seconds"]) for p in done)}

        return self.stage("robust", key, compute)

    def reoptimize(self, v: Tensor, objectives: dict[str, Tensor], reopt: FVSettings,
                   seed: int, *, key: dict[str, Any] | None = None) -> dict[str, Any]:
        """FV from the realizations v (N, *shape) w.r.t. each objective (N, n_f) of
        ``objectives`` (Sec. 3.4): ``ssim_NAME`` (N,) between the realization and its
        re-optimization, ``after_NAME``, the first ``N_IMAGES`` re-optimized renders, and
        seconds."""
        b = self.bound

        def compute(parts: Any) -> dict[str, Any]:
            names = list(objectives)
            x_all = torch.cat([objectives[o] for o in names])
            v_all = v.repeat(len(names), *([1] * (v.dim() - 1)))
            r = realize(b.response, x_all, b.setting.k, reopt, v0=v_all, seed=seed,
                        progress=self.progress, desc="re-opt", store=parts,
                        transform=b.transform, prior=b.prior)
            t0 = time.perf_counter()
            before = b.param.render(v)
            after = {o: b.param.render(m) for o, m in zip(names, r.v.split(len(v)),
                                                          strict=True)}
            return {**{f"ssim_{o}": ssim(before, a) for o, a in after.items()},
                    **{f"after_{o}": a[:N_IMAGES].half() for o, a in after.items()},
                    "seconds": r.seconds + time.perf_counter() - t0}

        return self.stage("reopt", key, compute)

    def invert(self, v: Tensor, basis: Tensor, kinks: Kinks, rb: Robust, *,
               fv: FVSettings | None = None, seed: int = 0, method: str = "auto",
               max_bytes: int = 1 << 30) -> Inverted:
        """Grad-IFV of realizations v (B, *shape) in the critical space C_M ``basis`` (n_f,
        d): Opt. (3) on G_T (``grams``), or, where the setting is robust FV, the robust
        solver (``robust``), computed in memory."""
        g = self.grams(v, kinks, method=method, max_bytes=max_bytes)
        y, gram, k = g["y"], g["gram"], self.bound.setting.k
        if self.bound.robust:
            r = self.robust(v, [basis], rb, fv=fv, seed=seed, max_bytes=max_bytes)
            x, residual, nxt = r["x"][0], r["residual"][0], r["next_residual"][0]
        else:
            x = solve_at_kinks(y, gram, k, basis, g["kink_dim"])
            residual, nxt = relative_residual(x, y, gram, k), next_residual(y, gram, k, basis)
        return Inverted(y=y, gram=gram, x=x, residual=residual, next_residual=nxt,
                        kink_dim=g["kink_dim"])

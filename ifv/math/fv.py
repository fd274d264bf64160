"""Feature visualization by activation maximization (Sec. 3.2), and re-optimization (Sec. 3.4).

A batch of targets is optimized together, first by Adam, then by L-BFGS. The L-BFGS here is
batched but per sample: every sample has its own curvature history, its own Armijo line
search and its own stopping test, so one sample's line search never holds back or pushes
another (samples are independent: the network is in eval mode). Samples that have
converged leave the batch.

With transformation robustness (``ifv.math.transform``) every Adam step draws a fresh transform T
for the batch and follows -S_x(N~_T(v)), as Lucid and Lucent do; L-BFGS, which needs one
deterministic objective, then minimizes the mean of -S_x(N~_T(v)) over
``transform_samples`` fixed draws of the run's seed, so that the realization is a
stationary point of that estimate of E_T (docs/robust-ifv.md). A prior lambda R o P is
added to the loss in both phases; Adam leaves it out at first and then ramps its weight in
(``prior_delay``, ``prior_ramp``), L-BFGS uses lambda itself, so the realization is a
stationary point of the objective with the prior.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ifv.device import synchronize, to
from ifv.math.objective import Response, ResponseFn, responses_under, significance
from ifv.math.transform import Op, Transform
from ifv.validate import count, number, share

# A prior's term of the loss: parameters v (B, *shape) -> lambda R(P(v)) (B,).
PriorFn = Callable[[Tensor], Tensor]


def _checked(check: Callable[..., Any], **options: Any) -> dict[str, Any]:
    """A field's metadata: the validator (``ifv.validate``) ``from_config`` applies."""
    return {"check": partial(check, **options)}


@dataclass(frozen=True)
class FVSettings:
    """Step counts and learning rates of FV (Sec. 3.2: 800 Adam + 300 L-BFGS for DenseNet).
    Each field carries its check; ``from_config`` validates ``fv.*`` field by field."""

    adam_steps: int = field(default=800, metadata=_checked(count))
    adam_lr: float = field(default=0.05, metadata=_checked(number, strict=True))
    lbfgs_steps: int = field(default=300, metadata=_checked(count))
    history: int = field(default=10, metadata=_checked(count, low=1))
    tol: float = field(default=1e-7, metadata=_checked(number))
    batch_size: int = field(default=64, metadata=_checked(count, low=1))
    # with transforms: the fixed draws L-BFGS averages over
    transform_samples: int = field(default=16, metadata=_checked(count, low=1))
    # with a prior: Adam's share of steps before lambda starts rising ...
    prior_delay: float = field(default=0.2, metadata=_checked(share))
    # ... and the share of the rest over which it rises from 0 to 1
    prior_ramp: float = field(default=1.0, metadata=_checked(number))
    # Adam's last share of steps whose iterates are averaged (0: the last iterate)
    adam_average: float = field(default=0.0, metadata=_checked(share))

    @classmethod
    def from_config(cls, node: Any, prefix: str = "fv") -> FVSettings:
        """``fv.*`` of a composed config, each value checked under its key (prefix.name)."""
        return cls(**{f.name: f.metadata["check"](f"{prefix}.{f.name}", node[f.name])
                      for f in fields(cls)})


def settings_key(settings: FVSettings, transforms: bool, prior: bool) -> dict[str, float | int]:
    """The settings that shape a realization, for a stage cache's key: without transforms
    ``transform_samples`` plays no part, without a prior ``prior_delay`` and ``prior_ramp``
    none, and ``adam_average`` only where it is not 0 (the last iterate: the keys of before)."""
    out = asdict(settings)
    if not settings.adam_average:
        del out["adam_average"]
    if not transforms:
        del out["transform_samples"]
    if not prior:
        del out["prior_delay"], out["prior_ramp"]
    return out


@dataclass
class FVResult:
    """Realizations and their convergence record.

    v: (N, *shape) parameters; y: (N, n_f) responses; loss: (N,) final -S_x(y);
    grad_norm: (N,) ||grad_v f_x||; iters: (N,) L-BFGS iterations each sample used.
    """

    v: Tensor
    y: Tensor
    loss: Tensor
    grad_norm: Tensor
    iters: Tensor
    seconds: float


def losses(response: ResponseFn, v: Tensor, x: Tensor, k: float, *,
           samples: Sequence[Op] | None = None, prior: PriorFn | None = None) -> Tensor:
    """-S_x(N~(v)) per sample: (B,). With fixed transforms ``samples`` (``response`` a
    ``Response``): the mean of -S_x(N~_T(v)) over them; with ``prior``: plus lambda R(P(v))."""
    if samples is None:
        f = -significance(x, response(v), k)
    else:
        assert isinstance(response, Response), "transforms need a Response (P before N)"
        f = torch.stack([-significance(x, r(v), k)
                         for r in responses_under(response, samples)]).mean(0)
    return f if prior is None else f + prior(v)


def _loss_grad(response: ResponseFn, v: Tensor, x: Tensor, k: float, *,
               samples: Sequence[Op] | None = None, prior: PriorFn | None = None
               ) -> tuple[Tensor, Tensor]:
    """Per-sample losses (B,) and their gradients w.r.t. v (B, *shape)."""
    with torch.enable_grad():
        v = v.detach().requires_grad_(True)
        f = losses(response, v, x, k, samples=samples, prior=prior)
        (g,) = torch.autograd.grad(f.sum(), v)
    return f.detach(), g


def ramp(step: int, steps: int, share: float, delay: float = 0.0) -> float:
    """The prior's factor at Adam step ``step`` (0-based) of ``steps``: 0 over the first
    ``delay`` share of the steps, then rising linearly to 1 over the first ``share`` of the
    remaining ones (share 0: 1 from the end of the delay on). A prior from the first step,
    even ramped, can hold the near-grey initial image flat: TV's gradient outweighs the
    objective's there (docs/robust-ifv.md Sec. 9)."""
    start = delay * steps
    if step < start:
        return 0.0
    if share <= 0:
        return 1.0
    return min(1.0, (step + 1 - start) / (share * (steps - start)))


def averaged_steps(steps: int, share: float) -> int:
    """How many of Adam's last iterates ``adam`` averages: ceil(share steps), at most
    ``steps``; 0 for share 0 (the last iterate alone)."""
    return min(steps, math.ceil(share * steps))


def adam(response: ResponseFn, v: Tensor, x: Tensor, k: float, steps: int, lr: float,
         bar: tqdm | None = None, *, transform: Transform | None = None,
         generator: torch.Generator | None = None, prior: PriorFn | None = None,
         prior_ramp: float = 0.0, prior_delay: float = 0.0, average: float = 0.0) -> Tensor:
    """``steps`` Adam steps on every sample of the batch (elementwise, hence per sample).
    With ``transform``: each step draws one transform for the batch from ``generator``; with
    ``prior``: its weight times ``ramp(step, steps, prior_ramp, prior_delay)``. Returns the
    last iterate, or with ``average`` the mean of the iterates after each of the last
    ``averaged_steps(steps, average)`` steps (Polyak-Ruppert averaging: at a fixed rate with a
    fresh transform each step the iterates scatter around the expectation's stationary point,
    and their mean lies near it; docs/robust-ifv.md Sec. 9)."""
    v = v.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    tail = averaged_steps(steps, average)
    total = torch.zeros_like(v) if tail else None
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        samples = None if transform is None else [transform.sample(generator)]
        f = losses(response, v, x, k, samples=samples)
        if prior is not None:
            f = f + ramp(i, steps, prior_ramp, prior_delay) * prior(v)
        f.sum().backward()
        opt.step()
        if total is not None and i >= steps - tail:
            total += v.detach()
        if bar is not None:
            bar.update()
    return v.detach() if total is None else total / tail


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product of (B, n) tensors: (B,)."""
    return (a * b).sum(-1)


def lbfgs(response: ResponseFn, v: Tensor, x: Tensor, k: float, steps: int, history: int = 10,
          tol: float = 1e-7, bar: tqdm | None = None, *, samples: Sequence[Op] | None = None,
          prior: PriorFn | None = None) -> tuple[Tensor, Tensor]:
    """Batched L-BFGS with a per-sample two-loop recursion and Armijo backtracking, on
    ``losses`` (with fixed transforms ``samples`` and a ``prior`` if given).

    A sample stops when its loss decreases by less than ``tol * max(1, |f|)`` in an
    iteration or when no step along its direction decreases the loss. All state lives on
    v's device; the host reads only two index sets per iteration (the active samples and
    the line search's open ones), to shrink the batch. Returns the optimized v and the
    number of iterations each sample used.
    """
    shape = v.shape
    n = shape[0]
    dev = v.device
    v = v.detach().clone().reshape(n, -1)
    f, g = _loss_grad(response, v.reshape(shape), x, k, samples=samples, prior=prior)
    g = g.reshape(n, -1)
    s_hist = torch.zeros((history, *v.shape), dtype=v.dtype, device=dev)
    y_hist = torch.zeros_like(s_hist)
    rho = torch.zeros(history, n, dtype=v.dtype, device=dev)
    head = 0
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    fresh = torch.ones(n, dtype=torch.bool, device=dev)
    for _ in range(steps):
        idx = active.nonzero().squeeze(1)  # the one read of the active set per iteration
        if idx.numel() == 0:
            break
        gi = g[idx]
        # two-loop recursion, vectorized over the active samples
        q = gi.clone()
        order = [(head - 1 - j) % history for j in range(history)]
        alphas = []
        for j in order:
            a = rho[j, idx] * _dot(s_hist[j, idx], q)
            q -= a.unsqueeze(1) * y_hist[j, idx]
            alphas.append(a)
        newest = order[0]
        sy = _dot(s_hist[newest, idx], y_hist[newest, idx])
        yy = _dot(y_hist[newest, idx], y_hist[newest, idx])
        gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp_min(1e-30), torch.zeros_like(sy))
        first = fresh[idx] | (gamma == 0)
        gamma = torch.where(first, 1.0 / gi.abs().sum(1).clamp_min(1e-30), gamma)
        r = gamma.unsqueeze(1) * q
        for j, a in zip(reversed(order), reversed(alphas), strict=True):
            b = rho[j, idx] * _dot(y_hist[j, idx], r)
            r += (a - b).unsqueeze(1) * s_hist[j, idx]
        slope = _dot(-r, gi)
        bad = slope >= 0  # not a descent direction: steepest descent instead
        d = torch.where(bad.unsqueeze(1), -gi, -r)
        slope = torch.where(bad, -_dot(gi, gi), slope)
        # per-sample Armijo backtracking from t = 1; one read of the open samples per trial
        t = torch.ones(len(idx), dtype=v.dtype, device=dev)
        accepted = torch.zeros(len(idx), dtype=torch.bool, device=dev)
        f_new = f[idx].clone()
        g_new = gi.clone()
        for _ in range(20):
            todo = (~accepted).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            trial = v[idx[todo]] + t[todo].unsqueeze(1) * d[todo]
            ft, gt = _loss_grad(response, trial.reshape(-1, *shape[1:]), x[idx[todo]], k,
                                samples=samples, prior=prior)
            ok = torch.isfinite(ft) & (ft <= f[idx[todo]] + 1e-4 * t[todo] * slope[todo])
            accepted[todo] = ok
            f_new[todo] = torch.where(ok, ft, f_new[todo])
            g_new[todo] = torch.where(ok.unsqueeze(1), gt.reshape(len(todo), -1), g_new[todo])
            t[todo] = torch.where(ok, t[todo], 0.5 * t[todo])
        step = t.unsqueeze(1) * d
        s_new = torch.where(accepted.unsqueeze(1), step, torch.zeros_like(step))
        y_new = g_new - gi
        sy_new = _dot(s_new, y_new)
        rho_new = torch.where(sy_new > 1e-10 * _dot(y_new, y_new).sqrt() * s_new.norm(dim=1),
                              1.0 / sy_new.clamp_min(1e-30), torch.zeros_like(sy_new))
        s_hist[head, idx] = s_new
        y_hist[head, idx] = y_new
        rho[head, idx] = rho_new
        head = (head + 1) % history
        decrease = f[idx] - f_new
        v[idx] = v[idx] + s_new
        f[idx] = f_new
        g[idx] = g_new
        iters[idx] += 1
        fresh[idx] = False
        done = (~accepted) | (decrease <= tol * f_new.abs().clamp_min(1.0))
        active[idx] = ~done
        if bar is not None:
            bar.update()
    return v.reshape(shape), iters


class BatchStore(Protocol):
    """Where ``realize`` keeps finished batches so that a rerun resumes (a stage cache's
    parts)."""

    def load(self, start: int, stop: int) -> dict[str, Tensor] | None: ...

    def save(self, start: int, stop: int, out: dict[str, Tensor]) -> None: ...


def realize(response: ResponseFn, x: Tensor, k: float, settings: FVSettings = FVSettings(), *,
            init: Callable[[int, torch.Generator], Tensor] | None = None,
            v0: Tensor | None = None, seed: int = 0, progress: bool = True,
            desc: str = "FV", store: BatchStore | None = None,
            transform: Transform | None = None, prior: PriorFn | None = None) -> FVResult:
    """Realizations I* = P(v*) of the targets x (N, n_f), Opt. (1) with S_x of Sec. 2: the
    one FV entry point.

    Starts from ``init(n, generator)`` (a CPU generator seeded by ``seed``) or from given
    parameters ``v0`` (N, *shape); re-optimization (Sec. 3.4) is FV from the realizations
    with ``lbfgs_steps=0``. Everything runs on the device of the initial parameters (``init``
    moves its CPU draw there, e.g. ``ifv.run.setting.Bound.init``). Batches of
    ``settings.batch_size``, each optimized by itself: with a ``store``, a batch found there
    is taken as it is and each new one is saved, so an interrupted call resumes with the
    same result. ``seconds`` adds the batches' own times.

    ``transform``: transformation robustness (``response`` must be a ``Response``): Adam
    draws its transforms from a CPU generator seeded by ``seed`` and the batch's start, so
    a batch's draws do not depend on the others; L-BFGS averages over
    ``settings.transform_samples`` fixed draws seeded by ``seed`` too, and ``loss`` and
    ``grad_norm`` are of that average. ``prior``: lambda R o P added to the loss (v -> (B,)),
    left out over Adam's first ``settings.prior_delay`` share of steps and then ramped in
    over ``settings.prior_ramp`` of the rest (``ramp``). Adam's result is the mean of its
    iterates over its last ``settings.adam_average`` share of steps (default 0: the last
    iterate).
    """
    if (init is None) == (v0 is None):
        raise ValueError("realize needs exactly one of init and v0")
    n = x.shape[0]
    v0 = v0.detach().clone() if v0 is not None else init(n, torch.Generator().manual_seed(seed))
    dev = v0.device
    x = x.to(device=dev, dtype=v0.dtype)
    samples = None if transform is None else lbfgs_draws(transform, settings, seed)
    per_batch = settings.adam_steps + settings.lbfgs_steps
    nb = -(-n // settings.batch_size)
    bar = tqdm(total=nb * per_batch, desc=desc, disable=not progress, unit="step", leave=False)
    out_v, out_iters, seconds = [], [], 0.0
    for start in range(0, n, settings.batch_size):
        stop = min(start + settings.batch_size, n)
        done = store.load(start, stop) if store is not None else None
        if done is None:
            t0 = time.perf_counter()
            before = bar.n
            draws = (None if transform is None
                     else torch.Generator().manual_seed(_batch_seed(seed, start)))
            vb = adam(response, v0[start:stop], x[start:stop], k, settings.adam_steps,
                      settings.adam_lr, bar, transform=transform, generator=draws, prior=prior,
                      prior_ramp=settings.prior_ramp, prior_delay=settings.prior_delay,
                      average=settings.adam_average)
            it = torch.zeros(vb.shape[0], dtype=torch.long, device=dev)
            if settings.lbfgs_steps:
                vb, it = lbfgs(response, vb, x[start:stop], k, settings.lbfgs_steps,
                               settings.history, settings.tol, bar, samples=samples,
                               prior=prior)
            synchronize(dev)
            done = {"v": vb, "iters": it,
                    "seconds": torch.tensor(time.perf_counter() - t0, dtype=torch.float64)}
            bar.update(per_batch - (bar.n - before))
            if store is not None:
                store.save(start, stop, done)
        else:
            done = to(done, dev)
            bar.update(per_batch)
        out_v.append(done["v"])
        out_iters.append(done["iters"])
        seconds += float(done["seconds"])
    bar.close()
    t0 = time.perf_counter()
    v = torch.cat(out_v)
    f, grad = _loss_grad(response, v, x, k, samples=samples, prior=prior)
    with torch.no_grad():
        y = response(v)
    synchronize(dev)
    return FVResult(v=v, y=y.detach(), loss=f, grad_norm=grad.flatten(1).norm(dim=1),
                    iters=torch.cat(out_iters), seconds=seconds + time.perf_counter() - t0)


def lbfgs_draws(transform: Transform, settings: FVSettings, seed: int) -> list[Op]:
    """The ``settings.transform_samples`` fixed transforms whose mean objective ``realize``'s
    L-BFGS minimizes for the run's ``seed``: the realization is a stationary point of that
    average, so the robust solver inverts exactly with them (docs/robust-ifv.md)."""
    return transform.samples(settings.transform_samples, _batch_seed(seed, -1))


def _batch_seed(seed: int, start: int) -> int:
    """The seed of the transforms Adam draws for the batch that starts at sample ``start``
    (``start`` -1: L-BFGS's fixed draws)."""
    return seed * 1_000_003 + start + 1

"""Robust Grad-IFV on the DenseNet stand-in: median angles and the curve of angle against
the number K of transform samples. What these commands measured, and on which network, is in
docs/robust-ifv.md, Sec. 12 ("What it measures").

    OMP_NUM_THREADS=2 python -m lab.robust_curve --k 2 --prior none --out k2.json
    python -m lab.robust_curve --plot k2.json k0.json --figure robust_curve.png

Realizations of ``--n`` targets (half canonical) under the standard transforms sized to 32
px (``--maker ifv``: ifv's FV, Adam with a fresh transform per step, then L-BFGS on
``--fv-samples`` fixed draws; ``--maker adam``: the loop of Lucid and Lucent, Adam at a
fixed lr with a fresh draw of the standard transforms every step and no L-BFGS, its last
iterate or, with ``--adam-average S``, the mean of its iterates over the last share S of the
steps;
``--maker lucent``: the same loop with the ``lucent`` preset, its 224 px upsample included,
slow on a CPU). They are inverted by
plain Grad-IFV and by the robust solver (both estimators, ``ifv.math.robust.ESTIMATORS``) on
FV's own L-BFGS draws (``inversion.draws=fv``; ifv's maker only) and on the first K of
K_max draws of their own seed (``sampled``) for every K in ``--ks``. Prints one JSON line
(and writes it to ``--out``); ``--plot`` draws the curves of such files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ifv.errors import UserError
from ifv.files import atomic_write, check_file
from ifv.math.fv import FVSettings
from ifv.math.inverse import solve, unit
from ifv.math.kink import Kinks
from ifv.math.metrics import angular_distance, random_objective
from ifv.math.robust import (
    ESTIMATORS,
    Quantities,
    Robust,
    mean_gram,
    quantities,
    solve_quantities,
)
from ifv.math.sampling import sample_targets
from ifv.run.setting import Bound, Setting
from ifv.run.stages import Chain

# a realization whose pixels' standard deviation is below this is flat: FV collapsed to the
# prior (the measured collapses have 0.002 to 0.03, the others 0.13 to 0.34)
FLAT = 0.05


def _first(q: Quantities, n_t: int) -> Quantities:
    """The quantities of the first n_t transform samples."""
    b, k_max, n_f = q.y.shape
    blocks = q.cross.reshape(b, k_max, n_f, k_max, n_f)[:, :n_t, :, :n_t]
    cross = blocks.reshape(b, n_t * n_f, n_t * n_f)
    return Quantities(y=q.y[:, :n_t], cross=cross, mean_gram=mean_gram(cross, n_t),
                      second=torch.diagonal(blocks, dim1=1, dim2=3).mean(-1),
                      prior=None if q.prior is None else q.prior[:, :n_t],
                      prior_norm=q.prior_norm, evaluations=n_t)


def median(t: torch.Tensor) -> float:
    """The median of ``t``, rounded to 0.01 as the JSON lines report angles."""
    return round(float(t.double().median()), 2)


def realizations(a: argparse.Namespace) -> tuple[Setting, Bound, torch.Tensor, dict,
                                                 FVSettings]:
    """The setting, its bound network, the ``a.n`` targets x (half canonical), FV's
    realizations of them by ``a.maker`` through the stage chain (``Chain.realize``: v,
    loss, grad_norm, iters; see the module's docstring) and FV's settings (the arguments of
    ``add_realization_args``)."""
    spec = a.prior if a.prior_weight is None else {"name": a.prior, "weight": a.prior_weight}
    s = Setting.make(k=a.k, param=a.param, device="cpu", prior=spec,
                     transforms="lucent" if a.maker == "lucent" else "standard")
    b = s.bind(progress=False)
    x, _ = sample_targets(a.n - a.n // 2, a.n // 2, b.n_f, a.seed)
    x = x.float()
    if a.maker == "ifv":
        fv = FVSettings(adam_steps=a.adam, lbfgs_steps=a.lbfgs, batch_size=a.n,
                        transform_samples=a.fv_samples, prior_ramp=a.prior_ramp,
                        prior_delay=a.prior_delay, adam_average=a.adam_average)
    else:  # another tool's loop: Adam at a fixed lr, a fresh transform each step
        fv = FVSettings(adam_steps=a.adam, lbfgs_steps=0, batch_size=a.n, prior_ramp=0.0,
                        prior_delay=0.0, adam_average=a.adam_average)
    return s, b, x, Chain(b).realize(x, fv, a.seed), fv


def measure(a: argparse.Namespace) -> dict:
    """The realizations and every inversion of them (see the module's docstring)."""
    ks = [int(t) for t in a.ks.split(",")]
    s, b, x, r, fv = realizations(a)
    v = r["v"]
    g = Chain(b, progress=False).grams(v, Kinks(samples=0))
    plain, _ = solve(g["y"], g["gram"], a.k)
    angle = lambda t: median(angular_distance(x, t))  # noqa: E731
    flat = b.param.render(v).flatten(1).std(1) < FLAT
    out = {"k": a.k, "prior": a.prior, "prior_weight": s.prior["weight"],
           "prior_ramp": fv.prior_ramp, "prior_delay": fv.prior_delay, "param": a.param,
           "maker": a.maker, "n": a.n, "adam": a.adam, "adam_average": fv.adam_average,
           "flat": int(flat.sum()),
           "lbfgs": fv.lbfgs_steps, "fv_samples": a.fv_samples, "inv_seed": a.inv_seed,
           "plain": angle(plain), "response": angle(g["y"]),
           "random": angle(random_objective(a.n, b.n_f, torch.Generator().manual_seed(1))),
           "fv_draws": {}, "sampled": {e: {} for e in ESTIMATORS}}
    if a.maker == "ifv":
        own, prior = b.robust_inputs(Robust(draws="fv"), fv, a.seed)
        q = quantities(own, v, prior=prior, cross=True)
        out["fv_draws"] = {e: angle(solve_quantities(q, a.k, estimator=e).x)
                           for e in ESTIMATORS}
    sampled, prior = b.robust_inputs(Robust(draws="sampled", samples=max(ks),
                                            seed=a.inv_seed), fv, a.seed)
    q = quantities(sampled, v, prior=prior, cross=True)
    out["mean_response"] = angle(unit(q.y.double()).mean(1))
    for n_t in ks:
        for e in ESTIMATORS:
            out["sampled"][e][n_t] = angle(solve_quantities(_first(q, n_t), a.k,
                                                            estimator=e).x)
    return out


def plot(paths: Sequence[str], figure: str) -> None:
    """Median angle against K (log axis) per file and estimator, with the response's and
    plain Grad-IFV's angles and FV's own draws as markers at K = fv_samples."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1, 4.2), squeeze=False,
                             sharey=True)
    for ax, r in zip(axes[0], runs, strict=True):
        for e, style in zip(ESTIMATORS, ("-o", "--s"), strict=True):
            ks = sorted(int(n) for n in r["sampled"][e])
            ax.plot(ks, [r["sampled"][e][str(n)] for n in ks], style,
                    label=f"robust, sampled draws ({e})")
        for e, marker in zip(ESTIMATORS, ("*", "P"), strict=True):
            if e in r["fv_draws"]:
                ax.plot([r["fv_samples"]], [r["fv_draws"][e]], marker, ms=12,
                        label=f"robust, FV's own draws ({e})")
        ax.axhline(r["response"], color="gray", ls=":", label="feature response")
        ax.axhline(r["plain"], color="red", ls=":", label="plain Grad-IFV")
        if r["maker"] == "ifv":
            ax.axhline(10, color="green", lw=0.8, label="goal: 10 deg")
        else:
            ax.axhline(20, color="green", lw=0.8, ls="--",
                       label="aim for another tool's loop: 20 deg")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("transform samples K")
        maker = {"ifv": "ifv FV", "adam": "Adam only", "lucent": "Adam only, lucent preset"
                 }.get(r["maker"], r["maker"])
        if r.get("adam_average"):
            maker += f", iterates averaged over the last {r['adam_average']:.0%}"
        ax.set_title(f"k={r['k']:g}, prior={r['prior']}, P_{r.get('param', 'rgb')}, {maker}",
                     fontsize=9)
    axes[0][0].set_ylabel("median angle to the target (deg)")
    axes[0][0].set_ylim(0, 95)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    atomic_write(Path(figure), lambda p: fig.savefig(p, dpi=130, format="png"))
    plt.close(fig)


def emit(record: dict, out: str | None) -> None:
    """Print ``record`` as one JSON line, and write it to ``out`` too where given."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        atomic_write(Path(out), lambda p: p.write_text(line + "\n"))


def add_realization_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of ``realizations``: k, the prior, P, the targets and the maker."""
    ap.add_argument("--k", type=float, default=2.0)
    ap.add_argument("--prior", default="none")
    ap.add_argument("--prior-weight", type=float, help="lambda (default: ifv.math.prior.WEIGHTS)")
    ap.add_argument("--prior-ramp", type=float, default=FVSettings.prior_ramp,
                    help="fv.prior_ramp of ifv's maker (0: the full weight at once)")
    ap.add_argument("--prior-delay", type=float, default=FVSettings.prior_delay,
                    help="fv.prior_delay of ifv's maker (0: the prior from the first step)")
    ap.add_argument("--param", default="rgb", help="P: rgb, fft or ffte (the 1/f-scaled "
                    "Fourier image of Lucid and Lucent)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--maker", default="ifv", choices=["ifv", "adam", "lucent"])
    ap.add_argument("--adam", type=int, default=300)
    ap.add_argument("--adam-average", type=float, default=0.0, help="fv.adam_average: Adam's "
                    "last share of steps whose iterates are averaged (0: the last iterate)")
    ap.add_argument("--lbfgs", type=int, default=200)
    ap.add_argument("--fv-samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0, help="of the targets and of FV")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m lab.robust_curve")
    add_realization_args(ap)
    ap.add_argument("--ks", default="1,2,4,8,16,32,64")
    ap.add_argument("--inv-seed", type=int, default=12345, help="seed of the sampled draws")
    ap.add_argument("--out", help="write the JSON line here too")
    ap.add_argument("--plot", nargs="+", metavar="JSON", help="draw these runs' curves")
    ap.add_argument("--figure", default="robust_curve.png")
    a = ap.parse_args()
    path, key = (a.figure, "--figure") if a.plot else (a.out, "--out")
    try:  # the output before the measurement, not after it
        if path:
            check_file(path, key)
    except UserError as exc:
        raise SystemExit(f"robust_curve: error: {exc}") from None
    if a.plot:
        plot(a.plot, a.figure)
        print(a.figure)
        return
    emit(measure(a), a.out)


if __name__ == "__main__":
    main()

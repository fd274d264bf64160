"""Robust Grad-IFV on the DenseNet stand-in: median angles and the curve of angle against
the number K of transform samples (docs/robust-ifv.md, "Measured").

    OMP_NUM_THREADS=1 python -m experiments.robust_curve --k 2 --prior none --n 8

Realizations of ``--n`` targets (half canonical) under the standard transforms sized to 32
px (``--maker ifv``: ifv's FV, Adam with a fresh transform per step, then L-BFGS on
``--fv-samples`` fixed draws; ``--maker lucent``: a Lucent-like loop, Adam at a fixed lr
with a fresh ``lucent`` preset transform every step and no L-BFGS); then the robust
quantities on K_max transform samples of their own seed, and the solution on the first K of
them for every K in ``--ks``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch

from ifv.fv import FVSettings, realize
from ifv.inverse import solve, unit
from ifv.jacobian import response_and_gram
from ifv.metrics import angular_distance, random_objective
from ifv.prior import Prior
from ifv.robust import Quantities, quantities, responses_under, solve_quantities
from ifv.sampling import sample_targets
from ifv.setting import Setting
from ifv.transform import preset


def _first(q: Quantities, n_t: int, k_max: int) -> Quantities:
    """The quantities of the first n_t transform samples."""
    b, _, n_f = q.y.shape
    cross = q.cross.reshape(b, k_max, n_f, k_max, n_f)[:, :n_t, :, :n_t].reshape(
        b, n_t * n_f, n_t * n_f)
    mg = cross.reshape(b, n_t, n_f, n_t, n_f).sum((1, 3)) / n_t**2
    return Quantities(y=q.y[:, :n_t], cross=cross, mean_gram=mg,
                      prior=None if q.prior is None else q.prior[:, :n_t],
                      prior_norm=q.prior_norm, evaluations=n_t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=float, default=2.0)
    ap.add_argument("--prior", default="none")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--maker", default="ifv", choices=["ifv", "lucent"])
    ap.add_argument("--adam", type=int, default=300)
    ap.add_argument("--lbfgs", type=int, default=50)
    ap.add_argument("--fv-samples", type=int, default=16)
    ap.add_argument("--ks", default="1,2,4,8,16,32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--inv-seed", type=int, default=12345,
                    help="seed of the K samples (0 with --seed 0: FV's own L-BFGS draws)")
    a = ap.parse_args()
    ks = [int(t) for t in a.ks.split(",")]
    s = Setting.make(k=a.k, device="cpu", transforms="standard", prior=a.prior)
    b = s.bind(progress=False)
    x, _ = sample_targets(a.n - a.n // 2, a.n // 2, b.n_f, a.seed)
    x = x.float()
    if a.maker == "ifv":
        fv = FVSettings(adam_steps=a.adam, lbfgs_steps=a.lbfgs, batch_size=a.n,
                        transform_samples=a.fv_samples)
        r = realize(b.response, x, a.k, fv, init=b.init, seed=a.seed, progress=False,
                    transform=b.transform, prior=b.prior)
    else:  # Lucent-like: Adam at a fixed lr, a fresh lucent transform each step
        fv = FVSettings(adam_steps=a.adam, lbfgs_steps=0, batch_size=a.n)
        r = realize(b.response, x, a.k, fv, init=b.init, seed=a.seed, progress=False,
                    transform=preset("lucent", 32), prior=b.prior)
    v = r.v
    y, gram = response_and_gram(b.response, v, progress=False)
    plain, _ = solve(y, gram, a.k)
    samples = b.transform.samples(max(ks), a.inv_seed)
    prior = None if b.prior is None else Prior(s.prior["name"], b.param)
    q = quantities(responses_under(b.response, samples), v, prior=prior, cross=True)
    med = lambda t: float(t.double().median())  # noqa: E731
    out = {"k": a.k, "prior": a.prior, "maker": a.maker, "n": a.n, "adam": a.adam,
           "inv_seed": a.inv_seed,
           "lbfgs": a.lbfgs if a.maker == "ifv" else 0, "fv_samples": a.fv_samples,
           "plain": med(angular_distance(x, plain)),
           "response": med(angular_distance(x, y)),
           "mean_response": med(angular_distance(x, unit(q.y.double()).mean(1))),
           "random": med(angular_distance(x, random_objective(a.n, b.n_f,
                                                              torch.Generator().manual_seed(1)))),
           "robust": {}}
    for n_t in ks:
        sol = solve_quantities(_first(q, n_t, max(ks)), a.k)
        out["robust"][n_t] = med(angular_distance(x, sol.x))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

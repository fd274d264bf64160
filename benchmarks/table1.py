"""Table 1 on this machine: seconds per sample of FV (I*), Dy + G, x* and re-optimization for
each model of the paper's Table 1, on the CPU and, where CUDA is present, on the GPU, beside
the paper's (GTX 1080 Ti) as ratios; and Dy + G against its floor in the same run.

Run: ``python -m benchmarks.table1 [--device cpu cuda] [--models GN4c DNde ...]
[--out DIR]`` from the checkout (``make bench`` runs it). The networks are the paper-sized
stand-ins (GoogLeNet at 224 px, DenseNet-BC-100) and SRNet at 128 px, with random weights:
speed does not depend on the weights. Per model and device:

- FV: ``a`` Adam steps and ``l`` L-BFGS iterations are timed on one batch, and the paper's
  step counts (``profile=paper``) are charged at those rates: (800 Adam + 300 L-BFGS) for
  DenseNet and SRNet, (3000 + 500) for GoogLeNet, per sample. Samples that converge leave
  L-BFGS early in a real run, so this is an upper bound of the run's time.
- Dy + G: ``ifv.math.jacobian.response_and_gram`` with method auto (and on CUDA each method).
  Its floor: one forward and one VJP vmapped over all n_f one-hot cotangents (in as few
  calls as memory allows), with nothing else: no copy into Dy, no Gram product.
- x*: ``ifv.math.inverse.solve`` for the batch's (y, G).
- re-opt: 500 Adam steps per sample and objective at the re-optimization batch.

On the CPU the batches are small (``--cpu-batch``, default 2) and Dy + G and its floor are
timed for one sample on the first ``--cpu-features`` features (default 32) and scaled by
n_f / 32, the number of backward passes (2 cores take minutes for one GoogLeNet-224
sample's 512); on CUDA FV and re-optimization run at the profile's batches, and Dy + G of
``--gpu-jacobian-batch`` samples (default 8, i.e. 8 n_f cotangents) with every feature. Timings
are best-of-``--repeats`` after a warm-up, with the device synchronized around each. The
CPU runs one thread by default (``--threads``), as ``bench_jacobian.py`` does and for the
same reason: on a shared machine, more threads than free cores make timings 10-30x slower
and noisy.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ifv.device import resolve, synchronize
from ifv.errors import UserError
from ifv.faces.config import compose
from ifv.files import atomic_write, check_outputs
from ifv.math.fv import adam, lbfgs
from ifv.math.inverse import solve
from ifv.math.jacobian import METHODS, cotangent_chunk, response_and_gram, saved_bytes
from ifv.math.objective import ResponseFn
from ifv.math.sampling import uniform_sphere
from ifv.run.setting import Bound, Setting
from paper.reference import TABLE1

OUT_FILES = ("table1_bench.csv", "table1_bench.md")

CPU_BUDGET = 4 << 30  # bytes of the floor's cotangent chunks on the CPU


@dataclass(frozen=True)
class Row:
    """A Table 1 model as ifv runs it: zoo model, layer, aggregation, P, profile network."""

    model: str
    layer: str
    aggregation: str
    param: str
    network: str


ROWS = {
    "GN4c": Row("googlenet_patterns_224", "inception4c", "maxpool_mean", "rgb", "googlenet"),
    "DN[4]cl": Row("densenet_patterns_bc100", "classifier", "identity", "rgb", "densenet"),
    "DNde": Row("densenet_patterns_bc100", "dense3", "maxpool_mean", "rgb", "densenet"),
    "SRNet": Row("srnet", "block8", "maxpool_mean", "geometry_free", "srnet"),
}


def best_of(run: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def floor(fn: ResponseFn, v: torch.Tensor, budget: int) -> None:
    """One forward and the VJP of all n_f one-hot cotangents, vmapped, in as few calls as
    ``budget`` bytes of the backward's intermediates allow; the results are dropped."""
    with torch.no_grad():
        y, vjp_fn = torch.func.vjp(fn, v)
        n_f = y.shape[1]
        eye = torch.eye(n_f, dtype=y.dtype, device=y.device)
        c = cotangent_chunk(n_f, v.shape[0], saved_bytes(fn, v[:1]), budget)
        for s in range(0, n_f, c):
            e = min(s + c, n_f)
            torch.func.vmap(vjp_fn)(eye[s:e, None, :].expand(e - s, v.shape[0], n_f))


def targets(n: int, n_f: int, like: torch.Tensor) -> torch.Tensor:
    return uniform_sphere(n, n_f, torch.Generator().manual_seed(0)).abs().to(like)


def bench(name: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    row = ROWS[name]
    paper = next(p for p in TABLE1 if p.model == name)
    sizes = compose(["profile=paper"]).sizes[row.network]
    s = Setting.make(row.model, row.layer, paper.n_f, row.aggregation, 2, row.param,
                     weights="random", device=str(device))
    b: Bound = s.bind(progress=False)
    fn, like, cpu = b.response, b.like(), device.type == "cpu"
    fv_batch = min(sizes.batch_size, args.cpu_batch) if cpu else sizes.batch_size
    jac_batch = 1 if cpu else min(sizes.jacobian_batch, args.gpu_jacobian_batch)
    re_batch = min(sizes.reopt_batch, args.cpu_batch) if cpu else sizes.reopt_batch
    budget = min(sizes.max_bytes, 1 << 30) if cpu else sizes.max_bytes
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"model": name, "device": str(device), "n_p": b.param.n_p,
                           "n_f": b.n_f, "fv_batch": fv_batch, "jacobian_batch": jac_batch,
                           "reopt_batch": re_batch}

    # Dy + G: on the CPU for the first cpu_features features, scaled to n_f
    n_sub = min(b.n_f, args.cpu_features) if cpu else b.n_f
    fj = fn if n_sub == b.n_f else Setting.make(
        row.model, row.layer, n_sub, row.aggregation, 2, row.param, weights="random",
        device=str(device)).bind(progress=False).response
    scale = b.n_f / n_sub
    out["jacobian_timed_features"] = n_sub

    v, x = b.init(fv_batch, g), targets(fv_batch, b.n_f, like)
    t_adam = best_of(lambda: adam(fn, v, x, 2, args.adam_steps, 0.05), device,
                     args.repeats) / args.adam_steps
    v_opt = adam(fn, v, x, 2, 20, 0.05)  # L-BFGS from an Adam iterate, as in FV
    t_lbfgs = best_of(lambda: lbfgs(fn, v_opt, x, 2, args.lbfgs_steps, tol=0.0), device,
                      args.repeats) / args.lbfgs_steps
    out["fv"] = (sizes.adam_steps * t_adam + sizes.lbfgs_steps * t_lbfgs) / fv_batch

    vj = b.init(jac_batch, g)
    methods = ["auto"] + ([] if cpu else [m for m in METHODS if m != "auto"])
    for m in methods:
        t = best_of(lambda m=m: response_and_gram(fj, vj, method=m, max_bytes=budget), device,
                    args.repeats)
        out["jacobian" if m == "auto" else f"jacobian_{m}"] = t * scale / jac_batch
    free = torch.cuda.mem_get_info(device)[0] // 2 if not cpu else CPU_BUDGET
    out["floor"] = best_of(lambda: floor(fj, vj, free), device,
                           args.repeats) * scale / jac_batch
    out["jacobian_vs_floor"] = out["jacobian"] / out["floor"]

    # x*: the algebra on n_f x n_f matrices, whatever their values
    a = torch.randn(jac_batch, b.n_f, 2 * b.n_f, dtype=torch.float64, generator=g).to(device)
    y, gram = a[..., 0].abs(), a @ a.transpose(1, 2)
    out["predict"] = best_of(lambda: solve(y, gram, 2), device, args.repeats) / jac_batch

    vr, xr = b.init(re_batch, g), targets(re_batch, b.n_f, like)
    t_re = best_of(lambda: adam(fn, vr, xr, 2, args.adam_steps, 0.05), device,
                   args.repeats) / args.adam_steps
    out["reopt"] = sizes.reopt_steps * t_re / re_batch
    for col, p in zip(("fv", "jacobian", "predict", "reopt"), paper.times, strict=True):
        out[f"paper_{col}"] = p
        out[f"{col}_ratio"] = out[col] / p if p > 0 else math.nan
    return out


LABELS = {"fv": "I*", "jacobian": "Dy + G", "predict": "x*", "reopt": "re-opt."}


def markdown(df: pd.DataFrame) -> str:
    """The table: each stage as ours / paper (ratio), and Dy + G against its floor."""
    head = ["Model", "device", "n_p", "n_f", *LABELS.values(), "Dy floor", "Dy + G / floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [r.model, r.device, r.n_p, r.n_f,
                 *(f"{r[c]:.3g} / {r[f'paper_{c}']:.1f} ({_ratio(r[f'{c}_ratio'])})"
                   for c in LABELS),
                 f"{r.floor:.3g}", f"{r.jacobian_vs_floor:.2f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    methods = [f"jacobian_{m}" for m in METHODS if f"jacobian_{m}" in df.columns]
    if methods:
        lines += ["", "Dy + G per method [s/sample]: " + "; ".join(
            f"{r.model} {r.device}: " + ", ".join(
                f"{c.removeprefix('jacobian_')} {r[c]:.3g}" for c in methods if pd.notna(r[c]))
            for _, r in df.iterrows() if any(pd.notna(r[c]) for c in methods))]
    return "\n".join(lines)


def _ratio(r: float) -> str:
    return "-" if math.isnan(r) else f"x{r:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", nargs="+", default=["cpu", "cuda"],
                        help="devices to time (cuda is skipped where absent)")
    parser.add_argument("--models", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--cpu-batch", type=int, default=2)
    parser.add_argument("--cpu-features", type=int, default=32)
    parser.add_argument("--gpu-jacobian-batch", type=int, default=8,
                        help="samples whose Dy + G is timed on CUDA (x n_f cotangents)")
    parser.add_argument("--adam-steps", type=int, default=2)
    parser.add_argument("--lbfgs-steps", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (0: torch's default); see bench_jacobian.py "
                             "for why one thread on a shared machine")
    parser.add_argument("--out", type=Path, help="folder for table1_bench.csv and .md")
    args = parser.parse_args()
    if args.out:  # before the timings, not after them
        try:
            check_outputs(args.out, OUT_FILES, "--out")
        except UserError as exc:
            print(f"table1: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [d for d in args.device if d != "cuda" or torch.cuda.is_available()]
    t0 = time.perf_counter()
    rows = []
    for d in devices:
        dev = resolve(d)
        for name in args.models:
            print(f"{name} on {dev} ...", flush=True)
            rows.append(bench(name, dev, args))
    df = pd.DataFrame(rows)
    text = ("Table 1 on this machine: seconds per sample, ours / paper (GTX 1080 Ti), "
            "ratio ours/paper\n\n" + markdown(df))
    print("\n" + text + f"\n\ntotal {time.perf_counter() - t0:.0f} s")
    if "cuda" in args.device and "cuda" not in devices:
        print("no CUDA device here: GPU rows not measured")
    if args.out:
        csv, md = (args.out / name for name in OUT_FILES)
        atomic_write(csv, lambda p: df.to_csv(p, index=False))
        atomic_write(md, lambda p: p.write_text(text + "\n"))


if __name__ == "__main__":
    main()

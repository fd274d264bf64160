"""The tangent condition's extra cost per sample against FV's own (docs/kinks.md).

Run: ``python -m benchmarks.bench_kinks [--samples 4 16] [--threads N]`` from the checkout
(``make bench`` runs it). Per network (the ReLU networks on real CIFAR-10 at 32 px and
torchvision's MobileNet v2 at ImageNet's 224 px, a 14x14 block output, with random weights:
speed does not depend on the weights), at its tap with 64 features, max pooling + mean,
k = 2, P_rgb, on the CPU, for a batch of ``--batch`` samples (one at 224 px, where only
``--samples``' first K is timed):

- FV: ``a`` Adam steps and ``l`` L-BFGS iterations are timed and charged at the default
  profile's counts (``profile=quick``), per sample; samples that converge leave L-BFGS
  early in a run, so this bounds FV's cost from above.
- Dy + G: Opt. (3)'s stage, ``ifv.math.jacobian.response_and_gram``.
- kinks K: ``ifv.math.kink.tangent_gram`` with K sampled directions (n_f + 2 K W backward
  passes, W = min(n_f, kinks.rows)).

It prints seconds per sample and the ratios of the kinks stage to Dy + G and to FV measured
in the same run (best of ``--repeats`` after a warm-up). One thread by default, as the
other benchmarks, for stable timings on a shared machine.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.table1 import best_of
from ifv.faces.config import compose
from ifv.math.fv import adam, lbfgs
from ifv.math.jacobian import response_and_gram
from ifv.math.kink import Kinks, tangent_gram
from ifv.math.sampling import uniform_sphere
from ifv.run.setting import Setting

CASES = {"ResNet-20 layer3": ("resnet20_cifar", "layer3", False),
         "DenseNet-BC-22 dense3": ("densenet22_cifar", "dense3", False),
         "MobileNet v2 224 px": ("torchvision:mobilenet_v2", "features.7", True)}


def bench(model: str, layer: str, large: bool, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per sample of FV, Dy + G and each kinks setting for one network (``large``:
    one sample, the first K only)."""
    sizes = compose(["profile=quick"]).sizes.densenet
    s = Setting.make(model, layer, 64, "maxpool_mean", 2, "rgb", weights="random",
                     device="cpu")
    b = s.bind(progress=False)
    fn, n, cpu = b.response, 1 if large else args.batch, torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    v = b.param.init(n, g)
    x = uniform_sphere(n, 64, g).abs().to(v)
    out = {
        "adam": best_of(lambda: adam(fn, v, x, 2.0, args.adam, 0.05), cpu, args.repeats)
        / args.adam / n,
        "lbfgs": best_of(lambda: lbfgs(fn, v, x, 2.0, args.lbfgs, tol=0.0), cpu, args.repeats)
        / args.lbfgs / n,
        "Dy + G": best_of(lambda: response_and_gram(fn, v), cpu, args.repeats) / n}
    out["FV"] = out["adam"] * sizes.adam_steps + out["lbfgs"] * sizes.lbfgs_steps
    for k in args.samples[:1] if large else args.samples:
        kinks = Kinks(samples=k)
        out[f"kinks K={k}"] = best_of(lambda kinks=kinks: tangent_gram(fn, v, kinks),
                                      cpu, args.repeats) / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--adam", type=int, default=5)
    parser.add_argument("--lbfgs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = compose(["profile=quick"]).sizes.densenet
    print(f"seconds per sample on the CPU ({args.threads} thread(s)); FV charged at "
          f"profile=quick's {quick.adam_steps} Adam + {quick.lbfgs_steps} L-BFGS steps")
    print(f"{'network':<24}{'stage':<14}{'s/sample':>10}{'/ Dy+G':>9}{'/ FV':>8}")
    for name, (model, layer, large) in CASES.items():
        t = bench(model, layer, large, args)
        for stage in ["FV", "Dy + G", *(k for k in t if k.startswith("kinks"))]:
            print(f"{name:<24}{stage:<14}{t[stage]:>10.3f}{t[stage] / t['Dy + G']:>9.1f}"
                  f"{t[stage] / t['FV']:>8.2f}")


if __name__ == "__main__":
    main()

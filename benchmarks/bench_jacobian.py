"""Time the Jacobian methods of ifv.math.jacobian on small DenseNet-like CNNs (Sec. 2.1, 3.3).

Run: ``python benchmarks/bench_jacobian.py [--extra] [--threads N]``. For every case, each
method ("batched" and "vmap" with all features' cotangents in one backward) computes y and
Dy for the whole batch; it runs once as a warm-up (whose Dy is checked against "loop") and
then three times, and the best of the three is reported in seconds per sample together
with its ratio to "loop" measured in the same run. The last row times
``response_and_gram`` with method auto (the loop on the CPU): Dy plus the float64 Gram
product. ``--extra`` adds alternatives: "batched" with 16 features per is_grads_batched
backward, per-sample vmap(jacrev), and a replicated batch (each sample repeated once per
feature, one backward with one-hot cotangents); it takes several minutes. Table 1 per
device is ``benchmarks/table1.py``.

Threads: torch.set_num_threads(1) by default. The benchmark machine has 2 cores shared
with other jobs; with 2 OpenMP threads and one core busy elsewhere, every parallel region
waits for the descheduled thread, and we measured the same runs 10-30x slower and
dominated by noise (e.g. "loop" 38 s instead of 2.5 s). One thread gives stable,
comparable timings; pass ``--threads 2`` on an idle machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ifv.math.jacobian import METHODS, _jacobian_batched, chunk_size, jacobian, response_and_gram
from ifv.math.objective import ResponseFn


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 bottleneck (2k) - BN-ReLU-3x3 conv (k), concatenated (DenseNet-BC-like)."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(),
            nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], 1)


def dense_net(n_layers: int, growth: int = 12, stem: int = 16) -> nn.Sequential:
    """Stride-2 stem conv and 2x2 average pooling (1/4 resolution), then one dense block of
    ``n_layers``; stem + n_layers * growth channels out. Kept small so that the benchmark
    runs in about a minute on 2 cores."""
    layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
                               nn.AvgPool2d(2)]
    c = stem
    for _ in range(n_layers):
        layers.append(DenseLayer(c, growth))
        c += growth
    return nn.Sequential(*layers)


def make_fn(net: nn.Module, n_f: int) -> ResponseFn:
    """N~ = Agg o N o P_rgb: sigmoid, the net, first n_f channels, 3x3 max-pool + mean."""

    def fn(v: Tensor) -> Tensor:
        a = net(torch.sigmoid(v))[:, :n_f]
        return F.max_pool2d(a, 3, stride=1).mean(dim=(-2, -1))

    return fn


def jacrev_per_sample(fn: ResponseFn, v: Tensor) -> tuple[Tensor, Tensor]:
    """(extra) torch.func.vmap over samples of jacrev of the single-sample function."""
    def single(x: Tensor) -> Tensor:
        return fn(x[None])[0]

    with torch.no_grad():
        jac = torch.func.vmap(torch.func.jacrev(single))(v)  # (B, n_f, *shape)
        return fn(v), jac.reshape(v.shape[0], jac.shape[1], -1)


def replicated(fn: ResponseFn, v: Tensor, features: int = 16) -> tuple[Tensor, Tensor]:
    """(extra) Each sample repeated for ``features`` features, one backward per chunk."""
    batch = v.shape[0]
    with torch.no_grad():
        y = fn(v)
    n_f = y.shape[1]
    dy = v.new_empty((batch, n_f, v[0].numel()))
    for s in range(0, n_f, features):
        e = min(s + features, n_f)
        x = v.detach().repeat(e - s, *([1] * (v.dim() - 1))).requires_grad_(True)
        yr = fn(x).reshape(e - s, batch, n_f)
        picked = yr[torch.arange(e - s), :, torch.arange(s, e)]  # (c, B)
        (g,) = torch.autograd.grad(picked.sum(), x)
        dy[:, s:e] = g.reshape(e - s, batch, -1).transpose(0, 1)
    return y, dy


def best_of(run: Callable[[], object], repeats: int = 3) -> float:
    """Seconds of the fastest of ``repeats`` runs after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench(name: str, shape: tuple[int, int, int], batch: int, n_f: int, stem: int,
          n_layers: int, extra: bool) -> None:
    torch.manual_seed(0)
    net = dense_net(n_layers, stem=stem).eval()
    assert stem + 12 * n_layers >= n_f
    fn = make_fn(net, n_f)
    v = torch.randn(batch, *shape) * 0.5
    n_p = v[0].numel()

    candidates: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {
        m: (lambda m=m: jacobian(fn, v, method=m)) for m in METHODS if m != "auto"}
    if extra:
        candidates["batched, 16 features"] = lambda: _jacobian_batched(
            fn, v.detach().requires_grad_(True), cotangents=16)
        candidates["jacrev per sample"] = lambda: jacrev_per_sample(fn, v)
        candidates["replicated batch"] = lambda: replicated(fn, v)

    print(f"\n{name}: input {shape}, n_p {n_p}, n_f {n_f}, batch {batch}, "
          f"{sum(p.numel() for p in net.parameters())} weights, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    print(f"{'method':<26}{'s/sample':>10}{'x loop':>8}", flush=True)
    times: dict[str, float] = {}
    ref: list[Tensor] = []

    def checked(label: str, run: Callable[[], tuple[Tensor, Tensor]]) -> Callable[[], None]:
        state = {"warm": False}

        def call() -> None:
            dy = run()[1]
            if not state["warm"]:  # the warm-up result must agree with "loop"
                state["warm"] = True
                if not ref:
                    ref.append(dy)
                torch.testing.assert_close(dy, ref[0], rtol=1e-4, atol=1e-6, msg=label)

        return call

    rows = {label: checked(label, run) for label, run in candidates.items()}
    rows["response_and_gram (auto)"] = lambda: response_and_gram(fn, v)
    for label, call in rows.items():
        times[label] = best_of(call)
        print(f"{label:<26}{times[label] / batch:>10.4f}{times[label] / times['loop']:>8.2f}",
              flush=True)

    max_bytes = 1 << 30
    chunk = min(batch, chunk_size(n_f, n_p, v.element_size(), max_bytes))
    dy_bytes = chunk * n_f * n_p * v.element_size()
    block_rows = max(1, min(n_f, (1 << 27) // (n_p * 8)))
    print(f"chunk at max_bytes=1 GiB: {chunk} samples; Dy of the chunk {dy_bytes / 2**20:.1f} "
          f"MiB + float64 Gram blocks {2 * block_rows * n_p * 8 / 2**20:.1f} MiB "
          "(+ the chunk's autograd graph)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="store_true", help="also time the alternatives")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bench("small", (3, 32, 32), batch=64, n_f=64, stem=16, n_layers=4, extra=args.extra)
    bench("larger", (3, 64, 64), batch=8, n_f=128, stem=32, n_layers=8, extra=args.extra)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

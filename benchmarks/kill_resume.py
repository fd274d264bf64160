"""How much work a kill at a random moment loses: ``ifv run`` killed with SIGKILL at random
times, then rerun on the same stage cache, against the same run uninterrupted.

    python benchmarks/kill_resume.py [--trials 3] [--seed 0]

Lost work = (killed run + resumed run) - (uninterrupted run) - (the overhead of one more
start, measured as a rerun whose stages are all cached). It is printed beside the longest
batch of a stage (FV, Jacobian, re-optimization), the bound a resumable stage promises.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ifv.run.store import unpack

RUN = ["model.weights=random", "features.n=16", "sampling.n_total=12", "fv.adam_steps=80",
       "fv.lbfgs_steps=40", "fv.batch_size=4", "reopt.steps=20", "reopt.batch_size=12",
       "progress=false", "figures=false"]


def _run(stages: Path, out: Path, kill_after: float | None = None) -> float:
    """Wall seconds of one ``ifv run`` (killed after ``kill_after`` seconds, if given)."""
    cmd = [sys.executable, "-m", "ifv.faces.cli", "run", *RUN, f"stage_cache={stages}",
           f"hydra.run.dir={out}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None:
        if proc.wait() != 0:
            raise SystemExit(f"ifv run failed: {' '.join(cmd)}")
    else:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return time.perf_counter() - t0


def _longest_batch(stages: Path) -> float:
    """The longest batch of the finished run, from the seconds the parts recorded: FV's from
    its total over its batches (parts are cleared once an entry is written)."""
    longest = 0.0
    for stage, batches in (("realizations", 3), ("jacobian", 3), ("reopt", 4)):
        for entry in (stages / stage).glob("*.pt"):
            held = unpack(entry.read_bytes(), f"{stage}/{entry.name}")
            seconds = float(torch.as_tensor(held["seconds"]))
            longest = max(longest, seconds / batches)
    return longest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        whole = _run(root / "s0", root / "o0")
        overhead = _run(root / "s0", root / "o1")  # every stage cached: start and write
        batch = _longest_batch(root / "s0")
        print(f"uninterrupted: {whole:.1f} s; a start with every stage cached: "
              f"{overhead:.1f} s; longest batch of a stage: {batch:.1f} s")
        for trial in range(args.trials):
            at = rng.uniform(0.1, 0.95) * whole
            stages = root / f"s{trial + 2}"
            killed = _run(stages, root / f"k{trial}", kill_after=at)
            resumed = _run(stages, root / f"r{trial}")
            lost = killed + resumed - whole - overhead
            print(f"killed at {at:.1f} s, resumed in {resumed:.1f} s: lost {lost:.1f} s "
                  f"= {lost / batch:.2f} x the longest batch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

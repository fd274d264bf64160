"""summary.md of benchmarks/gpu_check.sh: Table 1 as benchmarked, the runs' median angles
and per-stage times beside the paper's, the same run on the GPU and the CPU sample by
sample, two runs on the GPU, and TF32 against full float32.

Run: ``python -m benchmarks.gpu_summary OUTDIR`` (reads OUTDIR/table1_bench.md and
OUTDIR/runs/*/results.parquet).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from paper.reference import TABLE1

STAGES = ("t_fv", "t_jacobian", "t_predict", "t_reopt")


def _best(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    return df[df.best_space & df.finite].reset_index(drop=True)


def run_line(name: str, df: pd.DataFrame) -> str:
    med = df.median(numeric_only=True)
    return (f"| {name} | {df.model.iloc[0]}.{df.layer.iloc[0]} | {df.n_f.iloc[0]} | {len(df)} | "
            f"{med.angle_pred:.1f} | {med.angle_response:.1f} | {med.angle_random:.1f} | "
            f"{med.ssim_pred:.3f} | {med.ssim_target:.3f} | "
            + " | ".join(f"{df[c].iloc[0]:.3g}" for c in STAGES) + " |")


def compare(a: pd.DataFrame, b: pd.DataFrame, what: str) -> str:
    """Sample by sample, |a - b| of the angles and SSIMs (same config and seed)."""
    m = a.merge(b, on="sample", suffixes=("_a", "_b"))
    lines = [f"{what}: {len(m)} samples"]
    for col in ("angle_pred", "angle_response", "ssim_pred", "ssim_target"):
        d = (m[f"{col}_a"] - m[f"{col}_b"]).abs()
        lines.append(f"- {col}: median |difference| {d.median():.3g}, max {d.max():.3g} "
                     f"(medians {m[f'{col}_a'].median():.4g} vs {m[f'{col}_b'].median():.4g})")
    return "\n".join(lines)


def main(out: Path) -> None:
    print("# ifv GPU check\n")
    bench = out / "table1_bench.md"
    if bench.is_file():
        print("## Table 1, benchmarked (`python -m benchmarks.table1`)\n")
        print(bench.read_text())
    runs = {p.parent.name: _best(p) for p in sorted((out / "runs").glob("*/results.parquet"))}
    if runs:
        gn = next(p for p in TABLE1 if p.model == "GN4c")
        print("## Runs (medians over the best space's finite samples; seconds per sample)\n")
        print("| run | layer | n_f | samples | angle pred | response | random | SSIM pred | "
              "SSIM target | " + " | ".join(STAGES) + " |")
        print("|" + "---|" * (9 + len(STAGES)))
        for name, df in runs.items():
            print(run_line(name, df))
        print(f"\nThe paper's GN4c (Table 1, GTX 1080 Ti): {', '.join(map(str, gn.times))} s "
              "for I*, Dy, x*, re-opt. (our t_reopt covers all re-optimized objectives "
              "of a sample)\n")
    for a, b, what in (("demo_cuda", "demo_cpu", "GPU vs CPU, the demo setting"),
                       ("demo_cuda", "demo_cuda_again", "GPU rerun, the demo setting"),
                       ("exp01_cuda", "exp01_cuda_tf32", "float32 vs TF32, exp01")):
        if a in runs and b in runs:
            print(compare(runs[a], runs[b], what) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""The results schema: every column of results.parquet and critical.parquet, with its meaning,
and the builders of both tables.

results.parquet has one row per (sample, critical space); critical.parquet one row per
critical space (C = R^{n_f} first). The pipeline, ``paper/`` and the tests' synthetic
runs build their tables here, and docs/results.md is generated from here
(``python -m ifv.run.results``). Angles are in degrees and sign-free (Sec. 3.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ifv.math.critical import best_space

# Columns that hold one value per run.
RUN: dict[str, str] = {
    "experiment": "the experiment's name (exp01 ... exp25, or the name a config sets)",
    "model": "the zoo model (`ifv list`)",
    "tier": "offline (a stand-in trained here) or paper (the paper's network)",
    "stand_in": "true for offline-tier models: a stand-in, not the paper's network",
    "layer": "the tapped layer",
    "n_channels": "channels of the tapped layer",
    "n_f": "number of selected features (the first n_f channels, or explicit indices)",
    "aggregation": "Agg: maxpool_mean, mean, center or identity (Sec. 2.3)",
    "k": "power of the cosine term of S_x (Sec. 2)",
    "param": "the parametrization P (Sec. 3.7)",
    "seed": "seed of targets, initializations and random objectives",
    "n_p": "number of P's variables",
    "transforms": "FV's random transformations: none, standard, lucid, lucent, or the custom "
                  "steps (docs/robust-ifv.md)",
    "prior": "the image prior subtracted from S_x: none, l2, tv or blur",
    "prior_weight": "its weight lambda (0 without a prior)",
    "inversion_samples": "transform samples K of the robust solver's expectation estimate "
                         "(1 without transforms)",
    "inversion_draws": "those samples: fv (the draws FV's L-BFGS averaged over), sampled "
                       "(inversion.seed's) or none (no transforms)",
    "inversion_estimator": "the robust solver's objective: relative (relative stationarity) "
                           "or mean (Opt. (3) on the mean gradient; always without transforms)",
    "kinks_samples": "directions K of the tangent condition at kinks (docs/kinks.md); 0: off, "
                     "plain Opt. (3)",
    "kinks_sigma": "their step in P's variables",
    "kinks_rho": "the least singular value of a switch normal, relative to ||Dy||_2",
}
# Columns that hold one value per sample, the same in every critical space.
SAMPLE: dict[str, str] = {
    "sample": "index of the target in the run",
    "canonical": "true for a canonical target e_i (Supp. S2)",
    "hoyer": "Hoyer sparseness of the target (Supp. S2)",
    "finite": "false where the realization, y or G holds NaN or infinite values: the "
              "sample's results are NaN and it is left out of the medians",
    "angle_response": "angle between the target and the feature response y",
    "angle_random": "angle between the target and a random objective",
    "angle_mean_response": "angle between the target and the mean response over the robust "
                           "solver's K transform samples (angle_response without transforms)",
    "alpha": "alpha_j: squared coefficients of the target in the left-singular vectors of "
             "Z_k Dy, ascending singular values (Sec. 3.4)",
    "ssim_target": "SSIM of the realization and its re-optimization w.r.t. the target",
    "ssim_response": "the same w.r.t. the feature response",
    "ssim_random": "the same w.r.t. the random objective",
    "stable": "ssim_target >= reopt.stable_ssim (Supp. S4)",
    "rel_residual": "||x^T Z_k Dy P_T|| / ||Z_k Dy P_T||_2 of the target (P_T = Id where kinks "
                    "are off): FV's convergence, 0 at an optimum",
    "rel_residual_plain": "the same with the unprojected Dy (Opt. (3)'s condition; equal to "
                          "rel_residual where kinks are off or none was found)",
    "kink_dim": "dim N: the switch normals found at the realization (0: none, or kinks off; "
                "docs/kinks.md)",
    "grad_norm": "||grad_v f_x|| at the realization",
    "lbfgs_iters": "L-BFGS iterations the sample used",
    "t_fv": "FV seconds per sample",
    "t_jacobian": "seconds per sample for y and G = Dy Dy^T",
    "t_predict": "seconds per sample and critical space for x*",
    "t_reopt": "re-optimization seconds per sample",
    "target": "the target objective x (n_f,)",
    "response": "the feature response y (n_f,)",
}
# Columns that hold one value per sample and critical space.
SPACE: dict[str, str] = {
    "critical_dim": "dim C of the critical space (n_f: C = R^{n_f})",
    "rho_min": "smallest rho of Algorithm 1 that yields this space (NaN for R^{n_f})",
    "rho_max": "largest such rho (NaN for R^{n_f})",
    "angle_pred": "angle between the target and the prediction x*, after projecting the "
                  "target onto Z_k(y)^{-1} C (Sec. 3.5); x* of Opt. (3) with the tangent "
                  "condition at kinks where kinks are on (docs/kinks.md)",
    "angle_plain": "the same for plain Opt. (3) on the unprojected Dy (angle_pred where "
                   "kinks are off)",
    "crit_fraction": "fraction of the target inside Z_k(y)^{-1} C",
    "ssim_pred": "SSIM of the realization and its re-optimization w.r.t. x*",
    "prediction": "the predicted objective x* (n_f,)",
    "angle_robust": "angle_pred for the robust solver's prediction (docs/robust-ifv.md; "
                    "without transforms and prior it is plain Grad-IFV, angle_pred)",
    "ssim_robust": "SSIM of the realization and its re-optimization w.r.t. the robust "
                   "prediction (ssim_pred without transforms and prior)",
    "prediction_robust": "the robust solver's predicted objective (n_f,)",
    "residual_robust": "its relative stationarity ||x^T A|| / rms_t ||x^T A_t|| (estimator "
                       "relative) or relative residual ||x^T A|| / ||A||_2 (mean) of the "
                       "(projected) mean gradient (rel_residual of x* without transforms "
                       "and prior)",
    "converged_robust": "whether the fixed point on the weights settled (always for k = 0)",
    "prior_weight_robust": "the prior weight the robust prediction implies (docs/robust-ifv.md "
                           "Sec. 4; positive at a right answer; NaN without a prior)",
    "best_space": "true in the space with the lowest median angle_pred (Sec. 3.5)",
}
RESULTS: dict[str, str] = {**RUN, **SAMPLE, **SPACE}
CRITICAL: dict[str, str] = {
    "experiment": RUN["experiment"],
    "critical_dim": SPACE["critical_dim"],
    "rho_min": SPACE["rho_min"],
    "rho_max": SPACE["rho_max"],
    "complement": "unit vectors (n_f,) spanning C's orthogonal complement: the trivial "
                  "solutions (Sec. 2.2)",
    "median_angle_pred": "median angle_pred in this space",
    "best": "true for the space chosen (Sec. 3.5)",
}
# The identity of a run's configuration (with its sample count).
CONFIG = ("experiment", "model", "layer", "n_f", "aggregation", "k", "param", "seed")


def _check(given: Mapping[str, Any], want: Mapping[str, str], what: str) -> None:
    if set(given) != set(want):
        missing, extra = sorted(set(want) - set(given)), sorted(set(given) - set(want))
        raise ValueError(f"{what} columns do not match ifv.run.results: missing {missing}, "
                         f"unknown {extra}")


def results_frame(run: Mapping[str, Any], samples: Mapping[str, Any],
                  spaces: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """results.parquet: ``run`` holds the RUN values, ``samples`` the SAMPLE columns
    (length N each), ``spaces`` per critical space the SPACE columns but ``best_space``
    (scalars or length N). ``best_space`` marks the space of lowest median angle_pred."""
    _check(run, RUN, "run")
    _check(samples, SAMPLE, "sample")
    for sp in spaces:
        _check({**sp, "best_space": None}, SPACE, "space")
    angles = {i: torch.as_tensor(np.asarray(sp["angle_pred"], dtype=np.float64))
              for i, sp in enumerate(spaces)}
    best = best_space(angles)
    frames = [pd.DataFrame({**run, **samples, **sp, "best_space": i == best})
              for i, sp in enumerate(spaces)]
    return pd.concat(frames, ignore_index=True)[list(RESULTS)]


def critical_frame(results: pd.DataFrame,
                   complements: Mapping[int, Sequence[Any]]) -> pd.DataFrame:
    """critical.parquet from a run's results and each space's complement (by dim C)."""
    rows = []
    for dim, sub in results.groupby("critical_dim", sort=False):
        rows.append({"experiment": str(sub["experiment"].iloc[0]), "critical_dim": int(dim),
                     "rho_min": float(sub["rho_min"].iloc[0]),
                     "rho_max": float(sub["rho_max"].iloc[0]),
                     "complement": [np.asarray(v, dtype=np.float64)
                                    for v in complements[int(dim)]],
                     "median_angle_pred": float(np.median(sub["angle_pred"])),
                     "best": bool(sub["best_space"].iloc[0])})
    return pd.DataFrame(rows, columns=list(CRITICAL))


def markdown() -> str:
    """docs/results.md: both tables' columns and their meaning."""
    def table(cols: Mapping[str, str]) -> list[str]:
        return ["| column | meaning |", "|---|---|",
                *(f"| `{c}` | {m} |" for c, m in cols.items())]

    lines = ["# The results schema", "",
             "Generated from `ifv/run/results.py` by "
             "`python -m ifv.run.results > docs/results.md`.",
             "", "## results.parquet", "",
             "One row per (sample, critical space). Angles are in degrees and sign-free "
             "(Sec. 3.4).", "", "Per run:", "", *table(RUN), "",
             "Per sample (the same in every critical space):", "", *table(SAMPLE), "",
             "Per sample and critical space:", "", *table(SPACE), "",
             "## critical.parquet", "",
             "One row per critical space: C = R^{n_f} first, then every space Algorithm 1's "
             "rho search found (`critical=search`).", "", *table(CRITICAL), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")

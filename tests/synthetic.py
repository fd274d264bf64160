"""Synthetic run directories with planted values, the fixtures of tests/test_collect.py and
tests/test_figures.py: ``results.parquet`` and ``critical.parquet`` built by ``ifv.run.results``
(the pipeline's builders, so the columns are the pipeline's) and ``images.npz``, small enough
to build in milliseconds.

Planted statistics are exact: the angles and SSIM indices of a space are ``center +
linspace(-spread, spread, n)`` (median = center), ``alpha`` has alpha_1 = ``alpha1`` for every
sample, and the ``t_`` columns are constant per run, as the pipeline writes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ifv.math.robust import Robust
from ifv.run.results import critical_frame as _critical_frame
from ifv.run.results import results_frame

PathLike = str | os.PathLike[str]


def _spread(center: float, n: int, spread: float) -> np.ndarray:
    return center + np.linspace(-spread, spread, n)


def run_frame(experiment: str, *, n: int = 20, n_f: int = 10, n_channels: int | None = None,
              k: float = 2.0, model: str = "densenet_patterns", tier: str = "offline",
              layer: str = "dense3", aggregation: str = "maxpool_mean", param: str = "rgb",
              seed: int = 0, n_p: int = 3072, spaces: Mapping[int, float] | None = None,
              angle_response: float = 45.0, angle_random: float = 80.0,
              ssim_target: float = 0.9, ssim_pred: float = 0.85, ssim_response: float = 0.5,
              ssim_random: float = 0.45, alpha1: float = 0.9,
              times: Sequence[float] = (2.0, 0.1, 0.01, 0.7), spread: float = 2.0,
              transforms: str = "none", prior: str = "none",
              angle_robust: float | None = None) -> pd.DataFrame:
    """The results.parquet of one run. ``spaces`` maps critical_dim -> median angle_pred
    (default: the full space at 10 degrees); the lowest median is the best space.
    ``n_channels``: the layer's channels (default n_f). ``angle_robust``: the robust
    solver's median angle in every space (default: plain Grad-IFV's, as without
    ``transforms`` and ``prior``)."""
    robust = transforms != "none" or prior != "none"
    spaces = dict(spaces) if spaces is not None else {n_f: 10.0}
    rest = (1.0 - alpha1) / max(n_f - 1, 1)
    alpha = np.full(n_f, rest)
    alpha[0] = alpha1
    eye = np.eye(n_f)
    sample = np.arange(n)
    s_target = _spread(ssim_target, n, 0.05)
    run = {"experiment": experiment, "model": model, "tier": tier,
           "stand_in": tier == "offline", "layer": layer,
           "n_channels": n_f if n_channels is None else n_channels, "n_f": n_f,
           "aggregation": aggregation, "k": float(k), "param": param, "seed": seed,
           "n_p": n_p, "transforms": transforms, "prior": prior,
           "prior_weight": 0.1 if prior != "none" else 0.0,
           **Robust().record(robust and transforms != "none", None),
           "kinks_samples": 16, "kinks_sigma": 1e-3, "kinks_rho": 1e-3}
    samples = {
        "sample": sample, "canonical": sample < n // 2, "hoyer": np.linspace(0.0, 1.0, n),
        "finite": np.ones(n, dtype=bool),
        "angle_response": _spread(angle_response, n, 10.0),
        "angle_random": _spread(angle_random, n, 5.0).clip(0.0, 90.0),
        "angle_mean_response": _spread(angle_response, n, 10.0),
        "alpha": [alpha.copy() for _ in sample],
        "ssim_target": s_target,
        "ssim_response": _spread(ssim_response, n, 0.1),
        "ssim_random": _spread(ssim_random, n, 0.1),
        "stable": s_target >= 0.7,
        "rel_residual": np.full(n, 1e-3), "rel_residual_plain": np.full(n, 1e-2),
        "kink_dim": np.full(n, 100), "grad_norm": np.full(n, 1e-4),
        "lbfgs_iters": np.full(n, 300),
        "t_fv": times[0], "t_jacobian": times[1], "t_predict": times[2], "t_reopt": times[3],
        "target": [eye[i % n_f] for i in sample],
        "response": [np.ones(n_f) for _ in sample],
    }
    per_space = [{
        "critical_dim": dim,
        "rho_min": np.nan if dim == n_f else 0.01,
        "rho_max": np.nan if dim == n_f else 0.1,
        "angle_pred": _spread(center, n, spread).clip(0.0, 90.0),
        "angle_plain": _spread(min(90.0, 3 * center), n, spread).clip(0.0, 90.0),
        "crit_fraction": np.linspace(0.5, 1.0, n) if dim < n_f else np.ones(n),
        "ssim_pred": _spread(ssim_pred, n, 0.05),
        "prediction": [eye[i % n_f] for i in sample],
    } for dim, center in spaces.items()]
    for sp in per_space:  # no transforms and no prior: the robust solver is plain Grad-IFV
        rob = sp["angle_pred"] if angle_robust is None else \
            _spread(angle_robust, n, spread).clip(0.0, 90.0)
        sp.update(angle_robust=rob, ssim_robust=sp["ssim_pred"],
                  prediction_robust=sp["prediction"], residual_robust=np.full(n, 1e-3),
                  converged_robust=np.ones(n, dtype=bool),
                  prior_weight_robust=np.full(n, np.nan))
    return results_frame(run, samples, per_space)


def critical_frame(df: pd.DataFrame,
                   complements: Mapping[int, Sequence[Sequence[float]]] | None = None,
                   ) -> pd.DataFrame:
    """The critical.parquet matching ``run_frame``'s spaces; ``complements`` gives the unit
    vectors spanning C's complement per dim (default: none for the full space, else the last
    canonical vectors)."""
    n_f = int(df["n_f"].iloc[0])
    given = dict(complements or {})
    comps = {int(d): given.get(int(d), [np.eye(n_f)[j] for j in range(int(d), n_f)])
             for d in df["critical_dim"].unique()}
    return _critical_frame(df, comps)


def images(n_f: int, *, n: int = 4, channels: int = 3, size: int = 8,
           noise: Mapping[str, float] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """An images.npz dict: smooth random realizations and their re-optimized versions, each
    ``after_*`` differing from ``before`` by uniform noise of the given amplitude."""
    rng = np.random.default_rng(seed)
    amp = {"target": 0.05, "pred": 0.08, "response": 0.4, "random": 0.5, **(noise or {})}
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, (n, channels, 1, 1))
    before = 0.5 + 0.4 * np.sin(2 * np.pi * (xx + yy)[None, None] + phase)
    out = {"before": before.astype(np.float16),
           "targets": np.eye(n_f)[np.arange(n) % n_f]}
    for name, a in amp.items():
        moved = before + rng.uniform(-a, a, before.shape)
        out[f"after_{name}"] = moved.clip(0.0, 1.0).astype(np.float16)
    return out


def write_run(path: PathLike, df: pd.DataFrame | None, *,
              critical: pd.DataFrame | None = None,
              imgs: Mapping[str, np.ndarray] | None = None, mtime: float | None = None) -> Path:
    """A run directory as ``ifv run`` leaves it (``.hydra/`` included); ``df`` None leaves
    a failed job without results.parquet. ``mtime`` sets results.parquet's time stamp."""
    run = Path(path)
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text("name: synthetic\n")
    if df is None:
        return run
    if critical is None:
        critical = critical_frame(df)
    critical.to_parquet(run / "critical.parquet", index=False)
    if imgs is not None:
        np.savez_compressed(run / "images.npz", **imgs)
    df.to_parquet(run / "results.parquet", index=False)
    if mtime is not None:
        os.utime(run / "results.parquet", (mtime, mtime))
    return run


def write_comparison(path: PathLike, name: str, *, canonical: int = 8,
                     recovered: float | None = 1.0, confident: float = 0.75,
                     agreement: float = 1.0, k: float = 2.0,
                     mtime: float | None = None) -> Path:
    """A folder as ``ifv compare`` leaves it: summary.json with the headline numbers
    (``recovered`` None: no planted truth), a compare.parquet and a correspondence.png."""
    import json

    import matplotlib.pyplot as plt

    run = Path(path)
    run.mkdir(parents=True, exist_ok=True)
    summary = {"settings": {"name": name, "k": k, "planted": "permuted" if recovered
                            is not None else None,
                            "a": {"model": "densenet_patterns", "layer": "dense3"},
                            "b": {"model": "densenet_patterns", "layer": "dense3"}},
               "objectives": canonical, "canonical": canonical, "confident": confident,
               "agreement": agreement, "median_baseline_corr": 0.9}
    if recovered is not None:
        summary.update(recovered=recovered, baseline_recovered=1.0, median_angle_truth=7.5)
    pd.DataFrame({"objective": np.arange(canonical)}).to_parquet(run / "compare.parquet")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.eye(canonical))
    fig.savefig(run / "correspondence.png")
    plt.close(fig)
    (run / "summary.json").write_text(json.dumps(summary))
    if mtime is not None:
        os.utime(run / "summary.json", (mtime, mtime))
    return run

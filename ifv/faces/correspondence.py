"""The outcome of ``ifv compare`` (``ifv.faces.compare``): the ``Comparison`` of network A
with network B, its table (compare.parquet), its summary (summary.json), the figures
(correspondence.png, pairs.png) and the lines ``ifv compare`` prints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ifv.math.matching import agreement
from ifv.math.metrics import angular_distance
from ifv.math.sampling import canonical


@dataclass
class Comparison:
    """What ``compare`` found; every tensor on the CPU.

    Rows are A's objectives r: ``targets`` (R, n_a) unit, ``canonical`` (R,) bool,
    ``feature_a`` (R,) the position in A's features of a canonical row (-1 otherwise).
    ``images`` (R, C, H, W): the realizations P(v); ``x_a`` / ``residual_a``: Grad-IFV on
    A itself; ``x_b`` (R, n_b), ``residual_b``, ``next_residual_b``: Grad-IFV on B;
    ``near`` (R,): residual_b <= max_residual; ``determined`` (R,): residual_b <= max_ratio
    next_residual_b (x_B stands out). ``match`` (R,): the Hungarian matching of the
    canonical rows on |x_b| (a position in B's features; -1 for other rows), ``share`` its
    weight share, ``confident`` = near, determined and share >= min_share.
    ``correlation`` (n_a, n_b): the baseline's correlations, ``baseline`` (R,) its
    matching of the canonical rows.
    Planted: ``truth`` (R,) the true partner, ``expected`` (R, n_b) the x_B of (*),
    ``scale_true`` / ``scale_fit`` (n_a,) the scales of A's features (geometric mean 1).
    ``pair_rows`` / ``pair_images``: rows shown with B's own realization of their match.
    """

    features_a: list[int]
    features_b: list[int]
    targets: Tensor
    canonical: Tensor
    feature_a: Tensor
    images: Tensor
    y_a: Tensor
    x_a: Tensor
    residual_a: Tensor
    y_b: Tensor
    x_b: Tensor
    residual_b: Tensor
    next_residual_b: Tensor
    near: Tensor
    determined: Tensor
    match: Tensor
    share: Tensor
    confident: Tensor
    correlation: Tensor
    baseline: Tensor
    truth: Tensor | None = None
    expected: Tensor | None = None
    scale_true: Tensor | None = None
    scale_fit: Tensor | None = None
    scale_fit_residual: float = math.nan
    pair_rows: list[int] = field(default_factory=list)
    pair_images: Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per objective of A (the schema of compare.parquet, docs/compare.md)."""
        n = len(self.targets)
        can = self.canonical
        fa = self.feature_a
        base = self.correlation[fa.clamp_min(0)] if len(fa) else self.correlation[:0]
        df = pd.DataFrame({
            "objective": np.arange(n),
            "canonical": can.numpy(),
            "feature_a": [self.features_a[i] if i >= 0 else -1 for i in fa.tolist()],
            "target": list(self.targets.numpy()),
            "x_a": list(self.x_a.numpy()),
            "residual_a": self.residual_a.numpy(),
            "x_b": list(self.x_b.numpy()),
            "residual_b": self.residual_b.numpy(),
            "next_residual_b": self.next_residual_b.numpy(),
            "near_optimum_b": self.near.numpy(),
            "determined_b": self.determined.numpy(),
            "match_b": [self.features_b[j] if j >= 0 else -1 for j in self.match.tolist()],
            "share": self.share.numpy(),
            "confident": self.confident.numpy(),
            "baseline_b": [self.features_b[j] if j >= 0 else -1
                           for j in self.baseline.tolist()],
            "baseline_corr": [float(base[r, j]) if j >= 0 else math.nan
                              for r, j in enumerate(self.baseline.tolist())],
            "correlation": [row if c else None for row, c in zip(
                list(base.numpy()), can.tolist(), strict=True)],
            "agree": ((self.match == self.baseline) & (self.match >= 0)).numpy(),
            "image_shape": [list(self.images.shape[1:])] * n,
            "realization": list(self.images.flatten(1).numpy().astype(np.float32)),
        })
        if self.truth is not None:
            df["truth_b"] = [self.features_b[j] if j >= 0 else -1 for j in self.truth.tolist()]
            df["correct"] = ((self.match == self.truth) & can).numpy()
            df["baseline_correct"] = ((self.baseline == self.truth) & can).numpy()
            df["angle_truth"] = _angle_to(self.x_b, self.truth).numpy()
        if self.expected is not None:
            df["expected_b"] = list(self.expected.numpy())
            df["angle_expected"] = angular_distance(self.x_b, self.expected).numpy()
        if self.scale_true is not None and self.scale_fit is not None:
            pos = fa.clamp_min(0)
            df["scale_true"] = np.where(can, self.scale_true[pos].numpy(), math.nan)
            df["scale_fit"] = np.where(can, self.scale_fit[pos].numpy(), math.nan)
        return df

    def summary(self) -> dict[str, Any]:
        """The headline numbers (summary.json)."""
        can = self.canonical
        matched = can & (self.match >= 0)
        out: dict[str, Any] = {
            "settings": self.settings,
            "objectives": len(self.targets), "canonical": int(can.sum()),
            "median_residual_a": _median(self.residual_a),
            "median_residual_b": _median(self.residual_b),
            "near_optimum_b": _mean(self.near[can]),
            "determined_b": _mean(self.determined[can]),
            "median_share": _median(self.share[matched]),
            "confident": _mean(self.confident[can]),
            "agreement": agreement(self.match, self.baseline, can),
            "agreement_confident": agreement(self.match, self.baseline, self.confident),
            "median_baseline_corr": _median(torch.tensor(
                [float(self.correlation[self.feature_a[r], self.baseline[r]])
                 for r in range(len(can)) if can[r] and self.baseline[r] >= 0])),
        }
        if self.truth is not None:
            out["recovered"] = _mean((self.match == self.truth)[can])
            out["baseline_recovered"] = _mean((self.baseline == self.truth)[can])
            out["median_angle_truth"] = _median(_angle_to(self.x_b, self.truth)[can])
            out["max_angle_truth"] = _max(_angle_to(self.x_b, self.truth)[can])
        if self.expected is not None:
            ang = angular_distance(self.x_b, self.expected)
            out["median_angle_expected"] = _median(ang)
            out["max_angle_expected"] = _max(ang)
        if self.scale_true is not None and self.scale_fit is not None:
            err = (self.scale_fit / self.scale_true - 1).abs()
            out["scale_error_median"] = _median(err)
            out["scale_error_max"] = _max(err)
            out["scale_fit_residual"] = self.scale_fit_residual
        return out


def _angle_to(x: Tensor, idx: Tensor) -> Tensor:
    """Angle of each row of x to the canonical e_idx (NaN where idx < 0)."""
    e = canonical(idx.clamp_min(0), x.shape[1])
    ang = angular_distance(x, e)
    return torch.where(idx >= 0, ang, torch.full_like(ang, math.nan))


def _median(t: Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.median()) if t.numel() else math.nan


def _max(t: Tensor) -> float:
    t = t[torch.isfinite(t)]
    return float(t.max()) if t.numel() else math.nan


def _mean(t: Tensor) -> float:
    return float(t.double().mean()) if t.numel() else math.nan


FILES = ("compare.parquet", "summary.json", "correspondence.png", "pairs.png")


def _pair_titles(comp: Comparison) -> list[str]:
    titles = []
    for r in comp.pair_rows:
        j = int(comp.match[r])
        flag = "" if bool(comp.near[r] & comp.determined[r]) else " far"
        base = "=" if int(comp.baseline[r]) == j else "≠"
        titles += [f"A {comp.features_a[int(comp.feature_a[r])]}",
                   f"B {comp.features_b[j]} {float(comp.share[r]):.2f}{flag} {base}"]
    return titles


def write(comp: Comparison, out: str | Path) -> list[Path]:
    """compare.parquet (``Comparison.table``), summary.json, correspondence.png (the heat
    map beside the baseline's, ordered by the matching) and pairs.png (matched pairs' FV on
    A and on B, side by side) in the folder ``out``. Everything is made before the first
    file is written, and each file is written atomically."""
    from ifv.files import atomic_write, write_json
    from ifv.run import plots

    out = Path(out)
    df = comp.table()
    summary = comp.summary()
    can = comp.canonical
    n_can = int(can.sum())
    s = comp.settings
    head = (f"A = {s['a']['model']}.{s['a']['layer']}, B = {s['b']['model']}"
            f"{' (' + s['planted'] + ')' if s['planted'] else ''}.{s['b']['layer']}, "
            f"k={s['k']:g}: confident {summary['confident']:.0%}, agreement with the "
            f"baseline {summary['agreement']:.0%}"
            + (f", recovered {summary['recovered']:.0%}" if "recovered" in summary else "")
            + "; red: B's residual > max_residual or > max_ratio x the runner-up's")
    figs = []
    if n_can:
        idx = comp.feature_a[:n_can]
        w = comp.x_b[:n_can].abs().numpy()
        size = plots.correspondence_size(n_can, w.shape[1])
        fig = plots.new_figure(size)
        plots.correspondence_panels(
            fig, w, comp.correlation[idx].numpy(), comp.match[:n_can].numpy(),
            comp.baseline[:n_can].numpy(), comp.share[:n_can].numpy(),
            (~(comp.near & comp.determined)[:n_can]).numpy(),
            [comp.features_a[i] for i in idx.tolist()], comp.features_b, title=head)
        figs.append(("correspondence.png", fig))
    if comp.pair_images is not None and comp.pair_rows:
        a_imgs = comp.images[comp.pair_rows]
        both = torch.stack([a_imgs, comp.pair_images], 1).flatten(0, 1)
        titles = _pair_titles(comp)
        fig = plots.new_figure(plots.realizations_size(both, titled=True))
        plots.realizations_grid(fig, both, titles=titles, ncols=8)
        fig.suptitle("matched pairs: FV of e_i on A | FV of its match e_j on B (share; far: "
                     "B's residual high; =/≠: the baseline agrees / not)", fontsize=8)
        figs.append(("pairs.png", fig))
    written = [atomic_write(out / "compare.parquet", lambda p: df.to_parquet(p, index=False)),
               write_json(out / "summary.json", summary)]
    written += [plots.save(fig, out / name) for name, fig in figs]
    return written


def report(summary: dict[str, Any]) -> str:
    """The headline numbers of ``Comparison.summary`` as a few lines."""
    def pct(key: str) -> str:
        v = summary.get(key, math.nan)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1%}"

    lines = [f"{summary['canonical']} canonical objectives of A: confident matches "
             f"{pct('confident')} (B's residual <= max_residual for {pct('near_optimum_b')}, "
             f"<= max_ratio x the runner-up's for {pct('determined_b')}), median share "
             f"{summary['median_share']:.3f}",
             f"agreement with the correlation baseline: {pct('agreement')} of the rows, "
             f"{pct('agreement_confident')} of the confident ones",
             f"median residual on A {summary['median_residual_a']:.2e}, on B "
             f"{summary['median_residual_b']:.2e}"]
    if "recovered" in summary:
        lines.append(f"planted: recovered {pct('recovered')} (baseline "
                     f"{pct('baseline_recovered')}); x_B vs the exact (*): median "
                     f"{summary['median_angle_expected']:.2g} deg, max "
                     f"{summary['max_angle_expected']:.2g} deg; x_B vs e_pi(i): median "
                     f"{summary['median_angle_truth']:.2g} deg")
    if "scale_error_median" in summary:
        lines.append(f"rescaling: fitted scales off by {summary['scale_error_median']:.2%} "
                     f"(median), {summary['scale_error_max']:.2%} (max)")
    return "\n".join(lines)

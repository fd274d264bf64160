"""The paper's reference values: the experiments of Supp. S4, Table 1, and every quantitative
claim of Sec. 3 with the experiments that measure it, how our value is computed from
``results/`` and the tolerance within which we call it reproduced.

A claim's ``measure`` raises ``NotRun`` when an experiment it needs is absent and
``NotApplicable`` when the data cannot answer it (e.g. no critical space of the claimed
dimension was found); ``paper.report`` turns both into table rows, never errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from scipy.linalg import subspace_angles

from ifv.faces.config import CONF
from ifv.math.metrics import high_frequency_share
from paper.runs import NotRun, Results


class NotApplicable(ValueError):
    """The results cannot answer the claim (the message says why)."""


@dataclass(frozen=True)
class S4Row:
    """A row of the table of Supp. S4, as its experiment's config holds it (``s4:``)."""

    network: str
    short: str
    features: str
    aggregation: str
    k: int
    param: str
    section: str
    alias: str


def _s4_rows() -> dict[str, S4Row]:
    """The rows of Supp. S4 from conf/experiment/expNN.yaml, where each is defined."""
    rows = {}
    for path in sorted(CONF.joinpath("experiment").glob("exp[0-9][0-9].yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        rows[path.stem] = S4Row(**node["s4"])  # type: ignore[index, arg-type]
    return rows


EXPERIMENTS: dict[str, S4Row] = _s4_rows()


def s4_table() -> str:
    """The README's table of the 25 experiments, from their configs."""
    lines = ["| # | network | features | aggregation | k | P | name |",
             "|---|---|---|---|---|---|---|"]
    for name, r in EXPERIMENTS.items():
        lines.append(f"| {int(name[3:])} | {r.network} | {r.features} | {r.aggregation} | "
                     f"{r.k} | {r.param} | `{r.alias}` |")
    return "\n".join(lines)



# samples per run where the paper states them (Sec. 3.4: 150 + 150, Sec. 3.5: 290 + 10,
# Sec. 3.7: the 64 SRNet targets)
PAPER_SAMPLES = {"exp01": 300, "exp02": 300, "exp03": 300, "exp04": 300, "exp05": 300,
                 "exp22": 64, "exp23": 64, "exp24": 64, "exp25": 64}

# Table 1: seconds per sample on a GTX 1080 Ti (Sec. 3.3)
TIMES = ("t_fv", "t_jacobian", "t_predict", "t_reopt")
TIME_LABELS = {"t_fv": "I*", "t_jacobian": "Dy", "t_predict": "x*", "t_reopt": "re-opt."}


@dataclass(frozen=True)
class PaperTiming:
    """A row of the paper's Table 1 and the experiments that time the same model."""

    model: str
    n_p: str
    n_f: int
    times: tuple[float, float, float, float]
    experiments: tuple[str, ...]


TABLE1 = (
    PaperTiming("GN4c", "224^2*3", 512, (17.3, 0.7, 0.2, 0.7), ("exp01",)),
    PaperTiming("DN[4]cl", "32^2*3", 10, (2.1, 0.0, 0.0, 0.7), ("exp02", "exp03")),
    PaperTiming("DNde", "32^2*3", 342, (2.0, 0.3, 0.1, 0.7), ("exp16", "exp11", "exp06")),
    PaperTiming("SRNet", "128^2*4", 64, (10.7, 0.4, 0.0, 3.1), ("exp22", "exp23")),
)


def _present(res: Results, exps: Sequence[str]) -> list[str]:
    found = [e for e in exps if res.has(e)]
    if not found:
        raise NotRun(", ".join(exps))
    return found


def timing_rows(res: Results, paper: PaperTiming) -> tuple[pd.DataFrame, str]:
    """The rows that time ``paper.model`` (best space, one per sample) and their source:
    DNde from exp16 (342 filters) or else the largest n_f of the sweeps exp11 / exp06."""
    if paper.model == "DNde":
        exp = _present(res, paper.experiments)[0]
        df = res.best(exp)
        if exp != "exp16":
            n_f = int(df["n_f"].max())
            return df[df["n_f"] == n_f], f"{exp} (n_f={n_f})"
        return df, exp
    found = _present(res, paper.experiments)
    return pd.concat([res.best(e) for e in found], ignore_index=True), ", ".join(found)


def _fmt_time(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def table1_markdown(df: pd.DataFrame) -> str:
    """Table 1 as markdown: each cell ours / paper."""
    head = ["Model", "n_p", "n_f", *(TIME_LABELS[c] for c in TIMES), "from", "stand-in"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cells = [r["model"], f"{r['n_p'] or '-'} / {r['paper_n_p']}",
                 f"{r['n_f'] or '-'} / {r['paper_n_f']}",
                 *(f"{_fmt_time(r[c])} / {r[f'paper_{c}']:.1f}" for c in TIMES),
                 r["experiments"] or "not run",
                 "-" if r["stand_in"] is None else ("yes" if r["stand_in"] else "no")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def table1(res: Results) -> pd.DataFrame:
    """Table 1 (Sec. 3.3): per model, the mean seconds per sample of each stage over the
    rows of its experiments, beside the paper's values; NaN where not run."""
    rows = []
    for p in TABLE1:
        row: dict[str, Any] = {"model": p.model, "experiments": "", "stand_in": None,
                               "n_p": "", "n_f": ""}
        try:
            df, source = timing_rows(res, p)
        except NotRun:
            df, source = None, ""
        if df is not None and len(df):
            row.update(experiments=source, stand_in=bool(df["stand_in"].any()),
                       n_f=",".join(str(v) for v in sorted(df["n_f"].unique())))
            if "n_p" in df.columns and df["n_p"].notna().any():  # e.g. SRNet's two masks
                row["n_p"] = ",".join(str(int(v)) for v in sorted(df["n_p"].dropna().unique()))
        for col, paper_t in zip(TIMES, p.times, strict=True):
            ok = df is not None and len(df) and col in df.columns
            row[col] = float(df[col].mean()) if ok else math.nan
            row[f"paper_{col}"] = paper_t
        row["paper_n_p"] = p.n_p
        row["paper_n_f"] = p.n_f
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- claims

@dataclass(frozen=True)
class Measured:
    """Our value: what ``Claim.agrees`` judges, and how the report shows it."""

    value: Any
    text: str


@dataclass(frozen=True)
class Claim:
    """A quantitative statement of Sec. 3 and how our results are checked against it."""

    key: str
    section: str
    claim: str
    paper: str
    experiments: tuple[str, ...]
    method: str
    tolerance: str
    measure: Callable[[Results], Measured]
    agrees: Callable[[Any], bool]


def _deg(v: float) -> str:
    return f"{v:.1f}\N{DEGREE SIGN}"


def _share(mask: np.ndarray) -> Measured:
    mask = np.asarray(mask, dtype=bool)
    if mask.size == 0:
        raise NotApplicable("no samples")
    share = float(mask.mean())
    return Measured(share, f"{100 * share:.0f}% ({int(mask.sum())}/{mask.size})")


def _median(res: Results, exp: str, col: str) -> Measured:
    v = float(res.best(exp)[col].median())
    return Measured(v, _deg(v) if col.startswith("angle") else f"{v:.3f}")


def _full(res: Results, exp: str) -> pd.DataFrame:
    """Rows of C = R^{n_f} (Sec. 3.4: no critical space)."""
    df = res.frame(exp)
    return df[df["critical_dim"] == df["n_f"]]


def mean_alpha(df: pd.DataFrame) -> np.ndarray:
    """alpha_j averaged over samples (Sec. 3.5); all rows must share n_f."""
    alphas = [np.asarray(a, dtype=np.float64) for a in df["alpha"]]
    if len({a.size for a in alphas}) > 1:
        raise NotApplicable("alpha of different n_f mixed; group by n_f first")
    return np.stack(alphas).mean(0)


def _alpha_j(res: Results, exp: str, j: int) -> Measured:
    v = float(mean_alpha(res.best(exp))[j - 1])
    return Measured(v, f"alpha_{j} = {v:.2f}")


def _newest_critical(res: Results, exp: str) -> pd.DataFrame:
    crit = res.critical(exp)
    return crit[crit["run"] == crit["run"].iloc[-1]] if "run" in crit.columns else crit


def _found_dims(res: Results, exp: str) -> Measured:
    crit = _newest_critical(res, exp)
    n_f = int(res.frame(exp)["n_f"].iloc[0])
    dims = tuple(sorted(int(d) for d in crit["critical_dim"] if int(d) < n_f))
    return Measured(dims, ", ".join(map(str, dims)) if dims else "none found")


def _best_dim(res: Results, exp: str) -> Measured:
    dims = res.best(exp)["critical_dim"]
    d = int(dims.mode().iloc[0])
    return Measured(d, f"dim {d}")


def _complement_angle(res: Results, exp: str, dim: int, span: Callable[[int], np.ndarray],
                      ) -> Measured:
    """Largest principal angle between C's complement and the claimed span (columns)."""
    crit = _newest_critical(res, exp)
    rows = crit[crit["critical_dim"] == dim]
    if rows.empty:
        raise NotApplicable(f"no {dim}-dimensional critical space found")
    comp = np.stack([np.asarray(v, dtype=np.float64) for v in rows["complement"].iloc[0]], 1)
    ref = span(comp.shape[0])
    if comp.shape[1] != ref.shape[1]:
        raise NotApplicable(f"complement has dimension {comp.shape[1]}, not {ref.shape[1]}")
    v = float(np.degrees(subspace_angles(comp, ref).max()))
    return Measured(v, _deg(v))


def _ones(n: int) -> np.ndarray:
    return np.ones((n, 1))


def _ones_e4(n: int) -> np.ndarray:
    return np.stack([np.ones(n), np.eye(n)[4]], 1)


def _layer_size(df: pd.DataFrame) -> int:
    """Channels of the tapped layer, as the run recorded them (stand-ins are smaller than
    the paper's networks)."""
    return int(df["n_channels"].iloc[0])


def _scaled(df: pd.DataFrame, paper_nf: int, paper_total: int) -> tuple[float, str]:
    """The paper's n_f threshold scaled to our layer size."""
    total = _layer_size(df)
    if total == paper_total:
        return float(paper_nf), f"{paper_nf} of {total}"
    return paper_nf * total / paper_total, f"{paper_nf}/{paper_total} scaled to {total}"


def _dnde_k0_small(res: Results) -> tuple[pd.DataFrame, str]:
    df = res.best("exp06")
    limit, note = _scaled(df, 160, 342)
    ok = sorted(n for n in df["n_f"].unique() if n <= limit + 1e-9)
    if not ok:
        raise NotApplicable(f"no n_f <= {limit:.0f} in the sweep")
    return df[df["n_f"] == ok[-1]], f"n_f={ok[-1]} ({note})"


def _pred_vs_response(res: Results) -> Measured:
    df, note = _dnde_k0_small(res)
    p, r = float(df["angle_pred"].median()), float(df["angle_response"].median())
    return Measured(r - p, f"{_deg(p)} vs response {_deg(r)} at {note}")


def _min_ssim_small(res: Results) -> Measured:
    df, note = _dnde_k0_small(res)
    v = float(df["ssim_pred"].min())
    return Measured(v, f"{v:.3f} at {note}")


def _beyond(res: Results, exp: str, paper_nf: int, paper_total: int) -> tuple[pd.DataFrame, str]:
    df = res.best(exp)
    limit, note = _scaled(df, paper_nf, paper_total)
    big = df[df["n_f"] > limit + 1e-9]
    if big.empty:
        raise NotApplicable(f"no n_f > {limit:.0f} in the sweep")
    nfs = ",".join(str(v) for v in sorted(big["n_f"].unique()))
    return big, f"n_f={nfs} (> {note})"


def _share_beyond(res: Results, exp: str, paper_nf: int, paper_total: int, lo: float,
                  ) -> Measured:
    big, note = _beyond(res, exp, paper_nf, paper_total)
    m = _share(big["angle_pred"].to_numpy() >= lo)
    return Measured(m.value, f"{m.text} at {note}")


# the claims "similar to Sec. 3.4" call a median angle up to this accurate (degrees)
ACCURATE = 20.0


def _onset(res: Results, exp: str, paper_total: int, threshold: float = ACCURATE) -> Measured:
    """Where degradation sets in: the interval (last n_f before, first n_f with a median
    predicted angle above ``threshold``], in the paper's n_f units (scaled where the stand-in
    layer is smaller), so that coarse sweeps (the quick profile) still bracket it."""
    df = res.best(exp)
    med = df.groupby("n_f")["angle_pred"].median().sort_index()
    scale = paper_total / _layer_size(df)
    above = med[med > threshold]
    if above.empty:
        lo = int(med.index.max())
        return Measured((lo * scale, math.inf), f"none up to n_f={lo}")
    hi = int(above.index[0])
    below = [int(n) for n in med.index if n < hi]
    lo = below[-1] if below else 0
    unit = "" if scale == 1 else f" (x {scale:.2f} = {lo * scale:.0f} to {hi * scale:.0f})"
    return Measured((lo * scale, hi * scale), f"between n_f={lo} and {hi}{unit}")


def _max_median_over_nf(res: Results, exp: str) -> Measured:
    med = res.best(exp).groupby("n_f")["angle_pred"].median()
    return Measured(float(med.max()), f"max {_deg(float(med.max()))} "
                    f"(n_f={int(med.idxmax())}; {len(med)} values of n_f)")


def _param_gap(res: Results, exp: str, base: str) -> Measured:
    a = float(res.best(exp)["angle_pred"].median())
    b = float(res.best(base)["angle_pred"].median())
    if b > ACCURATE:  # two failures a few degrees apart do not show independence of P
        raise NotApplicable(f"P_rgb fails itself ({base}: {_deg(b)}, {exp}: {_deg(a)})")
    return Measured(abs(a - b), f"{_deg(a)} vs {_deg(b)} (gap {_deg(abs(a - b))})")


# "visibly smoother" (Fig. 4): at most this share of P_rgb's high-frequency energy
SMOOTHER = 0.8


def hf_share(res: Results, exp: str) -> float:
    """Median high-frequency share (``ifv.math.metrics.high_frequency_share``) of the realizations
    stored for ``exp`` (images.npz: the first samples of its main configuration)."""
    if not res.has(exp):
        raise NotRun(exp)
    images = res.images(exp)
    if images is None:
        raise NotApplicable(f"no stored realizations of {exp}")
    before = torch.from_numpy(images["before"].astype(np.float32))
    return float(high_frequency_share(before).median())


def _smoother(res: Results, exp: str, base: str) -> Measured:
    a, b = hf_share(res, exp), hf_share(res, base)
    if b <= 0:
        raise NotApplicable(f"{base}'s realizations have no high frequencies")
    return Measured(a / b, f"{a:.2f} vs {b:.2f} (ratio {a / b:.2f})")


def _iqr(x: pd.Series) -> float:
    return float(x.quantile(0.75) - x.quantile(0.25))


def _spreads(res: Results) -> Measured:
    df = res.best("exp01")
    r, p = _iqr(df["angle_response"]), _iqr(df["angle_pred"])
    return Measured(r - p, f"IQR response {_deg(r)} vs predicted {_deg(p)}")


def _stable_ssim_pred(res: Results) -> Measured:
    df = res.best("exp01")
    df = df[df["stable"].astype(bool)]
    return _share(df["ssim_pred"].to_numpy() >= 0.7)


def _ssim_gap(res: Results) -> Measured:
    df = res.best("exp01")
    p, r = float(df["ssim_pred"].median()), float(df["ssim_response"].median())
    return Measured(p - r, f"median SSIM predicted {p:.2f} vs response {r:.2f}")


def _response_vs_random(res: Results) -> Measured:
    df = res.best("exp01")
    r, x = float(df["ssim_response"].median()), float(df["ssim_random"].median())
    return Measured(abs(r - x), f"median SSIM response {r:.2f} vs random {x:.2f}")


def _max_ssim_target(res: Results) -> Measured:
    v = float(res.best("exp01")["ssim_target"].max())
    return Measured(v, f"max {v:.4f}")


def _full_space_angle(res: Results, exp: str) -> Measured:
    v = float(_full(res, exp)["angle_pred"].median())
    return Measured(v, _deg(v))


def _high_angle_low_ssim(res: Results) -> Measured:
    found = _present(res, ("exp02", "exp03"))
    df = pd.concat([res.best(e) for e in found], ignore_index=True)
    high = df[df["angle_pred"] > 30.0]
    if high.empty:
        raise NotApplicable("no best-space sample above 30\N{DEGREE SIGN}")
    m = _share(high["ssim_pred"].to_numpy() < 0.7)
    return Measured(m.value, f"{m.text} ({', '.join(found)})")


def _low_ssim_cluster(res: Results) -> Measured:
    """Sec. 3.5: accurate, stable samples with low SSIM keep less of x in C."""
    found = _present(res, ("exp02", "exp03"))
    df = pd.concat([res.best(e) for e in found], ignore_index=True)
    df = df[df["stable"].astype(bool) & (df["angle_pred"] <= 15.0)]
    low, high = df[df["ssim_pred"] < 0.7], df[df["ssim_pred"] >= 0.7]
    if low.empty or high.empty:
        raise NotApplicable("no accurate stable samples with low (or high) SSIM")
    a, b = float(low["crit_fraction"].median()), float(high["crit_fraction"].median())
    return Measured(b - a, f"median fraction in C {a:.2f} (low SSIM, n={len(low)}) vs "
                    f"{b:.2f} (n={len(high)})")


def _srnet_share(res: Results, exp: str, limit: float) -> Measured:
    return _share(res.best(exp)["angle_pred"].to_numpy() <= limit)


def _timing(res: Results, paper: PaperTiming) -> Measured:
    df, source = timing_rows(res, paper)
    ours = [float(df[c].mean()) for c in TIMES]
    ok = all(_within_factor(o, p) for o, p in zip(ours, paper.times, strict=True))
    return Measured(ok, " / ".join(f"{v:.2f}" for v in ours) + f" ({source})")


def _within_factor(ours: float, paper: float, factor: float = 10.0) -> bool:
    """Within ``factor`` of the paper's value; the paper rounds to 0.1 s, so 0.0 is read
    as at most 0.05 s."""
    p = max(paper, 0.05)
    return ours <= p * factor and (paper == 0.0 or ours >= p / factor)


def _fv_dominates(res: Results) -> Measured:
    verdicts = []
    for p in TABLE1:
        try:
            df, _ = timing_rows(res, p)
        except NotRun:
            continue
        t = {c: float(df[c].mean()) for c in TIMES}
        verdicts.append((p.model, t["t_fv"] > max(t["t_jacobian"], t["t_predict"],
                                                  t["t_reopt"])))
    if not verdicts:
        raise NotRun("exp01, exp02, exp03, exp16, exp11, exp06, exp22, exp23")
    good = [m for m, ok in verdicts if ok]
    return Measured(len(good) == len(verdicts),
                    f"{len(good)}/{len(verdicts)} models ({', '.join(m for m, _ in verdicts)})")


def _yes(v: Any) -> bool:
    return bool(v)


def _at_most(limit: float) -> Callable[[Any], bool]:
    return lambda v: v <= limit


def _at_least(limit: float) -> Callable[[Any], bool]:
    return lambda v: v >= limit


def _between(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


def _equals(expected: Any) -> Callable[[Any], bool]:
    return lambda v: v == expected


_MED = "median angle_pred of the best space"


def _claims() -> list[Claim]:
    c = Claim
    out = [
        # Sec. 3.4, the simple case: GN4c, k = 2, C = R^{n_f}
        c("simple.pred", "3.4", "GN4c: predictions deviate from the targets by approx. 10°",
          "≈ 10°", ("exp01",), _MED, "≤ 15°",
          lambda r: _median(r, "exp01", "angle_pred"), _at_most(15.0)),
        c("simple.response", "3.4", "GN4c: feature responses deviate by about 45° "
          "(cos ≈ 0.7)", "≈ 45°", ("exp01",), "median angle_response", "30° to 60°",
          lambda r: _median(r, "exp01", "angle_response"), _between(30.0, 60.0)),
        c("simple.variance", "3.4", "GN4c: ... with large variance (larger than the "
          "predictions')", "large", ("exp01",),
          "interquartile range of angle_response minus that of angle_pred", "> 0",
          _spreads, lambda v: v > 0.0),
        c("simple.outliers", "3.4", "GN4c: very few outliers among the predictions",
          "very few", ("exp01",), "share of samples with angle_pred > 30°", "≤ 5%",
          lambda r: _share(r.best("exp01")["angle_pred"].to_numpy() > 30.0),
          _at_most(0.05)),
        c("simple.reopt", "3.4", "GN4c: almost all realizations remain optima under the "
          "predicted objectives", "almost all", ("exp01",),
          "share of stable samples with ssim_pred ≥ 0.7", "≥ 90%", _stable_ssim_pred,
          _at_least(0.9)),
        c("simple.response_change", "3.4", "GN4c: clearly more change when re-optimizing "
          "for the feature response", "clearly lower SSIM", ("exp01",),
          "median ssim_pred minus median ssim_response", "≥ 0.05", _ssim_gap,
          _at_least(0.05)),
        c("simple.response_random", "3.4", "GN4c: re-optimizing for the feature response "
          "often resembles a random objective", "similar", ("exp01",),
          "|median ssim_response - median ssim_random|", "≤ 0.15", _response_vs_random,
          _at_most(0.15)),
        c("simple.target_ssim", "3.4", "GN4c: SSIM under the target objective is strictly "
          "lower than one", "< 1", ("exp01",), "max ssim_target", "< 0.999",
          _max_ssim_target, lambda v: v < 0.999),
        c("simple.alpha1", "3.5", "GN4c: alpha_1 ≈ 1 (Fig. 2a)", "≈ 1", ("exp01",),
          "mean alpha_1", "≥ 0.8", lambda r: _alpha_j(r, "exp01", 1), _at_least(0.8)),
        # Sec. 3.5, critical spaces: DNcl and DN4cl, k = 2
        c("critical.full_dncl", "3.5", "DNcl: Grad-IFV fails in the full space C = R^10",
          "fails", ("exp02",), "median angle_pred for C = R^10", "≥ 30°",
          lambda r: _full_space_angle(r, "exp02"), _at_least(30.0)),
        c("critical.full_dn4cl", "3.5", "DN4cl: Grad-IFV fails in the full space C = R^10",
          "fails", ("exp03",), "median angle_pred for C = R^10", "≥ 30°",
          lambda r: _full_space_angle(r, "exp03"), _at_least(30.0)),
        c("critical.alpha2_dncl", "3.5", "DNcl: significant alpha_2 (Fig. 2b)",
          "significant", ("exp02",), "mean alpha_2", "≥ 0.2",
          lambda r: _alpha_j(r, "exp02", 2), _at_least(0.2)),
        c("critical.alpha3_dn4cl", "3.5", "DN4cl: significant alpha_3 (Fig. 2c)",
          "significant", ("exp03",), "mean alpha_3", "≥ 0.2",
          lambda r: _alpha_j(r, "exp03", 3), _at_least(0.2)),
        c("critical.dims_dncl", "3.5", "DNcl: a single critical space, of dimension 9",
          "9", ("exp02",), "dimensions < 10 of the rho search (critical.parquet)", "exactly 9",
          lambda r: _found_dims(r, "exp02"), _equals((9,))),
        c("critical.ones_dncl", "3.5", "DNcl: C_1's complement is spanned by (1, ..., 1)",
          "(1, ..., 1)", ("exp02",), "angle between C_1's complement and (1, ..., 1)", "≤ 15°",
          lambda r: _complement_angle(r, "exp02", 9, _ones), _at_most(15.0)),
        c("critical.dims_dn4cl", "3.5", "DN4cl: C_1 (dim 9) and C_2 (dim 8)", "9 and 8",
          ("exp03",), "dimensions < 10 of the rho search", "exactly 8 and 9",
          lambda r: _found_dims(r, "exp03"), _equals((8, 9))),
        c("critical.ones_e4_dn4cl", "3.5", "DN4cl: C_2's complement is spanned by "
          "(1, ..., 1) and e_4", "span{1, e_4}", ("exp03",),
          "largest principal angle between C_2's complement and span{(1, ..., 1), e_4} "
          "(e_4: the class never seen, index 4)", "≤ 15°",
          lambda r: _complement_angle(r, "exp03", 8, _ones_e4), _at_most(15.0)),
        c("critical.best_dncl", "3.5", "DNcl: the best critical space is C_1", "C_1 (dim 9)",
          ("exp02",), "critical_dim of the best space (lowest median angle)", "dim 9",
          lambda r: _best_dim(r, "exp02"), _equals(9)),
        c("critical.best_dn4cl", "3.5", "DN4cl: the best critical space is C_2",
          "C_2 (dim 8)", ("exp03",), "critical_dim of the best space", "dim 8",
          lambda r: _best_dim(r, "exp03"), _equals(8)),
        c("critical.pred_dncl", "3.5", "DNcl: Grad-IFV performs well in the best space",
          "performs well", ("exp02",), _MED + " (projected onto Z^-1 C)", "≤ 15°",
          lambda r: _median(r, "exp02", "angle_pred"), _at_most(15.0)),
        c("critical.pred_dn4cl", "3.5", "DN4cl: Grad-IFV performs well in the best space",
          "performs well", ("exp03",), _MED + " (projected onto Z^-1 C)", "≤ 15°",
          lambda r: _median(r, "exp03", "angle_pred"), _at_most(15.0)),
        c("critical.high_angle_low_ssim", "3.5", "DN[4]cl: all samples with high angular "
          "distance exhibit a low SSIM index", "all", ("exp02", "exp03"),
          "share of best-space samples with angle_pred > 30° that have ssim_pred < 0.7",
          "≥ 80%", _high_angle_low_ssim, _at_least(0.8)),
        c("critical.cluster", "3.5", "DN[4]cl: accurate stable samples with low SSIM keep a "
          "notable fraction of x outside C", "lower fraction in C", ("exp02", "exp03"),
          "median crit_fraction of accurate (≤ 15°) stable samples with ssim_pred ≥ 0.7 "
          "minus that of those with ssim_pred < 0.7", "> 0", _low_ssim_cluster,
          lambda v: v > 0.0),
        # Sec. 3.6, k = 2 stays accurate
        c("k2.nf_dnde", "3.6", "k = 2, DNde: more features only slightly increase the "
          "angles", "similar to Sec. 3.4", ("exp11",), "max over n_f of the median angle_pred",
          "≤ 20°", lambda r: _max_median_over_nf(r, "exp11"), _at_most(ACCURATE)),
        c("k2.nf_gn4c", "3.6", "k = 2, GN4c: more features only slightly increase the "
          "angles", "similar to Sec. 3.4", ("exp12",), "max over n_f of the median angle_pred",
          "≤ 20°", lambda r: _max_median_over_nf(r, "exp12"), _at_most(ACCURATE)),
        c("k2.maxmean", "3.6", "k = 2, 80 DNde filters, max pooling + mean: accurate",
          "similar to Sec. 3.4", ("exp13",), _MED, "≤ 20°",
          lambda r: _median(r, "exp13", "angle_pred"), _at_most(ACCURATE)),
        c("k2.mean", "3.6", "k = 2, 80 DNde filters, mean aggregation: accurate",
          "similar to Sec. 3.4", ("exp14",), _MED, "≤ 20°",
          lambda r: _median(r, "exp14", "angle_pred"), _at_most(ACCURATE)),
        c("k2.center", "3.6", "k = 2, 80 DNde filters, center neuron: accurate",
          "similar to Sec. 3.4", ("exp15",), _MED, "≤ 20°",
          lambda r: _median(r, "exp15", "angle_pred"), _at_most(ACCURATE)),
        # Sec. 3.6, k = 0
        c("k0.dnde_160", "3.6", "k = 0, first 160 DNde filters: predictions significantly "
          "better than the feature responses", "better", ("exp06",),
          "median angle_response minus median angle_pred at the largest n_f ≤ 160 (of 342; "
          "scaled to the layer size)", "≥ 10°", _pred_vs_response, _at_least(10.0)),
        c("k0.dnde_ssim", "3.6", "k = 0, first 160 DNde filters: SSIM after "
          "re-optimization does not drop below 0.89", "≥ 0.89", ("exp06",),
          "min ssim_pred at that n_f", "≥ 0.84", _min_ssim_small, _at_least(0.84)),
        c("k0.dnde_288", "3.6", "k = 0, more than 288 of 342 DNde filters: almost all "
          "angles between 70° and 90°", "almost all", ("exp06",),
          "share of angle_pred ≥ 70° over the n_f > 288 (scaled to the layer size)", "≥ 80%",
          lambda r: _share_beyond(r, "exp06", 288, 342, 70.0), _at_least(0.8)),
        c("k0.gn4c_onset", "3.6", "k = 0, GN4c: degradation sets in at 96 features",
          "96", ("exp07",), "onset interval (last n_f, first n_f] with median angle_pred "
          "above 20°", "overlaps 64 to 128", lambda r: _onset(r, "exp07", 512),
          lambda v: v[0] < 128.0 and v[1] >= 64.0),
        c("k0.gn4c_256", "3.6", "k = 0, GN4c beyond 256 features: most predictions "
          "perpendicular", "most", ("exp07",), "share of angle_pred ≥ 70° over the n_f > 256",
          "> 50%", lambda r: _share_beyond(r, "exp07", 256, 512, 70.0), lambda v: v > 0.5),
        c("k0.maxmean", "3.6", "k = 0, 80 DNde filters, max pooling + mean: close to perfect "
          "(Fig. 3)", "alpha_1 ≈ 1", ("exp08",), "mean alpha_1", "≥ 0.8",
          lambda r: _alpha_j(r, "exp08", 1), _at_least(0.8)),
        c("k0.mean", "3.6", "k = 0, 80 DNde filters, mean aggregation: fails (Fig. 3)",
          "fails", ("exp09",), "mean alpha_1", "≤ 0.5",
          lambda r: _alpha_j(r, "exp09", 1), _at_most(0.5)),
        c("k0.center", "3.6", "k = 0, 80 DNde filters, center neuron: fails (Fig. 3)",
          "fails", ("exp10",), "mean alpha_1", "≤ 0.5",
          lambda r: _alpha_j(r, "exp10", 1), _at_most(0.5)),
    ]
    # Sec. 3.7, parametrizations: quality of predictions not influenced
    for exp, base, net, param in (("exp17", "exp16", "DNde", "FFT"),
                                  ("exp18", "exp16", "DNde", "FFT-E"),
                                  ("exp20", "exp19", "GN4c", "FFT"),
                                  ("exp21", "exp19", "GN4c", "FFT-E")):
        out.append(c(f"param.{exp}", "3.7", f"{net}: P_{param} predicts as well as P_rgb",
                     "not influenced", (exp, base),
                     f"|median angle_pred {exp} - median angle_pred {base}|", "≤ 5°",
                     lambda r, e=exp, b=base: _param_gap(r, e, b), _at_most(5.0)))
    for exp, base, net in (("exp18", "exp16", "DNde"), ("exp21", "exp19", "GN4c")):
        out.append(c(f"smooth.{exp}", "3.7", f"Fig. 4, {net}: P_ffte's realizations are "
                     "smoother than P_rgb's", "image quality changes notably", (exp, base),
                     f"median share of spectral energy above 0.25 cycles/px of the stored "
                     f"realizations, {exp} vs {base}", f"ratio ≤ {SMOOTHER}",
                     lambda r, e=exp, b=base: _smoother(r, e, b), _at_most(SMOOTHER)))
    for exp, mask in (("exp22", "mask = 1"), ("exp23", "mask in [-1, 1]")):
        out.append(c(f"srnet.{exp}", "3.7", f"SRNet, k = 2, {mask}: targets recovered up to "
                     "5°", "all 64", (exp,), "share of samples with angle_pred ≤ 5°", "≥ 90%",
                     lambda r, e=exp: _srnet_share(r, e, 5.0), _at_least(0.9)))
    for exp, mask in (("exp24", "mask = 1"), ("exp25", "mask in [-1, 1]")):
        out.append(c(f"srnet.{exp}", "3.7", f"SRNet, k = 0, {mask}: reliable, angles < 20°",
                     "< 20°", (exp,), "share of samples with angle_pred < 20°", "≥ 90%",
                     lambda r, e=exp: _srnet_share(r, e, 20.0), _at_least(0.9)))
    # Sec. 3.3 / Table 1
    for p in TABLE1:
        paper = " / ".join(f"{t:.1f}" for t in p.times)
        out.append(c(f"time.{p.model}", "3.3", f"Table 1, {p.model}: seconds per sample "
                     "(I* / Dy / x* / re-opt.)", paper, p.experiments,
                     "mean of t_fv / t_jacobian / t_predict / t_reopt over the best-space rows",
                     "each within a factor of 10 (other hardware)",
                     lambda r, q=p: _timing(r, q), _yes))
    out.append(c("time.fv_dominates", "3.3", "Generating the realizations takes "
                 "significantly longer than the other stages", "I* largest",
                 tuple(dict.fromkeys(e for p in TABLE1 for e in p.experiments)),
                 "t_fv > t_jacobian, t_predict, t_reopt for every timed model", "all models",
                 _fv_dominates, _yes))
    return out


CLAIMS: tuple[Claim, ...] = tuple(_claims())

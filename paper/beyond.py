"""Where the paper's Sec. 4 points, from ``results/``: robust FV (transformation robustness
and priors, docs/robust-ifv.md) and network comparison (``ifv compare``, docs/compare.md).

One table each, shared by ``paper.figures`` (robust.png, compare.png) and
``paper.report`` (REPORT.md's sections beyond the paper).
"""

from __future__ import annotations

import math

import pandas as pd

from paper.runs import NotRun, Results

# the robust experiments (conf/experiment), in the order REPORT.md lists them
ROBUST = ("dnde_robust", "dnde_robust_tv", "gn4c_robust", "gn4c_robust_tv")
# the comparisons (conf/comparison), likewise
COMPARISONS = ("dnde_permuted", "dnde_rescaled_k0", "dnde_rescaled_k2", "dnde_seeds",
               "gn4c_permuted", "gn4c_rescaled_k0", "gn4c_rescaled_k2")

# robust_table's angle columns: (results column, label)
ROBUST_ANGLES = (("angle_pred", "plain Grad-IFV"), ("angle_robust", "robust Grad-IFV"),
                 ("angle_response", "feature response"), ("angle_random", "random objective"))
# robust_table's share of rows whose robust prediction is this close (degrees): the medians
# hide bimodal outcomes (e.g. FV collapsing to the prior on some targets)
ROBUST_WITHIN = 10.0
# comparison_table's share columns: (summary key, label)
COMPARISON_SHARES = (("recovered", "recovered (IFV)"),
                     ("baseline_recovered", "recovered (baseline)"),
                     ("confident", "confident"), ("agreement", "agreement with baseline"))


def _first(df: pd.DataFrame, col: str, default: object = "-") -> object:
    return df[col].iloc[0] if col in df.columns and len(df) else default


def robust_table(res: Results, names: tuple[str, ...] = ROBUST) -> pd.DataFrame:
    """One row per collected robust experiment: its setting, the median angles (degrees) of
    ``ROBUST_ANGLES``, the share of rows with the robust angle at most ``ROBUST_WITHIN`` and
    the median SSIM after re-optimization w.r.t. the robust prediction, over the rows of each
    run's chosen space (``Results.best``). Raises ``NotRun`` if none was collected."""
    rows = []
    for name in names:
        try:
            df = res.best(name)
        except NotRun:
            continue
        row: dict[str, object] = {
            "experiment": name, "model": _first(df, "model"), "layer": _first(df, "layer"),
            "n_f": int(_first(df, "n_f", 0)), "k": float(_first(df, "k", math.nan)),
            "transforms": _first(df, "transforms"), "prior": _first(df, "prior"),
            "draws": _first(df, "inversion_draws"),
            "estimator": _first(df, "inversion_estimator"), "samples": len(df)}
        for col, _ in ROBUST_ANGLES:
            row[col] = float(df[col].median()) if col in df.columns else math.nan
        row["robust_within"] = (float((df["angle_robust"] <= ROBUST_WITHIN).mean())
                                if "angle_robust" in df.columns else math.nan)
        row["ssim_robust"] = (float(df["ssim_robust"].median()) if "ssim_robust" in df.columns
                              else math.nan)
        rows.append(row)
    if not rows:
        raise NotRun(", ".join(names))
    return pd.DataFrame(rows)


def comparison_table(res: Results, names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per collected comparison (``COMPARISONS`` first, then any other name): A, B,
    k, the canonical rows and the shares of ``COMPARISON_SHARES`` (NaN where a comparison
    has no ground truth), the median baseline correlation and, planted, the median angle of
    x_B to the true partner. Raises ``NotRun`` if none was collected."""
    have = res.comparison_names
    order = [n for n in (names or COMPARISONS) if n in have]
    order += [n for n in have if n not in order and names is None]
    rows = []
    for name in order:
        s = res.comparison(name)
        st = s.get("settings", {})
        a, b = st.get("a", {}), st.get("b", {})
        planted = st.get("planted")
        row: dict[str, object] = {
            "comparison": name,
            "a": f"{a.get('model', '?')}.{a.get('layer', '?')}",
            "b": f"{b.get('model', '?')}{' (' + planted + ')' if planted else ''}"
                 f".{b.get('layer', '?')}",
            "k": float(st.get("k", math.nan)), "rows": int(s.get("canonical", 0))}
        for key, _ in COMPARISON_SHARES:
            v = s.get(key)
            row[key] = math.nan if v is None else float(v)
        row["median_baseline_corr"] = float(s.get("median_baseline_corr") or math.nan)
        row["median_angle_truth"] = float(s.get("median_angle_truth") or math.nan)
        rows.append(row)
    if not rows:
        raise NotRun(", ".join(names or COMPARISONS))
    return pd.DataFrame(rows)


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.0%}"


def _deg(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1f}"


def robust_markdown(df: pd.DataFrame) -> str:
    """``robust_table`` as a markdown table."""
    head = ("| experiment | network | n_f | k | transforms | prior | draws | samples | "
            + " | ".join(label for _, label in ROBUST_ANGLES)
            + f" | robust within {ROBUST_WITHIN:g} deg | SSIM (robust) |")
    lines = [head, "|" + "---|" * (10 + len(ROBUST_ANGLES))]
    for r in df.itertuples(index=False):
        angles = [_deg(getattr(r, col)) for col, _ in ROBUST_ANGLES]
        ssim = "-" if math.isnan(r.ssim_robust) else f"{r.ssim_robust:.3f}"
        cells = [r.experiment, f"{r.model}.{r.layer}", str(r.n_f), f"{r.k:g}",
                 str(r.transforms), str(r.prior), f"{r.draws} ({r.estimator})",
                 str(r.samples), *angles, _pct(r.robust_within), ssim]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_markdown(df: pd.DataFrame) -> str:
    """``comparison_table`` as a markdown table."""
    head = ("| comparison | A | B | k | rows | "
            + " | ".join(label for _, label in COMPARISON_SHARES)
            + " | baseline corr. (median) | x_B to truth (median deg) |")
    lines = [head, "|" + "---|" * (7 + len(COMPARISON_SHARES))]
    for r in df.itertuples(index=False):
        shares = [_pct(getattr(r, key)) for key, _ in COMPARISON_SHARES]
        corr = "-" if math.isnan(r.median_baseline_corr) else f"{r.median_baseline_corr:.2f}"
        cells = [r.comparison, r.a, r.b, f"{r.k:g}", str(r.rows), *shares, corr,
                 _deg(r.median_angle_truth)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

"""The paper's figures and Table 1 from ``results/`` (issue 6, part 4).

    python -m experiments.figures [--results results] [--out figures]

Builds what the collected experiments allow, as PNG and PDF, and says in one line each which
figures it skipped for missing experiments:

- ``fig2a``/``fig2b``/``fig2c`` and ``fig2``: alpha_j bars over the bivariate (exp01) or
  trivariate (exp02, exp03: per critical space) angle-vs-SSIM plots (Fig. 2);
- ``fig3``: alpha_j bars over aggregations (exp08-10, exp13-15) and over n_f (DNde: exp06,
  exp11; GN4c: exp07, exp12), rows k = 0 and k = 2 (Fig. 3);
- ``fig4``: realizations per parametrization (GoogLeNet exp19-21, DenseNet exp16-18);
- ``figS1``: Hoyer sparseness of uniform samples on the sphere (Supp. S2), needs no results;
- ``figS2``: difference maps of re-optimization for exp01 (Supp. S3);
- ``s4/<exp>``: the diagrams of Supp. S4 for every collected experiment;
- ``table1.md``/``table1.csv``: seconds per sample per model (Table 1).

The diagrams come from ``ifv.plots`` as PNG panels (kept in ``<out>/panels/``); each figure
lays its panels out on one canvas and writes it as PNG and as PDF (the panels embedded as
images at their native resolution).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.patches import Rectangle

from experiments.reference import (
    EXPERIMENTS,
    NotApplicable,
    hf_share,
    mean_alpha,
    table1,
    table1_markdown,
)
from experiments.results import NotRun, Results
from ifv.plots import (
    alpha_bars,
    angle_ssim,
    difference_maps,
    hoyer_histograms,
    realizations_grid,
    ssim_kde,
)
from ifv.sampling import hoyer, uniform_sphere
from ifv.store import atomic_write

Cell = tuple[Path | None, str]  # a panel (None: placeholder) and its caption
Log = Callable[[str], None]
DPI = 100
PLACEHOLDER = (360, 240)  # pixels of a missing panel


class Skipped(Exception):
    """A figure cannot be built from the present results (the message says why)."""


def compose(rows: Sequence[Sequence[Cell]], stem: Path, title: str = "") -> list[Path]:
    """Lay PNG panels out row by row (each row centred, a caption above every cell) and
    write ``stem``.png and ``stem``.pdf; a None panel is a dashed box saying "not run"."""
    images = [[(imread(p) if p is not None else None, text) for p, text in row] for row in rows]
    gap = 12
    lines = max((text.count("\n") + 1 for row in rows for _, text in row if text), default=0)
    cap = 18 * lines + 8 if lines else 0
    top = 40 if title else 6

    def size(img: np.ndarray | None) -> tuple[int, int]:
        return PLACEHOLDER if img is None else (img.shape[1], img.shape[0])

    widths = [sum(size(i)[0] for i, _ in row) + gap * (len(row) - 1) for row in images]
    heights = [max(size(i)[1] for i, _ in row) + cap for row in images]
    w_tot = max(widths) + 2 * gap
    h_tot = top + sum(heights) + gap * len(images)
    fig = Figure(figsize=(w_tot / DPI, h_tot / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.text(0.5, 1 - 20 / h_tot, title, ha="center", va="center", fontsize=13)
    y = top
    for row, row_w, row_h in zip(images, widths, heights, strict=True):
        x = (w_tot - row_w) / 2
        for img, text in row:
            w, h = size(img)
            if text:
                fig.text((x + w / 2) / w_tot, 1 - (y + cap / 2) / h_tot, text, ha="center",
                         va="center", fontsize=11)
            ax = fig.add_axes((x / w_tot, 1 - (y + cap + h) / h_tot, w / w_tot, h / h_tot))
            ax.set_axis_off()
            if img is None:
                ax.add_patch(Rectangle((0.02, 0.02), 0.96, 0.96, fill=False, ls="--",
                                       ec="0.6", transform=ax.transAxes))
                ax.text(0.5, 0.5, "not run", ha="center", va="center", color="0.5",
                        fontsize=12, transform=ax.transAxes)
            else:
                ax.imshow(img, interpolation="none", aspect="auto")
            x += w + gap
        y += row_h + gap
    out = []
    for fmt in ("png", "pdf"):
        path = stem.with_suffix(f".{fmt}")
        atomic_write(path, lambda p, f=fmt: fig.savefig(p, format=f, dpi=DPI))
        out.append(path)
    return out


def _label(exp: str) -> str:
    meta = EXPERIMENTS.get(exp)
    return f"{meta.short} ({exp})" if meta else exp


def _stand_in_note(df: pd.DataFrame) -> str:
    if "stand_in" in df.columns and df["stand_in"].any():
        return f" [stand-in: {', '.join(sorted(df['model'].astype(str).unique()))}]"
    return ""


def _require(res: Results, *exps: str) -> None:
    missing = [e for e in exps if not res.has(e)]
    if missing:
        raise Skipped(f"{', '.join(missing)} not in {res.root}/")


def _require_any(res: Results, exps: Sequence[str]) -> None:
    if not any(res.has(e) for e in exps):
        raise Skipped(f"none of {', '.join(exps)} in {res.root}/")


def _predicted_only(df: pd.DataFrame) -> pd.DataFrame:
    """Rows for a trivariate plot: only the predicted objectives are drawn (Fig. 2b,c)."""
    return df.drop(columns=[c for c in ("ssim_target", "ssim_response", "ssim_random")
                            if c in df.columns])


# ---------------------------------------------------------------------------- Fig. 2

def _fig2_column(res: Results, exp: str, panels: Path, trivariate: bool) -> tuple[Path, Path]:
    best = res.best(exp)
    title = f"{_label(exp)}{_stand_in_note(best)}"
    alpha = alpha_bars({_label(exp): mean_alpha(best)}, panels / f"fig2_{exp}_alpha.png")
    if trivariate:
        plot = angle_ssim(_predicted_only(res.frame(exp)), panels / f"fig2_{exp}_spaces.png",
                          group="critical_dim", title=title)
    else:
        plot = angle_ssim(best, panels / f"fig2_{exp}_angle_ssim.png", title=title)
    return alpha, plot


FIG2 = (("a", "exp01", "GoogLeNet", False), ("b", "exp02", "DenseNet", True),
        ("c", "exp03", "DenseNetEx4", True))


def fig2(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. 2 (a) GoogLeNet, (b) DenseNet, (c) DenseNetEx4: alpha bars over the bivariate
    (a) or trivariate (b, c) angle-vs-SSIM plots."""
    _require_any(res, [exp for _, exp, _, _ in FIG2])
    panels, written, columns = out / "panels", [], []
    for letter, exp, net, tri in FIG2:
        if not res.has(exp):
            log(f"skipped Fig. 2{letter}: {exp} not in {res.root}/")
            continue
        alpha, plot = _fig2_column(res, exp, panels, tri)
        caption = f"({letter}) {net} ({exp})"
        written += compose([[(alpha, caption)], [(plot, "")]], out / f"fig2{letter}")
        columns.append((alpha, plot, caption))
    written += compose([[(a, c) for a, _, c in columns], [(p, "") for _, p, _ in columns]],
                       out / "fig2", title="Fig. 2")
    return written


# ---------------------------------------------------------------------------- Fig. 3

def _alpha_by(res: Results, exps: Sequence[tuple[str, str]], path: Path) -> Path | None:
    """Vertical alpha bars, one per (experiment, label); None if none is present."""
    bars = {label: mean_alpha(res.best(e)) for e, label in exps if res.has(e)}
    return alpha_bars(bars, path, orientation="vertical") if bars else None


def _alpha_over_nf(res: Results, exp: str, path: Path) -> Path | None:
    if not res.has(exp):
        return None
    best = res.best(exp)
    bars = {str(n): mean_alpha(g) for n, g in best.groupby("n_features", sort=True)}
    return alpha_bars(bars, path, orientation="vertical")


def fig3(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. 3: alpha_j over aggregations (80 DNde filters) and over n_f (DNde, GN4c); the
    paper shows k = 0 (top row), k = 2 (bottom row) is the comparison Sec. 3.6 describes."""
    need = ("exp06", "exp07", "exp08", "exp09", "exp10", "exp11", "exp12", "exp13", "exp14",
            "exp15")
    _require_any(res, need)
    missing = [e for e in need if not res.has(e)]
    if missing:
        log(f"Fig. 3: {', '.join(missing)} not collected (left blank)")
    panels = out / "panels"
    rows = []
    for k, (mm, mean, center), dnde, gn in ((0, ("exp08", "exp09", "exp10"), "exp06", "exp07"),
                                            (2, ("exp13", "exp14", "exp15"), "exp11", "exp12")):
        agg = _alpha_by(res, [(mm, "max+mean"), (mean, "mean"), (center, "center")],
                        panels / f"fig3_aggregation_k{k}.png")
        rows.append([
            (agg, f"80 DNde filters, k = {k} ({mm}-{center[-2:]})"),
            (_alpha_over_nf(res, dnde, panels / f"fig3_{dnde}.png"),
             f"DNde over n_f, k = {k} ({dnde})"),
            (_alpha_over_nf(res, gn, panels / f"fig3_{gn}.png"), f"GN4c over n_f, k = {k} ({gn})"),
        ])
    return compose(rows, out / "fig3", title="Fig. 3: alpha_j (dark: high fragmentation)")


# ---------------------------------------------------------------------------- Fig. 4

def _titles(targets: np.ndarray, prefix: str) -> list[str]:
    h = hoyer(torch.as_tensor(targets, dtype=torch.float64)).numpy()
    return [f"{prefix} e_{int(np.argmax(np.abs(t)))}" if hv > 1 - 1e-9 else f"{prefix} h={hv:.2f}"
            for t, hv in zip(targets, h, strict=True)]


def _param_grid(res: Results, exps: Sequence[str], path: Path, n: int = 6) -> Path | None:
    """Realizations of the parametrizations ``exps`` as rows, the same targets per column."""
    found = [(e, res.images(e)) for e in exps if res.has(e)]
    found = [(e, im) for e, im in found if im is not None]
    if not found:
        return None
    m = min([n, *(len(im["before"]) for _, im in found)])
    imgs = np.concatenate([im["before"][:m].astype(np.float32) for _, im in found])
    titles = [t for e, im in found
              for t in _titles(im["targets"][:m], f"{EXPERIMENTS[e].param}:")]
    return realizations_grid(imgs, path, titles=titles, ncols=m)


def fig4(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. 4: realizations under P_rgb (top), P_fft (mid), P_ffte (bottom) for (a)
    GoogLeNet and (b) DenseNet."""
    nets = (("a", "GoogLeNet", ("exp19", "exp20", "exp21")),
            ("b", "DenseNet", ("exp16", "exp17", "exp18")))
    if not any(res.images(e) is not None for _, _, exps in nets for e in exps):
        raise Skipped(f"no images of exp16-exp21 in {res.root}/")
    panels = out / "panels"
    cells = []
    for letter, net, exps in nets:
        grid = _param_grid(res, exps, panels / f"fig4_{letter}.png")
        if grid is None:
            log(f"skipped Fig. 4{letter}: no images of {', '.join(exps)} in {res.root}/")
            continue
        missing = [e for e in exps if res.images(e) is None]
        note = f"; {', '.join(missing)} missing" if missing else ""
        shares = ", ".join(f"{EXPERIMENTS[e].param} {_hf(res, e)}" for e in exps
                           if e not in missing)
        cells.append((grid, f"({letter}) {net} ({exps[0]}-{exps[-1][-2:]}{note})\n"
                            f"high-frequency share: {shares}"))
    return compose([cells], out / "fig4", title="Fig. 4: realizations per parametrization "
                   "(rows: RGB, FFT, FFT-E; high-frequency share: energy above 0.25 "
                   "cycles/px, median)")


def _hf(res: Results, exp: str) -> str:
    try:
        return f"{hf_share(res, exp):.2f}"
    except (NotApplicable, NotRun):
        return "n/a"


# ---------------------------------------------------------------------------- Fig. S1

def sphere_hoyer(dims: Sequence[int] = (2, 10, 100), n: int = 10_000, seed: int = 0,
                 ) -> dict[int, np.ndarray]:
    """Hoyer sparseness of ``n`` uniform samples on the unit sphere per dimension (Fig. S1).

    Supp. S2 samples Omega, the sphere; the targets are nonnegative (Sec. 3.2). Hoyer's
    measure is sign invariant and |x| of a uniform point on the sphere is uniform on its
    nonnegative part, so both give this one distribution.
    """
    g = torch.Generator().manual_seed(seed)
    return {d: hoyer(uniform_sphere(n, d, g).abs()).numpy() for d in dims}


def fig_s1(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. S1: sparse vectors become rare on the sphere as the dimension grows."""
    values = sphere_hoyer()
    png = hoyer_histograms({f"{d} dimensions": v for d, v in values.items()},
                           out / "panels" / "figS1.png",
                           title="Hoyer sparseness of 10,000 uniform samples on the unit sphere "
                                 "(sign invariant: the same on its nonnegative part)")
    return compose([[(png, "")]], out / "figS1")


# ---------------------------------------------------------------------------- Fig. S2

def fig_s2(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. S2: (a) realizations of exp01 and the difference maps of re-optimizing w.r.t.
    (b) the target, (c) the predicted objective, (d) the feature response, (e) random."""
    _require(res, "exp01")
    im = res.images("exp01")
    if im is None:
        raise Skipped(f"no images of exp01 in {res.root}/")
    after = {label: im[key] for key, label in (
        ("after_target", "(b) target"), ("after_pred", "(c) predicted"),
        ("after_response", "(d) feature response"), ("after_random", "(e) random"))
        if key in im}
    png = difference_maps(im["before"].astype(np.float32),
                          {k: v.astype(np.float32) for k, v in after.items()},
                          out / "panels" / "figS2.png", before_label="(a) realization")
    return compose([[(png, "")]], out / "figS2",
                   title=f"Fig. S2 (exp01){_stand_in_note(res.best('exp01'))}")


# ---------------------------------------------------------------------------- Supp. S4

def _varying(df: pd.DataFrame) -> list[str]:
    return [c for c in ("param", "n_features", "k", "aggregation", "seed") if df[c].nunique() > 1]


def s4_experiment(res: Results, exp: str, out: Path) -> list[Path]:
    """Supp. S4 for one experiment: alpha bars, SSIM kde, the bivariate plot (best space;
    per n_f for sweeps), and the trivariate plot over critical spaces where there are
    several."""
    best, full = res.best(exp), res.frame(exp)
    panels = out / "panels" / "s4"
    meta = EXPERIMENTS.get(exp)
    what = (f"{meta.network}, {meta.features}, {meta.aggregation}, k = {meta.k}, {meta.param}"
            if meta else f"{best['model'].iloc[0]}.{best['layer'].iloc[0]}")
    title = f"{exp}: {what}{_stand_in_note(best)}"
    vary = _varying(best)
    if vary:
        bars = {" ".join(f"{c}={v}" for c, v in zip(vary, key if isinstance(key, tuple)
                                                     else (key,), strict=True)): mean_alpha(g)
                for key, g in best.groupby(vary if len(vary) > 1 else vary[0], sort=True)}
    else:
        bars = {exp: mean_alpha(best)}
    alpha = alpha_bars(bars, panels / f"{exp}_alpha.png")
    kde = ssim_kde(best, panels / f"{exp}_ssim_kde.png")
    if "n_features" in vary:
        biv = angle_ssim(_predicted_only(best), panels / f"{exp}_angle_ssim.png",
                         group="n_features")
        caption = "predicted objectives per n_f"
    else:
        biv = angle_ssim(best, panels / f"{exp}_angle_ssim.png")
        dims = sorted(int(d) for d in best["critical_dim"].unique())
        full_dim = [int(best["n_features"].max())]
        caption = (f"full space C = R^{full_dim[0]}" if dims == full_dim else
                   f"best critical space (dim {', '.join(map(str, dims))})")
    second = [(kde, "SSIM under the target objective"), (biv, caption)]
    runs = full.groupby("run") if "run" in full.columns else [("", full)]
    if any(g["critical_dim"].nunique() > 1 for _, g in runs):
        tri = angle_ssim(_predicted_only(full), panels / f"{exp}_spaces.png",
                         group="critical_dim")
        second.append((tri, "predicted objectives per critical space"))
    return compose([[(alpha, "alpha_j")], second], out / "s4" / exp, title=title)


def s4(res: Results, out: Path, log: Log) -> list[Path]:
    """The per-experiment diagrams of Supp. S4 for every collected experiment."""
    if not res.experiments:
        raise Skipped(f"no experiments in {res.root}/")
    return [p for exp in res.experiments for p in s4_experiment(res, exp, out)]


# ---------------------------------------------------------------------------- Table 1

def write_table1(res: Results, out: Path, log: Log) -> list[Path]:
    """Table 1 as markdown (each cell ours / paper) and CSV."""
    df = table1(res)
    if not (df["experiments"] != "").any():
        raise Skipped(f"none of exp01, exp02, exp03, exp16, exp11, exp06, exp22, exp23 in "
                      f"{res.root}/")
    text = ("# Table 1: seconds per sample (ours / paper)\n\n" + table1_markdown(df) +
            "\n\nMeans over the best-space rows of the experiments in `from`. The paper timed "
            "a GTX 1080 Ti with the paper's step counts; stand-ins and the quick profile "
            "differ in network size and steps.\n")
    md, csv = out / "table1.md", out / "table1.csv"
    atomic_write(md, lambda p: p.write_text(text, encoding="utf-8"))
    atomic_write(csv, lambda p: df.to_csv(p, index=False))
    return [md, csv]


BUILDERS: tuple[tuple[str, Callable[[Results, Path, Log], list[Path]]], ...] = (
    ("Fig. 2", fig2), ("Fig. 3", fig3), ("Fig. 4", fig4), ("Fig. S1", fig_s1),
    ("Fig. S2", fig_s2), ("Supp. S4 diagrams", s4), ("Table 1", write_table1),
)


def build(results: Path, out: Path, log: Log = print) -> tuple[list[Path], list[str]]:
    """Every figure the results allow; a line per skipped one. A figure that fails on
    unexpected data is reported and the others are still built. Returns the files written
    and the names of the failed figures."""
    res = Results(results)
    written: list[Path] = []
    failed: list[str] = []
    for name, builder in BUILDERS:
        try:
            written += builder(res, out, log)
        except Skipped as e:
            log(f"skipped {name}: {e}")
        except Exception as e:  # one broken figure must not cost the others
            log(f"FAILED {name}: {type(e).__name__}: {e}")
            failed.append(name)
    return written, failed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit code 1 if a figure failed."""
    ap = argparse.ArgumentParser(prog="python -m experiments.figures",
                                 description="The paper's figures and Table 1 from results/.")
    ap.add_argument("--results", default="results", help="collected results (default: results)")
    ap.add_argument("--out", default="figures", help="output folder (default: figures)")
    args = ap.parse_args(argv)
    written, failed = build(Path(args.results), Path(args.out))
    print(f"{len(written)} files written to {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

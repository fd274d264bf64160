"""The paper's figures and Table 1 from ``results/`` (issue 6, part 4).

    python -m paper.figures [--results results] [--out figures]

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
- ``table1.md``/``table1.csv``: seconds per sample per model (Table 1);
- ``robust``: median angles of the robust experiments (``paper.beyond``, Sec. 4);
- ``compare``: the shares of the comparisons of ``ifv compare``, and each one's heat map and
  matched pairs under ``compare/``.

Each figure is one matplotlib figure: its panels are subfigures laid out row by row (each
row centred, a caption above every panel), each drawn by an ``ifv.run.plots`` function, so the
PDF is vector; only realizations and difference maps are embedded as images.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure, FigureBase, SubFigure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.textpath import TextToPath

from ifv.errors import UserError
from ifv.files import atomic_write, check_writable
from ifv.math.sampling import hoyer, uniform_sphere
from ifv.run.plots import (
    ANGLE_SSIM_SIZE,
    SSIM_KDE_SIZE,
    Size,
    alpha_bars,
    alpha_bars_size,
    angle_ssim,
    difference_maps,
    difference_maps_size,
    grouped_bars,
    grouped_bars_size,
    hoyer_histograms,
    hoyer_histograms_size,
    new_figure,
    predicted_only,
    realizations_grid,
    realizations_size,
    save,
    ssim_kde,
)
from paper.beyond import (
    COMPARISON_SHARES,
    ROBUST_ANGLES,
    comparison_table,
    robust_table,
)
from paper.reference import (
    EXPERIMENTS,
    NotApplicable,
    hf_share,
    mean_alpha,
    table1,
    table1_markdown,
)
from paper.runs import NotRun, Results

Log = Callable[[str], None]
Draw = Callable[[SubFigure], object]
MISSING: Size = (3.6, 2.4)  # inches of a panel that was not run
GAP = 0.12  # inches between panels and around a figure
TITLE = 0.4  # inches above the panels for a figure title
TITLE_SIZE = 13  # points
CAPTION_LINE, CAPTION_PAD = 0.18, 0.08  # inches per caption line, and below a caption


class Skipped(Exception):
    """A figure cannot be built from the present results (the message says why)."""


@dataclass(frozen=True)
class Cell:
    """A panel: its natural size in inches, what draws it (None: a "not run" box) and the
    caption above it."""

    size: Size
    draw: Draw | None
    caption: str = ""


def not_run(caption: str) -> Cell:
    """A panel whose experiments were not run."""
    return Cell(MISSING, None, caption)


def _axes_panel(draw: Callable, *args: object, **kwargs: object) -> Draw:
    """A panel of one axes: ``draw(ax, *args, **kwargs)``."""
    return lambda fig: draw(fig.add_subplot(), *args, **kwargs)


def _draw_not_run(fig: SubFigure) -> None:
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.add_patch(Rectangle((0.02, 0.02), 0.96, 0.96, fill=False, ls="--", ec="0.6",
                           transform=ax.transAxes))
    ax.text(0.5, 0.5, "not run", ha="center", va="center", color="0.5", fontsize=12,
            transform=ax.transAxes)


def _strip(parent: FigureBase, sizes: Sequence[float], total: float, *, vertical: bool,
           centred: bool, gap: float = GAP) -> list[SubFigure]:
    """Subfigures of ``parent`` of ``sizes`` inches in a row (or a column, top to bottom)
    ``total`` inches long, ``gap`` apart; the slack split on both sides (centred) or after."""
    slack = max(total - sum(sizes) - gap * (len(sizes) - 1), 0.0)
    before, after = (slack / 2, slack / 2) if centred else (0.0, slack)
    ratios, index = [before] if before > 1e-3 else [], []
    for i, s in enumerate(sizes):
        if i and gap > 0:
            ratios.append(gap)
        index.append(len(ratios))
        ratios.append(s)
    ratios += [after] if after > 1e-3 else []
    shape, key = ((len(ratios), 1), "height_ratios") if vertical else ((1, len(ratios)),
                                                                      "width_ratios")
    subs = parent.subfigures(*shape, squeeze=False, wspace=0.0, hspace=0.0, **{key: ratios})
    return [subs.flat[i] for i in index]


def _fill(fig: SubFigure, cell: Cell, height: float) -> None:
    """Draw ``cell`` in ``fig`` under its caption, top-aligned in ``height`` inches."""
    if cell.caption:
        fig.suptitle(cell.caption, fontsize=11)
    panel = _strip(fig, [cell.size[1]], height, vertical=True, centred=False)[0]
    (cell.draw or _draw_not_run)(panel)


def _text_width(text: str, size: float) -> float:
    """Inches that one line of ``text`` takes in the default font at ``size`` points."""
    if not text:
        return 0.0
    width, _, _ = TextToPath().get_text_width_height_descent(text, FontProperties(size=size),
                                                             ismath=False)
    return width / 72.0


def layout(rows: Sequence[Sequence[Cell]], title: str = "") -> Figure:
    """One figure of ``rows`` of panels, each row centred, a caption above every panel."""
    lines = max((c.caption.count("\n") + 1 for row in rows for c in row if c.caption),
                default=0)
    cap = CAPTION_LINE * lines + CAPTION_PAD if lines else 0.0
    widths = [sum(c.size[0] for c in row) + GAP * (len(row) - 1) for row in rows]
    heights = [max(c.size[1] for c in row) + cap for row in rows]
    width = max(*widths, _text_width(title, TITLE_SIZE)) + 2 * GAP
    fig = new_figure((width, (TITLE if title else GAP) + sum(heights) + GAP * len(rows)))
    if title:
        fig.suptitle(title, fontsize=TITLE_SIZE)
    for sub, row, h in zip(_strip(fig, heights, sum(heights) + GAP * (len(rows) - 1),
                                  vertical=True, centred=False), rows, heights, strict=True):
        for cell_fig, cell in zip(_strip(sub, [c.size[0] for c in row], width, vertical=False,
                                         centred=True), row, strict=True):
            _fill(cell_fig, cell, h - cap)
    return fig


def write_figure(fig: Figure, stem: Path) -> list[Path]:
    """``stem``.png and ``stem``.pdf of ``fig``."""
    return [save(fig, stem.with_suffix(f".{fmt}")) for fmt in ("png", "pdf")]


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


# ---------------------------------------------------------------------------- Fig. 2

def _fig2_column(res: Results, exp: str, caption: str, trivariate: bool) -> tuple[Cell, Cell]:
    """The alpha bars (captioned) and the angle-vs-SSIM plot of one column of Fig. 2."""
    best = res.best(exp)
    title = f"{_label(exp)}{_stand_in_note(best)}"
    alpha = Cell(alpha_bars_size(1), _axes_panel(alpha_bars, {_label(exp): mean_alpha(best)}),
                 caption)
    if trivariate:
        draw = partial(angle_ssim, df=predicted_only(res.frame(exp)), group="critical_dim",
                       title=title)
    else:
        draw = partial(angle_ssim, df=best, title=title)
    return alpha, Cell(ANGLE_SSIM_SIZE, draw)


FIG2 = (("a", "exp01", "GoogLeNet", False), ("b", "exp02", "DenseNet", True),
        ("c", "exp03", "DenseNetEx4", True))


def fig2(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. 2 (a) GoogLeNet, (b) DenseNet, (c) DenseNetEx4: alpha bars over the bivariate
    (a) or trivariate (b, c) angle-vs-SSIM plots."""
    _require_any(res, [exp for _, exp, _, _ in FIG2])
    written, columns = [], []
    for letter, exp, net, tri in FIG2:
        if not res.has(exp):
            log(f"skipped Fig. 2{letter}: {exp} not in {res.root}/")
            continue
        alpha, plot = _fig2_column(res, exp, f"({letter}) {net} ({exp})", tri)
        written += write_figure(layout([[alpha], [plot]]), out / f"fig2{letter}")
        columns.append((alpha, plot))
    written += write_figure(layout([[a for a, _ in columns], [p for _, p in columns]],
                                   title="Fig. 2"), out / "fig2")
    return written


# ---------------------------------------------------------------------------- Fig. 3

def _vertical_bars(bars: dict[str, np.ndarray], caption: str) -> Cell:
    """Vertical alpha bars, one per label; a "not run" panel if there are none."""
    if not bars:
        return not_run(caption)
    return Cell(alpha_bars_size(len(bars), "vertical"),
                _axes_panel(alpha_bars, bars, orientation="vertical"), caption)


def _alpha_by(res: Results, exps: Sequence[tuple[str, str]], caption: str) -> Cell:
    """Vertical alpha bars, one per (experiment, label) present."""
    return _vertical_bars({label: mean_alpha(res.best(e)) for e, label in exps if res.has(e)},
                          caption)


def _alpha_over_nf(res: Results, exp: str, caption: str) -> Cell:
    """Vertical alpha bars of ``exp``, one per n_f."""
    if not res.has(exp):
        return not_run(caption)
    best = res.best(exp)
    return _vertical_bars({str(n): mean_alpha(g) for n, g in best.groupby("n_f", sort=True)},
                          caption)


def fig3(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. 3: alpha_j over aggregations (80 DNde filters) and over n_f (DNde, GN4c); the
    paper shows k = 0 (top row), k = 2 (bottom row) is the comparison Sec. 3.6 describes."""
    need = ("exp06", "exp07", "exp08", "exp09", "exp10", "exp11", "exp12", "exp13", "exp14",
            "exp15")
    _require_any(res, need)
    missing = [e for e in need if not res.has(e)]
    if missing:
        log(f"Fig. 3: {', '.join(missing)} not collected (left blank)")
    rows = []
    for k, (mm, mean, center), dnde, gn in ((0, ("exp08", "exp09", "exp10"), "exp06", "exp07"),
                                            (2, ("exp13", "exp14", "exp15"), "exp11", "exp12")):
        rows.append([
            _alpha_by(res, [(mm, "max+mean"), (mean, "mean"), (center, "center")],
                      f"80 DNde filters, k = {k} ({mm}-{center[-2:]})"),
            _alpha_over_nf(res, dnde, f"DNde over n_f, k = {k} ({dnde})"),
            _alpha_over_nf(res, gn, f"GN4c over n_f, k = {k} ({gn})"),
        ])
    return write_figure(layout(rows, title="Fig. 3: alpha_j (dark: high fragmentation)"),
                        out / "fig3")


# ---------------------------------------------------------------------------- Fig. 4

def _titles(targets: np.ndarray, prefix: str) -> list[str]:
    h = hoyer(torch.as_tensor(targets, dtype=torch.float64)).numpy()
    return [f"{prefix} e_{int(np.argmax(np.abs(t)))}" if hv > 1 - 1e-9 else f"{prefix} h={hv:.2f}"
            for t, hv in zip(targets, h, strict=True)]


def _param_grid(res: Results, exps: Sequence[str], n: int = 6) -> Cell | None:
    """Realizations of the parametrizations ``exps`` as rows, the same targets per column;
    None if none of them stored images."""
    found = [(e, res.images(e)) for e in exps if res.has(e)]
    found = [(e, im) for e, im in found if im is not None]
    if not found:
        return None
    m = min([n, *(len(im["before"]) for _, im in found)])
    imgs = np.concatenate([im["before"][:m].astype(np.float32) for _, im in found])
    titles = [t for e, im in found
              for t in _titles(im["targets"][:m], f"{EXPERIMENTS[e].param}:")]
    return Cell(realizations_size(imgs, ncols=m, titled=True),
                partial(realizations_grid, images=imgs, titles=titles, ncols=m))


def fig4(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. 4: realizations under P_rgb (top), P_fft (mid), P_ffte (bottom) for (a)
    GoogLeNet and (b) DenseNet."""
    nets = (("a", "GoogLeNet", ("exp19", "exp20", "exp21")),
            ("b", "DenseNet", ("exp16", "exp17", "exp18")))
    if not any(res.images(e) is not None for _, _, exps in nets for e in exps):
        raise Skipped(f"no images of exp16-exp21 in {res.root}/")
    cells = []
    for letter, net, exps in nets:
        grid = _param_grid(res, exps)
        if grid is None:
            log(f"skipped Fig. 4{letter}: no images of {', '.join(exps)} in {res.root}/")
            continue
        missing = [e for e in exps if res.images(e) is None]
        note = f"; {', '.join(missing)} missing" if missing else ""
        shares = ", ".join(f"{EXPERIMENTS[e].param} {_hf(res, e)}" for e in exps
                           if e not in missing)
        cells.append(replace(grid, caption=f"({letter}) {net} ({exps[0]}-{exps[-1][-2:]}"
                                           f"{note})\nhigh-frequency share: {shares}"))
    return write_figure(layout([cells], title="Fig. 4: realizations per parametrization "
                               "(rows: RGB, FFT, FFT-E; high-frequency share: energy above "
                               "0.25 cycles/px, median)"), out / "fig4")


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
    values = {f"{d} dimensions": v for d, v in sphere_hoyer().items()}
    panel = Cell(hoyer_histograms_size(len(values)), partial(
        hoyer_histograms, values=values,
        title="Hoyer sparseness of 10,000 uniform samples on the unit sphere "
              "(sign invariant: the same on its nonnegative part)"))
    return write_figure(layout([[panel]]), out / "figS1")


# ---------------------------------------------------------------------------- Fig. S2

def fig_s2(res: Results, out: Path, log: Log) -> list[Path]:
    """Fig. S2: (a) realizations of exp01 and the difference maps of re-optimizing w.r.t.
    (b) the target, (c) the predicted objective, (d) the feature response, (e) random."""
    _require(res, "exp01")
    im = res.images("exp01")
    if im is None:
        raise Skipped(f"no images of exp01 in {res.root}/")
    after = {label: im[key].astype(np.float32) for key, label in (
        ("after_target", "(b) target"), ("after_pred", "(c) predicted"),
        ("after_response", "(d) feature response"), ("after_random", "(e) random"))
        if key in im}
    before = im["before"].astype(np.float32)
    panel = Cell(difference_maps_size(before, len(after)),
                 partial(difference_maps, before=before, after=after,
                         before_label="(a) realization"))
    title = f"Fig. S2 (exp01){_stand_in_note(res.best('exp01'))}"
    return write_figure(layout([[panel]], title=title), out / "figS2")


# ---------------------------------------------------------------------------- Supp. S4

def _varying(df: pd.DataFrame) -> list[str]:
    return [c for c in ("param", "n_f", "k", "aggregation", "seed") if df[c].nunique() > 1]


def _s4_bars(best: pd.DataFrame, exp: str) -> Cell:
    """The alpha bars of Supp. S4: one per combination of the varying settings."""
    vary = _varying(best)
    if vary:
        bars = {" ".join(f"{c}={v}" for c, v in zip(vary, key if isinstance(key, tuple)
                                                     else (key,), strict=True)): mean_alpha(g)
                for key, g in best.groupby(vary if len(vary) > 1 else vary[0], sort=True)}
    else:
        bars = {exp: mean_alpha(best)}
    return Cell(alpha_bars_size(len(bars)), _axes_panel(alpha_bars, bars), "alpha_j")


def _s4_bivariate(best: pd.DataFrame) -> Cell:
    """The bivariate plot of the best space; the predicted objectives per n_f for sweeps."""
    if "n_f" in _varying(best):
        return Cell(ANGLE_SSIM_SIZE, partial(angle_ssim, df=predicted_only(best), group="n_f"),
                    "predicted objectives per n_f")
    dims = sorted(int(d) for d in best["critical_dim"].unique())
    full_dim = [int(best["n_f"].max())]
    caption = (f"full space C = R^{full_dim[0]}" if dims == full_dim else
               f"best critical space (dim {', '.join(map(str, dims))})")
    return Cell(ANGLE_SSIM_SIZE, partial(angle_ssim, df=best), caption)


def s4_experiment(res: Results, exp: str, out: Path) -> list[Path]:
    """Supp. S4 for one experiment: alpha bars, SSIM kde, the bivariate plot (best space;
    per n_f for sweeps), and the trivariate plot over critical spaces where there are
    several."""
    best, full = res.best(exp), res.frame(exp)
    meta = EXPERIMENTS.get(exp)
    what = (f"{meta.network}, {meta.features}, {meta.aggregation}, k = {meta.k}, {meta.param}"
            if meta else f"{best['model'].iloc[0]}.{best['layer'].iloc[0]}")
    title = f"{exp}: {what}{_stand_in_note(best)}"
    second = [Cell(SSIM_KDE_SIZE, _axes_panel(ssim_kde, best), "SSIM under the target objective"),
              _s4_bivariate(best)]
    runs = full.groupby("run") if "run" in full.columns else [("", full)]
    if any(g["critical_dim"].nunique() > 1 for _, g in runs):
        second.append(Cell(ANGLE_SSIM_SIZE, partial(angle_ssim, df=predicted_only(full),
                                                    group="critical_dim"),
                           "predicted objectives per critical space"))
    return write_figure(layout([[_s4_bars(best, exp)], second], title=title), out / "s4" / exp)


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


# ---------------------------------------------------------------------------- Sec. 4

def robust(res: Results, out: Path, log: Log) -> list[Path]:
    """robust.png: median angles of plain and robust Grad-IFV, the feature response and a
    random objective per robust experiment (``paper.beyond.robust_table``), with the
    goal of 10 degrees."""
    try:
        df = robust_table(res)
    except NotRun as e:
        raise Skipped(f"none of {e} in {res.root}/") from e
    values = df[[c for c, _ in ROBUST_ANGLES]].to_numpy()
    labels = [f"{r.experiment}\nk={r.k:g}, prior {r.prior}" for r in df.itertuples()]
    colors = ("tab:red", "tab:blue", "tab:gray", "tab:orange")
    cell = Cell(grouped_bars_size(len(df), len(ROBUST_ANGLES)),
                _axes_panel(grouped_bars, values, labels, [lb for _, lb in ROBUST_ANGLES],
                            ylabel="median angle to the target (deg)", ylim=(0, 100),
                            line=(10.0, "goal: 10 deg"), colors=colors),
                "realizations made under transforms (and a prior), inverted")
    return write_figure(layout([[cell]], title="Robust FV (Sec. 4)"), out / "robust")


def comparisons(res: Results, out: Path, log: Log) -> list[Path]:
    """compare.png: per comparison the shares of ``COMPARISON_SHARES`` (recovered by
    Grad-IFV and by the correlation baseline where a planted truth exists, confident
    matches, agreement); each comparison's heat map and matched pairs are copied to
    compare/NAME.correspondence.png, compare/NAME.pairs.png."""
    try:
        df = comparison_table(res)
    except NotRun as e:
        raise Skipped(f"none of {e} in {res.root}/compare/") from e
    values = 100 * df[[k for k, _ in COMPARISON_SHARES]].to_numpy()
    labels = [f"{r.comparison}\nk={r.k:g}" for r in df.itertuples()]
    cell = Cell(grouped_bars_size(len(df), len(COMPARISON_SHARES)),
                _axes_panel(grouped_bars, values, labels, [lb for _, lb in COMPARISON_SHARES],
                            ylabel="% of A's canonical objectives", ylim=(0, 105)),
                "FV on A, Grad-IFV on B (ifv compare); '-': no ground truth")
    written = write_figure(layout([[cell]], title="Network comparison (Sec. 4)"),
                           out / "compare")
    for name in df["comparison"]:
        for figure in ("correspondence", "pairs"):
            src = res.comparison_figure(name, figure)
            if src is not None:
                written.append(atomic_write(out / "compare" / f"{name}.{figure}.png",
                                            lambda p, s=src: shutil.copyfile(s, p)))
    return written


BUILDERS: tuple[tuple[str, Callable[[Results, Path, Log], list[Path]]], ...] = (
    ("Fig. 2", fig2), ("Fig. 3", fig3), ("Fig. 4", fig4), ("Fig. S1", fig_s1),
    ("Fig. S2", fig_s2), ("Supp. S4 diagrams", s4), ("Table 1", write_table1),
    ("robust FV", robust), ("network comparison", comparisons),
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
    """Command line; exit code 1 if a figure failed, 2 if ``--out`` cannot be written."""
    ap = argparse.ArgumentParser(prog="python -m paper.figures",
                                 description="The paper's figures and Table 1 from results/.")
    ap.add_argument("--results", default="results", help="collected results (default: results)")
    ap.add_argument("--out", default="figures", help="output folder (default: figures)")
    args = ap.parse_args(argv)
    try:
        check_writable(args.out, "--out")
    except UserError as exc:
        print(f"figures: error: {exc}", file=sys.stderr)
        return 2
    written, failed = build(Path(args.results), Path(args.out))
    print(f"{len(written)} files written to {args.out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

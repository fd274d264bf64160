"""The paper's diagrams (Fig. 2, Fig. 3, Supp. S3, S4), drawn on matplotlib axes.

Every drawing function takes the ``Axes`` it draws on, or the ``Figure`` / ``SubFigure`` it
fills with axes, and its data; none touches a file. ``new_figure`` makes a figure (no pyplot
state, no window) laid out by matplotlib's constrained layout, the ``*_size`` helpers give
each diagram's natural size in inches, and ``save`` writes a figure atomically in the format
of its suffix. ``run_figures`` draws the diagrams of one run. The DataFrame columns are those
of ``results.parquet`` (``ifv.run.results``).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colorbar import Colorbar
from matplotlib.colors import Colormap, FuncNorm, LinearSegmentedColormap
from matplotlib.figure import Figure, SubFigure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from scipy.stats import gaussian_kde
from torch import Tensor

from ifv.files import atomic_write

PathLike = str | os.PathLike[str]
Canvas = Figure | SubFigure  # what a multi-axes diagram fills
Size = tuple[float, float]  # width, height in inches

DPI = 100
STABLE_SSIM = 0.7  # Supp. S4: a sample is unstable if its SSIM under x_i drops below 0.7
ANGLE_SSIM_SIZE: Size = (7.5, 6.5)
SSIM_KDE_SIZE: Size = (5.5, 3.5)
CELL = 1.4  # inches per realization
DIFF_CELL = 1.6  # inches per difference map

# Fig. 2a: (label, angle column or None for the target itself, SSIM column, colour)
OBJECTIVES: tuple[tuple[str, str | None, str, str], ...] = (
    ("predicted", "angle_pred", "ssim_pred", "tab:blue"),
    ("target", None, "ssim_target", "tab:red"),
    ("feature response", "angle_response", "ssim_response", "tab:green"),
    ("random", "angle_random", "ssim_random", "tab:orange"),
)
# colours of the predicted objectives per group value (Fig. 2b,c)
GROUP_COLORS = ("tab:blue", "tab:purple", "tab:cyan", "navy", "tab:pink", "tab:olive",
                "tab:brown", "tab:gray", "black", "gold")

Series = tuple[str, np.ndarray, np.ndarray, np.ndarray, str]  # label, angle, ssim, rows, colour


# ---------------------------------------------------------------------------- figures, files

def new_figure(size: Size, *, dpi: float = DPI) -> Figure:
    """An empty figure of ``size`` inches with an Agg canvas and constrained layout."""
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` to ``path`` atomically (parent folders created) at the figure's dpi, in
    the format its suffix names (png, pdf, svg, ...)."""
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower()
    return atomic_write(out, lambda p: fig.savefig(p, format=fmt, dpi=fig.dpi))


def _vector_colorbar(cb: Colorbar) -> Colorbar:
    """Keep a colorbar's gradient vector (matplotlib rasterizes long ones); edges in the face
    colour close the seams that PDF viewers show between its segments."""
    if cb.solids is not None:
        cb.solids.set_rasterized(False)
        cb.solids.set_edgecolor("face")
    return cb


# ---------------------------------------------------------------------------- helpers

def _finite(values: object) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def _kde(ax: Axes, values: np.ndarray, grid: np.ndarray, color: str, *,
         vertical: bool = False, scale: float = 1.0) -> None:
    """Filled KDE of ``values`` over ``grid``; a spike where the data has (near) zero variance."""
    if values.size == 0:
        return
    if values.size < 2 or float(np.std(values)) < 1e-9 * max(1.0, float(np.abs(values).max())):
        if vertical:
            ax.axhline(float(values.mean()), color=color, lw=2.0, alpha=0.8)
        else:
            ax.axvline(float(values.mean()), color=color, lw=2.0, alpha=0.8)
        return
    try:
        dens = gaussian_kde(values)(grid)
    except np.linalg.LinAlgError:
        dens = np.histogram(values, bins=grid.size - 1, range=(grid[0], grid[-1]))[0]
        dens = np.append(dens, 0.0).astype(np.float64)
    dens = dens / max(float(dens.max()), 1e-300) * scale
    if vertical:
        ax.fill_betweenx(grid, 0.0, dens, color=color, alpha=0.25, lw=0)
        ax.plot(dens, grid, color=color, lw=1.2)
    else:
        ax.fill_between(grid, 0.0, dens, color=color, alpha=0.25, lw=0)
        ax.plot(grid, dens, color=color, lw=1.2)


def _stable_mask(df: pd.DataFrame) -> np.ndarray:
    """``stable`` column (missing values count as unstable), else ssim_target >= 0.7."""
    if "stable" in df.columns:
        return np.array([v is True or (isinstance(v, (bool, np.bool_, int, float)) and v == 1)
                         for v in df["stable"].tolist()], dtype=bool)
    return df["ssim_target"].to_numpy(dtype=np.float64) >= STABLE_SSIM


def _interpolation(h: int, w: int, cell: float) -> str:
    """Nearest-neighbour when upscaling (small images stay crisp), antialiased when shrinking."""
    return "nearest" if max(h, w) <= DPI * cell else "antialiased"


def _show(ax: Axes, img: np.ndarray, interp: str) -> AxesImage:
    """One (C, H, W) image: the first three channels as RGB, else the first in grey."""
    ax.set_axis_off()
    if img.shape[0] >= 3:
        return ax.imshow(img[:3].transpose(1, 2, 0).clip(0.0, 1.0), interpolation=interp)
    return ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation=interp)


# ---------------------------------------------------------------------------- realizations

def _as_images(images: Tensor | np.ndarray, max_images: int) -> np.ndarray:
    imgs = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if imgs.dim() == 3:
        imgs = imgs.unsqueeze(1)
    if imgs.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(imgs.shape)}")
    return imgs[:max_images].clamp(0.0, 1.0).numpy()


def _grid_shape(b: int, ncols: int) -> tuple[int, int]:
    ncols = max(1, min(ncols, b)) if b else 1
    return max(1, -(-b // ncols)), ncols


def realizations_size(images: Tensor | np.ndarray, *, ncols: int = 8, max_images: int = 64,
                      titled: bool = False) -> Size:
    """The natural size of ``realizations_grid`` for these images (titled: with titles)."""
    shape = tuple(images.shape)
    b, (h, w) = min(int(shape[0]), max_images), shape[-2:]
    nrows, ncols = _grid_shape(b, ncols)
    return ncols * CELL * max(1.0, w / h), nrows * (CELL + (0.2 if titled else 0.0))


def realizations_grid(fig: Canvas, images: Tensor | np.ndarray, *,
                      titles: Sequence[str] | None = None, ncols: int = 8,
                      max_images: int = 64) -> list[Axes]:
    """Fill ``fig`` with a grid of realizations I_i^* (Supp. S3). images: (B, C, H, W) in
    [0, 1]; C >= 3 shows the first three channels as RGB, C < 3 the first channel in grey.
    Pixels are drawn nearest-neighbour so that 32x32 images stay crisp; ``titles`` label the
    cells. Returns the cells' axes, row by row.
    """
    imgs = _as_images(images, max_images)
    b, _, h, w = imgs.shape
    nrows, ncols = _grid_shape(b, ncols)
    interp = _interpolation(h, w, CELL)
    gs = fig.add_gridspec(nrows, ncols, wspace=0.02, hspace=0.02)
    axes = []
    for i in range(nrows * ncols):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        ax.set_axis_off()
        axes.append(ax)
        if i >= b:
            continue
        _show(ax, imgs[i], interp)
        if titles is not None and i < len(titles):
            ax.set_title(str(titles[i]), fontsize=7, pad=2)
    return axes


# ---------------------------------------------------------------------------- Fig. 2a

def predicted_only(df: pd.DataFrame) -> pd.DataFrame:
    """Rows for a trivariate plot: only the predicted objectives are drawn (Fig. 2b,c)."""
    return df.drop(columns=[c for c in ("ssim_target", "ssim_response", "ssim_random")
                            if c in df.columns])


def _angle_series(df: pd.DataFrame, group: str | None) -> list[Series]:
    """The objectives present in ``df``; the predicted ones split per ``group`` value."""
    series: list[Series] = []
    for label, acol, scol, color in OBJECTIVES:
        if scol not in df.columns or (acol is not None and acol not in df.columns):
            continue
        ang = np.zeros(len(df)) if acol is None else df[acol].to_numpy(dtype=np.float64)
        ss = df[scol].to_numpy(dtype=np.float64)
        if group is not None and acol == "angle_pred" and group in df.columns:
            keys = df[group].to_numpy()
            for j, val in enumerate(pd.unique(keys)):
                m = keys == val
                series.append((f"predicted, {group}={val}", np.where(m, ang, np.nan),
                               np.where(m, ss, np.nan), m, GROUP_COLORS[j % len(GROUP_COLORS)]))
            continue
        series.append((label, ang, ss, np.ones(len(df), dtype=bool), color))
    return series


def _marker_sizes(df: pd.DataFrame) -> np.ndarray:
    """Point size from ``crit_fraction`` where present."""
    if "crit_fraction" in df.columns:
        cf = df["crit_fraction"].to_numpy(dtype=np.float64)
        return 6.0 + 50.0 * np.nan_to_num(cf, nan=1.0).clip(0.0, 1.0)
    return np.full(len(df), 22.0)


def _status_handles(df: pd.DataFrame, stable: np.ndarray) -> list[Line2D]:
    """Legend entries for the markers (stable / unstable) and point sizes."""
    # one row per sample and critical space: count samples, not rows
    n_unstable = (int(df.loc[~stable, "sample"].nunique()) if "sample" in df.columns
                  else int((~stable).sum()))
    handles = [
        Line2D([], [], ls="", marker="o", color="0.4", label="stable"),
        Line2D([], [], ls="", marker="^", color="0.4",
               label=f"unstable (SSIM target < {STABLE_SSIM}, n={n_unstable})"),
    ]
    if "crit_fraction" in df.columns:
        handles.append(Line2D([], [], ls="", marker="o", color="0.6", markersize=3,
                              label="size: fraction in critical space"))
    return handles


def _marginal_style(*axes: Axes) -> None:
    for a in axes:
        a.tick_params(labelleft=False, labelbottom=False, left=False, bottom=False)
        for side in ("top", "right"):
            a.spines[side].set_visible(False)


def angle_ssim(fig: Canvas, df: pd.DataFrame, *, title: str = "",
               group: str | None = None) -> list[Axes]:
    """Fill ``fig`` with the bivariate plot of Fig. 2a (Supp. S4 diagram 3): angular distance
    to the target objective (x, degrees) vs. SSIM after re-optimization (y) for the predicted
    (blue), target (red, at 0 degrees), feature-response (green) and random (orange)
    objectives, with marginal KDEs of the angles (top) and SSIM indices (right). Triangles
    mark unstable samples (``stable`` False: SSIM under the target < 0.7, dashed line); point
    size follows ``crit_fraction`` where present. Missing or all-NaN objectives are skipped.

    ``group`` (e.g. "critical_dim") splits the predicted objectives into one colour per value,
    the trivariate plots of Fig. 2b,c. Returns the axes (joint, top, right).
    """
    stable, sizes = _stable_mask(df), _marker_sizes(df)
    series = _angle_series(df, group)
    gs = fig.add_gridspec(2, 2, width_ratios=(4.0, 1.0), height_ratios=(1.0, 4.0),
                          wspace=0.04, hspace=0.04)
    ax = fig.add_subplot(gs[1, 0])
    ax_top = fig.add_subplot(gs[0, 0], sharex=ax)
    ax_right = fig.add_subplot(gs[1, 1], sharey=ax)

    all_ssim = np.concatenate([_finite(s) for _, _, s, _, _ in series] or [np.zeros(1)])
    y_lo = min(0.0, float(all_ssim.min()) - 0.02) if all_ssim.size else 0.0
    a_grid = np.linspace(0.0, 90.0, 361)
    s_grid = np.linspace(y_lo, 1.02, 300)

    handles: list[Line2D] = []
    for label, ang, ss, sel, color in series:
        ok = np.isfinite(ang) & np.isfinite(ss) & sel
        if not ok.any():
            continue
        for mask, marker in ((ok & stable, "o"), (ok & ~stable, "^")):
            if mask.any():
                ax.scatter(ang[mask], ss[mask], s=sizes[mask], marker=marker, c=color,
                           alpha=0.6, edgecolors="white", linewidths=0.3)
        _kde(ax_top, _finite(ang[ok]), a_grid, color)
        _kde(ax_right, _finite(ss[ok]), s_grid, color, vertical=True)
        med = float(np.median(ang[ok]))
        handles.append(Line2D([], [], ls="", marker="o", color=color, markersize=6,
                              label=f"{label} (median {med:.1f}\N{DEGREE SIGN}, n={ok.sum()})"))

    ax.axhline(STABLE_SSIM, color="k", ls="--", lw=1.0)
    ax.set_xlim(-2.0, 92.0)
    ax.set_ylim(y_lo, 1.02)
    ax.set_xticks(np.arange(0, 91, 15))
    ax.set_xlabel("angular distance to target objective [\N{DEGREE SIGN}]")
    ax.set_ylabel("SSIM after re-optimization")
    ax.grid(alpha=0.25)
    ax.legend(handles=handles + _status_handles(df, stable), loc="best", fontsize=7.5,
              framealpha=0.85)
    _marginal_style(ax_top, ax_right)
    ax_top.set_ylim(0.0, 1.1)
    ax_right.set_xlim(0.0, 1.1)
    if title:
        fig.suptitle(title, fontsize=11)
    return [ax, ax_top, ax_right]


# ---------------------------------------------------------------------------- alpha bars

def _fragmentation_cmap() -> Colormap:
    """Strong colour for j = 1 through red and purple to black for high j (Fig. 3)."""
    return LinearSegmentedColormap.from_list(
        "ifv_fragmentation", ["#ffb000", "#fe6100", "#dc267f", "#785ef0", "#1a1a40", "#000000"]
    )


def _fragmentation_norm(n_max: int) -> FuncNorm:
    """Colour position (log j / log n_max)^0.6: log so that bars of different n_f share one
    scale, the power to separate the first few j, which matter most (Fig. 2 top)."""
    log_n = float(np.log(n_max))
    return FuncNorm(
        (lambda j: (np.log(np.maximum(j, 1.0)) / log_n) ** 0.6,
         lambda t: np.exp(np.clip(t, 0.0, 1.0) ** (1.0 / 0.6) * log_n)),
        vmin=1.0, vmax=float(n_max),
    )


def _as_alpha_dict(alpha: Mapping[str, object] | Tensor | np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(alpha, Mapping):
        items = alpha.items()
    else:
        arr = np.asarray(torch.as_tensor(alpha).detach().cpu(), dtype=np.float64)
        items = [("", arr)] if arr.ndim == 1 else [(str(i), r) for i, r in enumerate(arr)]
    out = {}
    for label, a in items:
        if isinstance(a, Tensor):
            a = a.detach().cpu().numpy()
        out[str(label)] = np.nan_to_num(np.asarray(a, dtype=np.float64).ravel()).clip(min=0.0)
    return out


def _check_orientation(orientation: str) -> None:
    if orientation not in ("horizontal", "vertical"):
        raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")


def alpha_bars_size(n_bars: int, orientation: str = "horizontal") -> Size:
    """The natural size of ``alpha_bars`` with ``n_bars`` bars."""
    _check_orientation(orientation)
    if orientation == "horizontal":
        return 8.0, 1.2 + 0.45 * max(n_bars, 1)
    return 2.0 + 0.55 * max(n_bars, 1), 5.0


def _bar(ax: Axes, i: int, a: np.ndarray, cmap: Colormap, norm: FuncNorm,
         horizontal: bool) -> None:
    """Bar ``i``: one segment per alpha_j, alpha_1 at the base."""
    colors = cmap(norm(np.arange(1, a.size + 1, dtype=np.float64)))
    lo = np.concatenate([[0.0], np.cumsum(a)[:-1]])
    hi = lo + a
    # one PolyCollection per bar (hundreds of segments for Fig. 3 stay cheap)
    c0, c1 = i - 0.35, i + 0.35
    if horizontal:
        quads = [[(p, c0), (q, c0), (q, c1), (p, c1)] for p, q in zip(lo, hi, strict=True)]
    else:
        quads = [[(c0, p), (c1, p), (c1, q), (c0, q)] for p, q in zip(lo, hi, strict=True)]
    # thin white separators between the wider segments of short bars
    lw = np.where(a > 0.02 * max(float(a.sum()), 1e-300), 0.5, 0.0) if a.size <= 40 else 0.0
    ax.add_collection(PolyCollection(quads, facecolors=colors, edgecolors="white",
                                     linewidths=lw), autolim=False)
    if horizontal:
        ax.text(0.005, i, rf"$\alpha_1$={a[0]:.2f}", va="center", ha="left", fontsize=7)


def _bar_axes(ax: Axes, labels: list[str], total_max: float, horizontal: bool) -> None:
    nb = len(labels)
    ticks = np.arange(nb)
    if horizontal:
        ax.set_yticks(ticks, labels)
        ax.set_xlim(0.0, total_max)
        ax.set_ylim(-0.6, nb - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel(r"$\alpha_j$ (stacked in increasing order of $j$: ascending singular "
                      "values)")
    else:
        ax.set_xticks(ticks, labels, rotation=45 if nb > 6 else 0,
                      ha="right" if nb > 6 else "center")
        ax.set_ylim(0.0, total_max)
        ax.set_xlim(-0.6, nb - 0.4)
        ax.set_ylabel(r"$\alpha_j$ (stacked in increasing order of $j$)")


def alpha_bars(ax: Axes, alpha: Mapping[str, object] | Tensor | np.ndarray, *,
               title: str = "", orientation: str = "horizontal") -> Colorbar:
    """Stacked bars of alpha_1, ..., alpha_{n_f} on ``ax`` (Fig. 2 top, Fig. 3, Supp. S4
    diagram 1): one bar per experiment label, alpha_1 at the base, coloured from a strong
    colour (j = 1) to black (high j, "black indicates high fragmentation") on a log scale in
    j, so bars with different n_f share one colour scale. The colour scale is a colorbar
    beside ``ax`` (returned).

    alpha: (n_f,) array/tensor, (n_bars, n_f) array, or a dict label -> (n_f,) (lengths may
    differ). orientation: "horizontal" (Fig. 2) or "vertical" (Fig. 3).
    """
    _check_orientation(orientation)
    bars = _as_alpha_dict(alpha)
    n_max = max([a.size for a in bars.values()] + [2])
    cmap, norm = _fragmentation_cmap(), _fragmentation_norm(n_max)
    horizontal = orientation == "horizontal"
    total_max = 1.0
    for i, a in enumerate(bars.values()):
        if a.size:
            _bar(ax, i, a, cmap, norm, horizontal)
            total_max = max(total_max, float(a.sum()))
    _bar_axes(ax, list(bars), total_max, horizontal)
    cb = _vector_colorbar(ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                                             pad=0.02, fraction=0.04 if horizontal else 0.08))
    j_ticks = [j for j in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if j <= n_max]
    cb.set_ticks(j_ticks, labels=[str(j) for j in j_ticks])
    # a horizontal bar's colorbar is too short for the long label
    cb.set_label("j" if horizontal else "j (ascending singular value)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return cb


# ---------------------------------------------------------------------------- Supp. S4

def ssim_kde(ax: Axes, df: pd.DataFrame, *, title: str = "") -> None:
    """Supp. S4 diagram 2 on ``ax``: KDE of the SSIM indices after re-optimizing w.r.t. the
    target objective (column ``ssim_target``), red dashed line at the stability threshold 0.7.
    """
    vals = _finite(df["ssim_target"]) if "ssim_target" in df.columns else np.zeros(0)
    lo = min(0.0, float(vals.min()) - 0.02) if vals.size else 0.0
    _kde(ax, vals, np.linspace(lo, 1.02, 400), "tab:blue")
    ax.axvline(STABLE_SSIM, color="tab:red", ls="--", lw=1.2)
    n_unstable = int((vals < STABLE_SSIM).sum())
    ax.set_xlim(lo, 1.02)
    ax.set_ylim(0.0, 1.1)
    ax.set_yticks([])
    ax.set_xlabel("SSIM after re-optimization w.r.t. the target objective")
    ax.set_ylabel("density (scaled)")
    ax.text(0.02, 0.95, f"unstable (< {STABLE_SSIM}): {n_unstable} / {vals.size}",
            transform=ax.transAxes, va="top", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)


# ---------------------------------------------------------------------------- Fig. S1

def hoyer_histograms_size(n_panels: int) -> Size:
    """The natural size of ``hoyer_histograms`` with ``n_panels`` histograms."""
    return 0.6 + 3.3 * max(n_panels, 1), 3.4


def hoyer_histograms(fig: Canvas, values: Mapping[str, object], *, title: str = "",
                     bins: int = 50) -> list[Axes]:
    """Fill ``fig`` with Fig. S1: one density histogram of Hoyer sparseness values per entry
    (label -> values in [0, 1]), with the uniform density that the target sampler of Supp. S2
    aims for (dashed); the text gives the mean and the share of sparse values (>= 0.9).
    """
    items = [(str(k), _finite(v)) for k, v in values.items()]
    edges = np.linspace(0.0, 1.0, bins + 1)
    axes = list(fig.subplots(1, max(len(items), 1), squeeze=False)[0])
    for i, (ax, (label, v)) in enumerate(zip(axes, items, strict=False)):
        ax.hist(v, bins=edges, density=True, color="tab:blue", alpha=0.75)
        ax.axhline(1.0, color="tab:red", ls="--", lw=1.0,
                   label="U[0, 1]: sampler of Supp. S2")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("Hoyer sparseness")
        ax.set_title(label, fontsize=10)
        sparse = 100.0 * float((v >= 0.9).mean()) if v.size else 0.0
        ax.text(0.97, 0.95, f"n = {v.size}\nmean {v.mean():.3f}\n>= 0.9: {sparse:.2f}%",
                transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
        if i == 0:
            ax.set_ylabel("density")
            ax.legend(loc="center right", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return axes


# ---------------------------------------------------------------------------- Fig. S2

def _as_array(images: object) -> np.ndarray:
    return np.asarray(torch.as_tensor(images).detach().cpu(), dtype=np.float64)


def difference_maps_size(before: Tensor | np.ndarray, n_maps: int, *,
                         max_rows: int = 6) -> Size:
    """The natural size of ``difference_maps`` with ``n_maps`` objectives."""
    n = min(int(before.shape[0]), max_rows)
    h, w = before.shape[-2:]
    return (1 + n_maps) * DIFF_CELL * max(1.0, w / h) + 0.9, n * DIFF_CELL + 0.4


def difference_maps(fig: Canvas, before: Tensor | np.ndarray, after: Mapping[str, object], *,
                    max_rows: int = 6, vmax: float | None = None,
                    before_label: str = "realization") -> list[Axes]:
    """Fill ``fig`` with Fig. S2 (Supp. S3): realizations (first column, first three
    channels as RGB) and, per re-optimization objective (label -> images after
    re-optimization), the difference map: per pixel the largest absolute difference over the
    channels. One colour scale for all maps (``vmax``, default: the largest difference
    shown), so magnitudes compare across columns. before and each after: (B, C, H, W) in
    [0, 1]. Returns the image axes, row by row.
    """
    b = _as_array(before)[:max_rows]
    diffs = {str(label): np.abs(_as_array(a)[:len(b)] - b).max(axis=1)
             for label, a in after.items()}
    top = max([float(d.max()) for d in diffs.values()] + [1e-6]) if vmax is None else vmax
    n, cols = len(b), 1 + len(diffs)
    interp = _interpolation(*b.shape[-2:], DIFF_CELL)
    gs = fig.add_gridspec(n, cols, wspace=0.04, hspace=0.04)
    axes, maps, image = [], [], None
    for i in range(n):
        ax = fig.add_subplot(gs[i, 0])
        _show(ax, b[i], interp)
        axes.append(ax)
        if i == 0:
            ax.set_title(before_label, fontsize=9)
        for j, (label, d) in enumerate(diffs.items(), start=1):
            ax = fig.add_subplot(gs[i, j])
            image = ax.imshow(d[i], cmap="inferno", vmin=0.0, vmax=top, interpolation=interp)
            ax.set_axis_off()
            axes.append(ax)
            maps.append(ax)
            if i == 0:
                ax.set_title(label, fontsize=9)
    if image is not None:
        cb = _vector_colorbar(fig.colorbar(image, ax=maps, fraction=0.04, pad=0.02,
                                           shrink=0.8))
        cb.set_label("max over channels |after - before|", fontsize=8)
    return axes


# ---------------------------------------------------------------------------- one run

def _render(size: Size, draw: Callable[[Figure], object]) -> Figure:
    fig = new_figure(size)
    draw(fig)
    return fig


# the files ``run_figures`` may write
RUN_FIGURES = ("realizations.png", "angle_ssim.png", "alpha.png", "ssim_kde.png",
               "angle_ssim_spaces.png")


def run_figures(df: pd.DataFrame, images: Tensor, titles: list[str], out: Path) -> list[Path]:
    """The diagrams of one run in the folder ``out``: realizations.png, angle_ssim.png,
    alpha.png and ssim_kde.png of the best critical space, and angle_ssim_spaces.png (the
    predicted objectives per critical space) where ``df`` has several. ``df``: the run's
    results.parquet (``best_space`` marks the chosen space); ``images``: the realizations
    (N, C, H, W) in [0, 1]; ``titles``: one per sample. Returns the paths written.
    """
    out = Path(out)
    exp = df["experiment"].iloc[0]
    plots: list[tuple[str, Size, Callable[[Figure], object]]] = []
    if df["critical_dim"].nunique() > 1:
        spaces = f"{exp}: predictions per critical space"
        plots.append(("angle_ssim_spaces.png", ANGLE_SSIM_SIZE,
                      lambda f: angle_ssim(f, predicted_only(df), group="critical_dim",
                                           title=spaces)))
    best = df[df["best_space"]].reset_index(drop=True)
    title = f"{exp}: {best['model'].iloc[0]}.{best['layer'].iloc[0]}, k={best['k'].iloc[0]:g}"
    alpha = np.stack(best["alpha"].to_numpy()).mean(0)
    plots += [
        ("realizations.png", realizations_size(images, titled=bool(titles)),
         lambda f: realizations_grid(f, images, titles=titles)),
        ("angle_ssim.png", ANGLE_SSIM_SIZE, lambda f: angle_ssim(f, best, title=title)),
        ("alpha.png", alpha_bars_size(1), lambda f: alpha_bars(f.add_subplot(), alpha,
                                                                title=title)),
        ("ssim_kde.png", SSIM_KDE_SIZE, lambda f: ssim_kde(f.add_subplot(), best, title=title)),
    ]
    return [save(_render(size, draw), out / name) for name, size, draw in plots]


# ---------------------------------------------------------------------------- ifv compare

CORRESPONDENCE_CELL = 0.075  # inches per row / column of a correspondence matrix


def matching_order(match: np.ndarray, share: np.ndarray, n_cols: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Row and column orders that put a matching on the diagonal: rows by descending share
    (unmatched last), columns as the rows' matches, then the unmatched columns.
    match: (R,) column or -1; share: (R,) -> (rows (R,), cols (n_cols,))."""
    key = np.where(match >= 0, -np.nan_to_num(share, nan=0.0), np.inf)
    rows = np.argsort(key, kind="stable")
    first = [int(match[r]) for r in rows if match[r] >= 0]
    cols = np.array(first + [c for c in range(n_cols) if c not in set(first)], dtype=int)
    return rows, cols


def correspondence_size(n_rows: int, n_cols: int) -> Size:
    """The natural size of ``correspondence_panels``."""
    w = max(3.0, n_cols * CORRESPONDENCE_CELL) + 1.6
    return 2 * w, max(3.0, n_rows * CORRESPONDENCE_CELL) + 1.6


def _ticks(ax: Axes, labels_x: Sequence[int], labels_y: Sequence[int], most: int = 24) -> None:
    for axis, labels, setter in ((ax.xaxis, labels_x, ax.set_xticks),
                                 (ax.yaxis, labels_y, ax.set_yticks)):
        step = max(1, -(-len(labels) // most))
        pos = list(range(0, len(labels), step))
        setter(pos, [str(labels[p]) for p in pos], fontsize=6)
        axis.set_tick_params(length=2, pad=1)
    ax.tick_params(axis="x", labelrotation=90)


def correspondence(ax: Axes, weights: np.ndarray, rows: np.ndarray, cols: np.ndarray, *,
                   own: np.ndarray, other: np.ndarray, flagged: np.ndarray,
                   labels_a: Sequence[int], labels_b: Sequence[int], title: str = "",
                   diverging: bool = False, label: str = "") -> AxesImage:
    """One correspondence matrix (A's objectives x B's features) in the order (rows, cols):
    ``own`` matching as small squares, the ``other`` matching as hollow circles, rows in
    ``flagged`` marked red at the left. weights: (R, n); own, other: (R,) columns or -1;
    ``diverging``: a signed colour scale in [-1, 1] (correlations), else [0, 1]."""
    w = np.asarray(weights, dtype=float)[rows][:, cols]
    im = ax.imshow(w, cmap="RdBu_r" if diverging else "magma", vmin=-1.0 if diverging else 0.0,
                   vmax=1.0, aspect="auto", interpolation="nearest")
    at = {int(c): q for q, c in enumerate(cols)}
    for match, style in ((own, {"marker": "s", "s": 6, "facecolors": "none",
                                "edgecolors": "lime", "linewidths": 0.6}),
                         (other, {"marker": "o", "s": 14, "facecolors": "none",
                                  "edgecolors": "cyan", "linewidths": 0.6})):
        pts = [(at[int(match[r])], p) for p, r in enumerate(rows) if match[r] >= 0]
        if pts:
            qx, py = zip(*pts, strict=True)
            ax.scatter(qx, py, **style)
    bad = [p for p, r in enumerate(rows) if flagged[r]]
    if bad:
        ax.scatter([-1.2] * len(bad), bad, marker=">", s=8, color="red", clip_on=False)
    _ticks(ax, [labels_b[c] for c in cols], [labels_a[r] for r in rows])
    ax.set_xlabel("B's features (ordered by the IFV matching)", fontsize=8)
    ax.set_ylabel("A's features (by confidence)", fontsize=8)
    ax.set_title(title, fontsize=8)
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.04, pad=0.01)
    cb.set_label(label, fontsize=7)
    cb.ax.tick_params(labelsize=6)
    return im


def correspondence_panels(fig: Canvas, weights: np.ndarray, corr: np.ndarray,
                          match: np.ndarray, baseline: np.ndarray, share: np.ndarray,
                          flagged: np.ndarray, labels_a: Sequence[int],
                          labels_b: Sequence[int], *, title: str = "") -> list[Axes]:
    """``ifv compare``'s heat map: |x_B(i)| (Grad-IFV) beside the baseline's correlations,
    both in the order of the IFV matching (``matching_order``), each with the other's
    matching circled. weights, corr: (R, n_b); match, baseline: (R,); share, flagged: (R,)."""
    rows, cols = matching_order(match, share, weights.shape[1])
    left, right = fig.subplots(1, 2)
    correspondence(left, weights, rows, cols, own=match, other=baseline, flagged=flagged,
                   labels_a=labels_a, labels_b=labels_b, label="|x_B(i)_j|",
                   title="Grad-IFV on B of A's realizations: |x_B(i)| "
                         "(squares: IFV matching, circles: baseline)")
    correspondence(right, corr, rows, cols, own=baseline, other=match, flagged=flagged,
                   labels_a=labels_a, labels_b=labels_b, diverging=True,
                   label="Pearson correlation",
                   title="baseline (Li et al. 2015): activation correlation "
                         "(squares: baseline matching, circles: IFV)")
    if title:  # wrapped to the figure's width (about 0.075 inches per character at 9 pt)
        width = fig.get_size_inches()[0] if isinstance(fig, Figure) else \
            fig.figure.get_size_inches()[0]
        fig.suptitle(textwrap.fill(title, max(40, int(width / 0.075))), fontsize=9)
    return [left, right]


GROUP_BAR_CELL = 0.28  # inches per bar of ``grouped_bars``


def grouped_bars_size(n_groups: int, n_series: int) -> Size:
    """The natural size of ``grouped_bars``."""
    return max(4.5, 1.4 + n_groups * (n_series + 1) * GROUP_BAR_CELL), 3.6


def grouped_bars(ax: Axes, values: np.ndarray, groups: Sequence[str], series: Sequence[str],
                 *, ylabel: str = "", ylim: tuple[float, float] | None = None,
                 fmt: str = "{:.0f}", line: tuple[float, str] | None = None,
                 colors: Sequence[str] = GROUP_COLORS) -> None:
    """Bars of ``values[g, s]``, one cluster per group (x axis) and one colour per series,
    each bar labelled with ``fmt`` (NaN: no bar, "-"); ``line`` (y, label): a dashed
    reference line. values: (n_groups, n_series)."""
    values = np.asarray(values, dtype=np.float64)
    n_g, n_s = values.shape
    width = 0.8 / max(n_s, 1)
    x = np.arange(n_g)
    for s in range(n_s):
        pos = x - 0.4 + width * (s + 0.5)
        v = values[:, s]
        ax.bar(pos, np.nan_to_num(v, nan=0.0), width, label=series[s],
               color=colors[s % len(colors)])
        for p, val in zip(pos, v, strict=True):
            text = "-" if np.isnan(val) else fmt.format(val)
            ax.text(p, 0.0 if np.isnan(val) else val, text, ha="center", va="bottom",
                    fontsize=6)
    if line is not None:
        ax.axhline(line[0], color="green", lw=0.8, ls="--", label=line[1])
    ax.set_xticks(x, list(groups), rotation=20 if n_g > 3 else 0,
                  ha="right" if n_g > 3 else "center", fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=6, ncol=min(n_s + (line is not None), 3), loc="lower center",
              bbox_to_anchor=(0.5, 1.0), frameon=False)

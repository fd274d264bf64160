"""The paper's diagrams (Fig. 2, Fig. 3, Supp. S3, S4) as PNG files.

Every function draws on its own ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state, no
window), writes a PNG at ``path`` (parent folders created) and returns the path. The
DataFrame columns are those of ``results.parquet`` (see design.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import Colormap, FuncNorm, LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.stats import gaussian_kde
from torch import Tensor

PathLike = str | os.PathLike[str]

STABLE_SSIM = 0.7  # Supp. S4: a sample is unstable if its SSIM under x_i drops below 0.7

# Fig. 2a: (label, angle column or None for the target itself, SSIM column, colour)
OBJECTIVES: tuple[tuple[str, str | None, str, str], ...] = (
    ("predicted", "angle_pred", "ssim_pred", "tab:blue"),
    ("target", None, "ssim_target", "tab:red"),
    ("feature response", "angle_response", "ssim_response", "tab:green"),
    ("random", "angle_random", "ssim_random", "tab:orange"),
)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    fig.clear()
    return out


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


def realizations_grid(images: Tensor | np.ndarray, path: PathLike, *,
                      titles: Sequence[str] | None = None, ncols: int = 8,
                      max_images: int = 64) -> Path:
    """A grid of realizations I_i^* (Supp. S3). images: (B, C, H, W) in [0, 1]; C >= 3 shows
    the first three channels as RGB, C < 3 the first channel in grey. Pixels are drawn
    nearest-neighbour so that 32x32 images stay crisp; ``titles`` label the cells.
    """
    imgs = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if imgs.dim() == 3:
        imgs = imgs.unsqueeze(1)
    if imgs.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(imgs.shape)}")
    imgs = imgs[:max_images].clamp(0.0, 1.0)
    b, c, h, w = imgs.shape
    ncols = max(1, min(ncols, b)) if b else 1
    nrows = max(1, -(-b // ncols))
    cell = 1.4
    fig = _new_figure(ncols * cell * max(1.0, w / h), nrows * (cell + (0.2 if titles else 0.0)))
    # nearest-neighbour when upscaling (small images stay crisp), antialiased when shrinking
    interp = "nearest" if max(h, w) <= 100 * cell else "antialiased"
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_axis_off()
        if i >= b:
            continue
        if c >= 3:
            ax.imshow(imgs[i, :3].permute(1, 2, 0).numpy(), interpolation=interp)
        else:
            ax.imshow(imgs[i, 0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation=interp)
        if titles is not None and i < len(titles):
            ax.set_title(str(titles[i]), fontsize=7, pad=2)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.97 if titles else 0.99,
                        wspace=0.05, hspace=0.25 if titles else 0.05)
    return _save(fig, path)


def angle_ssim(df: pd.DataFrame, path: PathLike, *, title: str = "",
               group: str | None = None) -> Path:
    """The bivariate plot of Fig. 2a (Supp. S4 diagram 3): angular distance to the target
    objective (x, degrees) vs. SSIM after re-optimization (y) for the predicted (blue), target
    (red, at 0 degrees), feature-response (green) and random (orange) objectives, with
    marginal KDEs of the angles (top) and SSIM indices (right). Triangles mark unstable
    samples (``stable`` False: SSIM under the target < 0.7, dashed line); point size follows
    ``crit_fraction`` where present. Missing or all-NaN objectives are skipped.

    ``group`` (e.g. "critical_dim") splits the predicted objectives into one colour per value,
    the trivariate plots of Fig. 2b,c.
    """
    stable = _stable_mask(df)
    if "crit_fraction" in df.columns:
        cf = df["crit_fraction"].to_numpy(dtype=np.float64)
        sizes = 6.0 + 50.0 * np.nan_to_num(cf, nan=1.0).clip(0.0, 1.0)
    else:
        sizes = np.full(len(df), 22.0)

    series: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, str]] = []
    for label, acol, scol, color in OBJECTIVES:
        if scol not in df.columns or (acol is not None and acol not in df.columns):
            continue
        ang = np.zeros(len(df)) if acol is None else df[acol].to_numpy(dtype=np.float64)
        ss = df[scol].to_numpy(dtype=np.float64)
        if group is not None and acol == "angle_pred" and group in df.columns:
            keys = df[group].to_numpy()
            values = list(pd.unique(keys))
            blues = ["tab:blue", "tab:purple", "tab:cyan", "navy", "tab:pink", "tab:olive",
                     "tab:brown", "tab:gray", "black", "gold"]
            for j, val in enumerate(values):
                m = keys == val
                series.append((f"predicted, {group}={val}", np.where(m, ang, np.nan),
                               np.where(m, ss, np.nan), m, blues[j % len(blues)]))
            continue
        series.append((label, ang, ss, np.ones(len(df), dtype=bool), color))

    fig = _new_figure(7.5, 6.5)
    gs = fig.add_gridspec(2, 2, width_ratios=(4.0, 1.0), height_ratios=(1.0, 4.0),
                          left=0.1, right=0.97, bottom=0.09, top=0.93 if title else 0.97,
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
    # one row per sample and critical space: count samples, not rows
    n_unstable = (int(df.loc[~stable, "sample"].nunique()) if "sample" in df.columns
                  else int((~stable).sum()))
    handles += [
        Line2D([], [], ls="", marker="o", color="0.4", label="stable"),
        Line2D([], [], ls="", marker="^", color="0.4",
               label=f"unstable (SSIM target < {STABLE_SSIM}, n={n_unstable})"),
    ]
    if "crit_fraction" in df.columns:
        handles.append(Line2D([], [], ls="", marker="o", color="0.6", markersize=3,
                              label="size: fraction in critical space"))
    ax.legend(handles=handles, loc="best", fontsize=7.5, framealpha=0.85)

    for a in (ax_top, ax_right):
        a.tick_params(labelleft=False, labelbottom=False, left=False, bottom=False)
        for side in ("top", "right"):
            a.spines[side].set_visible(False)
    ax_top.set_ylim(0.0, 1.1)
    ax_right.set_xlim(0.0, 1.1)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _fragmentation_cmap() -> Colormap:
    """Strong colour for j = 1 through red and purple to black for high j (Fig. 3)."""
    return LinearSegmentedColormap.from_list(
        "ifv_fragmentation", ["#ffb000", "#fe6100", "#dc267f", "#785ef0", "#1a1a40", "#000000"]
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


def alpha_bars(alpha: Mapping[str, object] | Tensor | np.ndarray, path: PathLike, *,
               title: str = "", orientation: str = "horizontal") -> Path:
    """Stacked bars of alpha_1, ..., alpha_{n_f} (Fig. 2 top, Fig. 3, Supp. S4 diagram 1): one
    bar per experiment label, alpha_1 at the base, coloured from a strong colour (j = 1) to
    black (high j, "black indicates high fragmentation") on a log scale in j, so bars with
    different n_f share one colour scale.

    alpha: (n_f,) array/tensor, (n_bars, n_f) array, or a dict label -> (n_f,) (lengths may
    differ). orientation: "horizontal" (Fig. 2) or "vertical" (Fig. 3).
    """
    if orientation not in ("horizontal", "vertical"):
        raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {orientation!r}")
    bars = _as_alpha_dict(alpha)
    labels = list(bars)
    n_max = max([a.size for a in bars.values()] + [2])
    cmap = _fragmentation_cmap()
    # colour position (log j / log n_max)^0.6: log so that bars of different n_f share one
    # scale, the power to separate the first few j, which matter most (Fig. 2 top)
    log_n = float(np.log(n_max))
    norm = FuncNorm(
        (lambda j: (np.log(np.maximum(j, 1.0)) / log_n) ** 0.6,
         lambda t: np.exp(np.clip(t, 0.0, 1.0) ** (1.0 / 0.6) * log_n)),
        vmin=1.0, vmax=float(n_max),
    )
    horizontal = orientation == "horizontal"
    nb = len(labels)
    if horizontal:
        fig = _new_figure(8.0, 1.2 + 0.45 * max(nb, 1))
    else:
        fig = _new_figure(2.0 + 0.55 * max(nb, 1), 5.0)
    ax = fig.add_subplot(1, 1, 1)
    total_max = 1.0
    for i, label in enumerate(labels):
        a = bars[label]
        if a.size == 0:
            continue
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
        total_max = max(total_max, float(a.sum()))
    ticks = np.arange(nb)
    if horizontal:
        ax.set_yticks(ticks, labels)
        ax.set_xlim(0.0, total_max)
        ax.set_ylim(-0.6, nb - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel(r"$\alpha_j$ (stacked in increasing order of $j$: ascending singular "
                      "values)")
    else:
        ax.set_xticks(ticks, labels, rotation=45 if nb > 6 else 0, ha="right" if nb > 6 else
                      "center")
        ax.set_ylim(0.0, total_max)
        ax.set_xlim(-0.6, nb - 0.4)
        ax.set_ylabel(r"$\alpha_j$ (stacked in increasing order of $j$)")
    sm = ScalarMappable(norm=norm, cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, pad=0.02, fraction=0.04 if horizontal else 0.08)
    j_ticks = [j for j in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if j <= n_max]
    cb.set_ticks(j_ticks, labels=[str(j) for j in j_ticks])
    # a horizontal bar's colorbar is too short for the long label (it was clipped)
    cb.set_label("j" if horizontal else "j (ascending singular value)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def ssim_kde(df: pd.DataFrame, path: PathLike, *, title: str = "") -> Path:
    """Supp. S4 diagram 2: KDE of the SSIM indices after re-optimizing w.r.t. the target
    objective (column ``ssim_target``), red dashed line at the stability threshold 0.7.
    """
    vals = _finite(df["ssim_target"]) if "ssim_target" in df.columns else np.zeros(0)
    fig = _new_figure(5.5, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    lo = min(0.0, float(vals.min()) - 0.02) if vals.size else 0.0
    grid = np.linspace(lo, 1.02, 400)
    _kde(ax, vals, grid, "tab:blue")
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
    fig.tight_layout()
    return _save(fig, path)


def hoyer_histograms(values: Mapping[str, object], path: PathLike, *, title: str = "",
                     bins: int = 50) -> Path:
    """Fig. S1: one density histogram of Hoyer sparseness values per entry (label -> values
    in [0, 1]), with the uniform density that the target sampler of Supp. S2 aims for
    (dashed); the text gives the mean and the share of sparse values (>= 0.9).
    """
    items = [(str(k), _finite(v)) for k, v in values.items()]
    fig = _new_figure(0.6 + 3.3 * max(len(items), 1), 3.4)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for i, (label, v) in enumerate(items):
        ax = fig.add_subplot(1, len(items), i + 1)
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
    fig.tight_layout()
    return _save(fig, path)


def difference_maps(before: Tensor | np.ndarray, after: Mapping[str, object], path: PathLike,
                    *, max_rows: int = 6, vmax: float | None = None,
                    before_label: str = "realization") -> Path:
    """Fig. S2 (Supp. S3): realizations (first column, first three channels as RGB) and, per
    re-optimization objective (label -> images after re-optimization), the difference map:
    per pixel the largest absolute difference over the channels. One colour scale for all
    maps (``vmax``, default: the largest difference shown), so magnitudes compare across
    columns. before and each after: (B, C, H, W) in [0, 1].
    """
    b = np.asarray(torch.as_tensor(before).detach().cpu(), dtype=np.float64)[:max_rows]
    diffs = {}
    for label, a in after.items():
        arr = np.asarray(torch.as_tensor(a).detach().cpu(), dtype=np.float64)[:len(b)]
        diffs[str(label)] = np.abs(arr - b).max(axis=1)
    top = max([float(d.max()) for d in diffs.values()] + [1e-6]) if vmax is None else vmax
    n, cols = len(b), 1 + len(diffs)
    h, w = b.shape[-2:]
    cell = 1.6
    fig = _new_figure(cols * cell * max(1.0, w / h) + 0.9, n * cell + 0.4)
    interp = "nearest" if max(h, w) <= 100 * cell else "antialiased"
    gs = fig.add_gridspec(n, cols, left=0.01, right=0.9, bottom=0.01,
                          top=1.0 - 0.35 / fig.get_figheight(), wspace=0.04, hspace=0.04)
    image = None
    for i in range(n):
        ax = fig.add_subplot(gs[i, 0])
        ax.imshow(b[i, :3].transpose(1, 2, 0).clip(0.0, 1.0) if b.shape[1] >= 3 else b[i, 0],
                  cmap=None if b.shape[1] >= 3 else "gray", interpolation=interp)
        ax.set_axis_off()
        if i == 0:
            ax.set_title(before_label, fontsize=9)
        for j, (label, d) in enumerate(diffs.items(), start=1):
            ax = fig.add_subplot(gs[i, j])
            image = ax.imshow(d[i], cmap="inferno", vmin=0.0, vmax=top, interpolation=interp)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(label, fontsize=9)
    if image is not None:
        cax = fig.add_axes((0.915, 0.1, 0.02, 0.8))
        fig.colorbar(image, cax=cax).set_label("max over channels |after - before|", fontsize=8)
    return _save(fig, path)

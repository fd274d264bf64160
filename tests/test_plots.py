"""Tests for ifv.run.plots: every diagram draws a plausible figure, also on degenerate data; the
drawing functions write no files, ``save`` writes atomically, ``run_figures`` writes a run's
PNGs, and composed PDFs are vector (images only where a diagram shows images)."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread

from ifv.run.plots import (
    ANGLE_SSIM_SIZE,
    SSIM_KDE_SIZE,
    Size,
    alpha_bars,
    alpha_bars_size,
    angle_ssim,
    difference_maps,
    difference_maps_size,
    hoyer_histograms,
    hoyer_histograms_size,
    new_figure,
    realizations_grid,
    realizations_size,
    run_figures,
    save,
    ssim_kde,
)


def _read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 150 <= img.shape[0] <= 4000 and 150 <= img.shape[1] <= 4000
    # something was drawn: not a single flat colour
    assert float(img[..., :3].std()) > 0.01
    return img


def _png(path: Path, size: Size, draw: Callable[[Figure], object]) -> np.ndarray:
    """Draw on a new figure of ``size``, save it as PNG at ``path`` and read it back."""
    fig = new_figure(size)
    draw(fig)
    return _read_png(save(fig, path))


def _pdf_streams(data: bytes) -> list[bytes]:
    """The decompressed content streams of a PDF (matplotlib writes them Flate-encoded)."""
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            out.append(zlib.decompress(m.group(1)))
        except zlib.error:
            out.append(m.group(1))
    return out


def _pdf_text(data: bytes) -> str:
    """The text of a PDF's text objects (BT ... ET), one line each, kerning left out."""
    lines = []
    for s in _pdf_streams(data):
        for block in re.findall(rb"\bBT\b(.*?)\bET\b", s, re.S):
            parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block)
            lines.append(re.sub(rb"\\(.)", rb"\1", b"".join(parts)).decode("latin-1"))
    return "\n".join(lines)


def _pdf_images(data: bytes) -> int:
    return len(re.findall(rb"/Subtype\s*/Image", data))


def _frame(n: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ssim_target = rng.uniform(0.5, 1.0, n)
    ssim_target[:4] = [0.3, 0.5, 0.65, 0.69]  # some unstable samples
    df = pd.DataFrame({
        "sample": np.arange(n),
        "angle_pred": rng.uniform(0, 20, n),
        "angle_response": rng.uniform(20, 70, n),
        "angle_random": rng.uniform(40, 90, n),
        "ssim_target": ssim_target,
        "ssim_pred": rng.uniform(0.4, 1.0, n),
        "ssim_response": rng.uniform(0.0, 0.6, n),
        "ssim_random": rng.uniform(0.0, 0.5, n),
        "crit_fraction": rng.uniform(0.2, 1.0, n),
        "critical_dim": rng.choice([10, 9], n),
    })
    df["stable"] = df["ssim_target"] >= 0.7
    return df


def test_angle_ssim_saves_png(tmp_path: Path) -> None:
    fig = new_figure(ANGLE_SSIM_SIZE)
    ax, top, right = angle_ssim(fig, _frame(), title="GN4c")
    assert ax.get_xlabel().startswith("angular distance") and top.get_shared_x_axes().joined(
        ax, top) and right.get_shared_y_axes().joined(ax, right)
    out = save(fig, tmp_path / "sub" / "dir" / "angle_ssim.png")
    assert out == tmp_path / "sub" / "dir" / "angle_ssim.png"
    img = _read_png(out)
    assert img.shape[1] > img.shape[0] * 0.9  # joint plot: roughly square or wider


def test_angle_ssim_group_and_missing_columns(tmp_path: Path) -> None:
    df = _frame().drop(columns=["crit_fraction", "stable", "ssim_random", "angle_random"])
    fig = new_figure(ANGLE_SSIM_SIZE)
    ax = angle_ssim(fig, df, group="critical_dim")[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum(lb.startswith("predicted, critical_dim=") for lb in labels) == 2
    assert not any(lb.startswith("random") for lb in labels)
    _read_png(save(fig, tmp_path / "a.png"))


def test_angle_ssim_markers_follow_stability(tmp_path: Path) -> None:
    # a plot with all samples stable and one with all unstable differ (circles vs. triangles)
    df = _frame()
    df["stable"] = True
    a = _png(tmp_path / "s.png", ANGLE_SSIM_SIZE, lambda f: angle_ssim(f, df.copy()))
    df["stable"] = False
    b = _png(tmp_path / "u.png", ANGLE_SSIM_SIZE, lambda f: angle_ssim(f, df.copy()))
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_angle_ssim_zero_variance_and_nan(tmp_path: Path) -> None:
    n = 12
    df = pd.DataFrame({
        "angle_pred": np.full(n, 3.0),
        "angle_response": np.full(n, 45.0),
        "angle_random": np.full(n, np.nan),
        "ssim_target": np.ones(n),
        "ssim_pred": np.ones(n),
        "ssim_response": np.full(n, 0.2),
        "ssim_random": np.full(n, np.nan),
        "stable": np.ones(n, dtype=bool),
        "crit_fraction": np.ones(n),
    })
    _png(tmp_path / "flat.png", ANGLE_SSIM_SIZE, lambda f: angle_ssim(f, df))
    _png(tmp_path / "one.png", ANGLE_SSIM_SIZE, lambda f: angle_ssim(f, df.iloc[:1]))


def test_ssim_kde(tmp_path: Path) -> None:
    img = _png(tmp_path / "kde.png", SSIM_KDE_SIZE, lambda f: ssim_kde(f.add_subplot(), _frame()))
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)
    assert red.sum() > 30  # the dashed line at 0.7
    flat = pd.DataFrame({"ssim_target": np.full(5, 0.9)})
    _png(tmp_path / "kde_flat.png", SSIM_KDE_SIZE,
         lambda f: ssim_kde(f.add_subplot(), flat, title="flat"))


def test_alpha_bars_single_tensor(tmp_path: Path) -> None:
    alpha = torch.tensor([0.7, 0.2, 0.05, 0.03, 0.02], dtype=torch.float64)
    _png(tmp_path / "alpha.png", alpha_bars_size(1),
         lambda f: alpha_bars(f.add_subplot(), alpha, title="single"))


def test_alpha_bars_dict_of_different_lengths(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bars = {
        "DNcl": np.r_[0.2, 0.7, np.full(8, 0.1 / 8)],
        "n_f=32": rng.dirichlet(np.ones(32)),
        "n_f=342": torch.tensor(rng.dirichlet(np.ones(342))),
        "zeros": np.zeros(4),
    }
    h = _png(tmp_path / "h.png", alpha_bars_size(len(bars)),
             lambda f: alpha_bars(f.add_subplot(), bars))
    v = _png(tmp_path / "v.png", alpha_bars_size(len(bars), "vertical"),
             lambda f: alpha_bars(f.add_subplot(), bars, orientation="vertical"))
    assert h.shape != v.shape
    with pytest.raises(ValueError):
        alpha_bars(new_figure((4, 4)).add_subplot(), bars, orientation="diagonal")
    with pytest.raises(ValueError):
        alpha_bars_size(2, "diagonal")


def test_alpha_bars_dark_for_fragmented(tmp_path: Path) -> None:
    # a bar concentrated on alpha_1 is bright; a fully fragmented one is mostly dark
    size = alpha_bars_size(1)
    bright = _png(tmp_path / "b.png", size,
                  lambda f: alpha_bars(f.add_subplot(), {"a": np.r_[1.0, np.zeros(299)]}))
    dark = _png(tmp_path / "d.png", size,
                lambda f: alpha_bars(f.add_subplot(), {"a": np.full(300, 1 / 300)}))
    assert bright.shape == dark.shape
    assert float(bright[..., :3].mean()) > float(dark[..., :3].mean()) + 0.05


@pytest.mark.parametrize("c", [3, 1, 4])
def test_realizations_grid(tmp_path: Path, c: int) -> None:
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(6, c, 32, 32, generator=g)
    titles = [f"e_{i}" for i in range(6)]
    img = _png(tmp_path / f"grid{c}.png", realizations_size(imgs, ncols=3, titled=True),
               lambda f: realizations_grid(f, imgs, titles=titles, ncols=3))
    assert img.shape[1] > img.shape[0]  # 3 columns x 2 rows
    # upscaled: each 32 px image spans clearly more than 32 output pixels
    assert img.shape[1] >= 3 * 64


def test_realizations_grid_max_images_and_colour(tmp_path: Path) -> None:
    imgs = torch.zeros(100, 3, 8, 8)
    imgs[:, 0] = 1.0  # pure red images
    fig = new_figure(realizations_size(imgs, ncols=10, max_images=20))
    axes = realizations_grid(fig, imgs, ncols=10, max_images=20)
    assert len(axes) == 20 and sum(bool(ax.get_images()) for ax in axes) == 20
    img = _read_png(save(fig, tmp_path / "g.png"))
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)
    assert red.mean() > 0.3
    assert img.shape[1] > 2 * img.shape[0] * 0.9  # 2 rows of 10, not 10 rows


def test_hoyer_histograms_and_difference_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = {"2 dimensions": rng.uniform(0, 1, 500), "10 dimensions": rng.beta(2, 5, 500)}
    fig = new_figure(hoyer_histograms_size(2))
    axes = hoyer_histograms(fig, values, title="Hoyer")
    assert [ax.get_title() for ax in axes] == list(values)
    _read_png(save(fig, tmp_path / "s1.png"))
    im = synthetic.images(8, n=3, size=12)
    after = {"target": im["after_target"], "random": im["after_random"]}
    fig = new_figure(difference_maps_size(im["before"], len(after)))
    axes = difference_maps(fig, im["before"], after)
    assert len(axes) == 3 * (1 + len(after))
    # one colour scale: every map shares the largest difference as its upper limit
    maps = [ax.get_images()[0] for ax in axes if ax.get_images()[0].get_cmap().name == "inferno"]
    assert len({m.get_clim() for m in maps}) == 1 and maps[0].get_clim()[1] > 0.4
    _read_png(save(fig, tmp_path / "s2.png"))


def test_drawing_writes_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fig = new_figure((12, 12))
    top, mid, bottom = fig.subfigures(3, 1)
    angle_ssim(top, _frame())
    alpha_bars(mid.add_subplot(1, 2, 1), np.r_[0.5, 0.5])
    ssim_kde(mid.add_subplot(1, 2, 2), _frame())
    realizations_grid(bottom, torch.rand(4, 3, 8, 8))
    fig.canvas.draw()
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic_and_uses_the_suffix(tmp_path: Path) -> None:
    fig = new_figure(SSIM_KDE_SIZE)
    ssim_kde(fig.add_subplot(), _frame())
    (tmp_path / "kde.pdf").write_bytes(b"old")
    assert save(fig, tmp_path / "kde.pdf") == tmp_path / "kde.pdf"
    save(fig, tmp_path / "kde.png")
    assert (tmp_path / "kde.pdf").read_bytes()[:5] == b"%PDF-"
    assert (tmp_path / "kde.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kde.pdf", "kde.png"]  # no temp files


def test_composed_pdf_is_vector(tmp_path: Path) -> None:
    """Scatter, bar and KDE panels in one PDF: text as text, no embedded image; a
    realization grid beside them adds exactly its images."""
    def panels(fig: Figure, grid: bool) -> None:
        left, right = fig.subfigures(1, 2)
        angle_ssim(left, _frame(), title="joint plot")
        rows = right.subfigures(3 if grid else 2, 1)
        alpha_bars(rows[0].add_subplot(), {"GN4c": np.r_[0.6, 0.3, 0.1]})
        ssim_kde(rows[1].add_subplot(), _frame())
        if grid:
            realizations_grid(rows[2], torch.rand(5, 3, 16, 16), ncols=5)

    for grid, n_images in ((False, 0), (True, 5)):
        fig = new_figure((14, 6.5))
        panels(fig, grid)
        data = save(fig, tmp_path / f"composed_{grid}.pdf").read_bytes()
        assert _pdf_images(data) == n_images
        text = _pdf_text(data)
        for expected in ("joint plot", "SSIM after re-optimization", "GN4c", "density (scaled)"):
            assert expected in text, expected
        assert b"/Type /Font" in data or b"/Type/Font" in data


def _run_frame(spaces: dict[int, float]) -> pd.DataFrame:
    return synthetic.run_frame("exp02", n=6, spaces=spaces, layer="classifier")


@pytest.mark.parametrize(("spaces", "names"), [
    ({10: 50.0, 9: 25.0}, ["angle_ssim_spaces.png", "realizations.png", "angle_ssim.png",
                           "alpha.png", "ssim_kde.png"]),
    ({10: 10.0}, ["realizations.png", "angle_ssim.png", "alpha.png", "ssim_kde.png"]),
])
def test_run_figures(tmp_path: Path, spaces: dict[int, float], names: list[str]) -> None:
    df = _run_frame(spaces)
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    titles = [f"e_{i}" if i < 3 else "h=0.50" for i in range(6)]
    paths = run_figures(df, images, titles, tmp_path / "run")
    assert paths == [tmp_path / "run" / n for n in names]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(names)
    shapes = {p.name: _read_png(p).shape for p in paths}
    assert shapes["angle_ssim.png"][:2] == (650, 750)
    assert shapes["alpha.png"][1] > 3 * shapes["alpha.png"][0]  # one horizontal bar
    assert shapes["realizations.png"][1] > shapes["realizations.png"][0]  # 6 in one row

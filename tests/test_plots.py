"""Tests for ifv.plots: every diagram writes a plausible PNG, also on degenerate data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread

from ifv.plots import alpha_bars, angle_ssim, realizations_grid, ssim_kde


def _read_png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 150 <= img.shape[0] <= 4000 and 150 <= img.shape[1] <= 4000
    # something was drawn: not a single flat colour
    assert float(img[..., :3].std()) > 0.01
    return img


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


def test_angle_ssim_writes_png(tmp_path: Path) -> None:
    out = angle_ssim(_frame(), tmp_path / "sub" / "dir" / "angle_ssim.png", title="GN4c")
    assert out == tmp_path / "sub" / "dir" / "angle_ssim.png"
    img = _read_png(out)
    assert img.shape[1] > img.shape[0] * 0.9  # joint plot: roughly square or wider


def test_angle_ssim_group_and_missing_columns(tmp_path: Path) -> None:
    df = _frame().drop(columns=["crit_fraction", "stable", "ssim_random", "angle_random"])
    _read_png(angle_ssim(df, tmp_path / "a.png", group="critical_dim"))


def test_angle_ssim_markers_follow_stability(tmp_path: Path) -> None:
    # red pixels (target objective) appear only at 0 degrees; a plot with all samples stable
    # and one with all unstable differ (circles vs. triangles)
    df = _frame()
    df["stable"] = True
    a = _read_png(angle_ssim(df, tmp_path / "s.png"))
    df["stable"] = False
    b = _read_png(angle_ssim(df, tmp_path / "u.png"))
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
    _read_png(angle_ssim(df, tmp_path / "flat.png"))
    _read_png(angle_ssim(df.iloc[:1], tmp_path / "one.png"))


def test_ssim_kde(tmp_path: Path) -> None:
    img = _read_png(ssim_kde(_frame(), tmp_path / "kde.png"))
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)
    assert red.sum() > 30  # the dashed line at 0.7
    flat = pd.DataFrame({"ssim_target": np.full(5, 0.9)})
    _read_png(ssim_kde(flat, tmp_path / "kde_flat.png", title="flat"))


def test_alpha_bars_single_tensor(tmp_path: Path) -> None:
    alpha = torch.tensor([0.7, 0.2, 0.05, 0.03, 0.02], dtype=torch.float64)
    _read_png(alpha_bars(alpha, tmp_path / "alpha.png", title="single"))


def test_alpha_bars_dict_of_different_lengths(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    bars = {
        "DNcl": np.r_[0.2, 0.7, np.full(8, 0.1 / 8)],
        "n_f=32": rng.dirichlet(np.ones(32)),
        "n_f=342": torch.tensor(rng.dirichlet(np.ones(342))),
        "zeros": np.zeros(4),
    }
    h = _read_png(alpha_bars(bars, tmp_path / "h.png"))
    v = _read_png(alpha_bars(bars, tmp_path / "v.png", orientation="vertical"))
    assert h.shape != v.shape
    with pytest.raises(ValueError):
        alpha_bars(bars, tmp_path / "x.png", orientation="diagonal")


def test_alpha_bars_dark_for_fragmented(tmp_path: Path) -> None:
    # a bar concentrated on alpha_1 is bright; a fully fragmented one is mostly dark
    bright = _read_png(alpha_bars({"a": np.r_[1.0, np.zeros(299)]}, tmp_path / "b.png"))
    dark = _read_png(alpha_bars({"a": np.full(300, 1 / 300)}, tmp_path / "d.png"))
    assert bright.shape == dark.shape
    assert float(bright[..., :3].mean()) > float(dark[..., :3].mean()) + 0.05


@pytest.mark.parametrize("c", [3, 1, 4])
def test_realizations_grid(tmp_path: Path, c: int) -> None:
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(6, c, 32, 32, generator=g)
    titles = [f"e_{i}" for i in range(6)]
    out = realizations_grid(imgs, tmp_path / f"grid{c}.png", titles=titles, ncols=3)
    img = _read_png(out)
    assert img.shape[1] > img.shape[0]  # 3 columns x 2 rows
    # upscaled: each 32 px image spans clearly more than 32 output pixels
    assert img.shape[1] >= 3 * 64


def test_realizations_grid_max_images_and_colour(tmp_path: Path) -> None:
    imgs = torch.zeros(100, 3, 8, 8)
    imgs[:, 0] = 1.0  # pure red images
    img = _read_png(realizations_grid(imgs, tmp_path / "g.png", ncols=10, max_images=20))
    rgb = img[..., :3]
    red = (rgb[..., 0] > 0.9) & (rgb[..., 1] < 0.1) & (rgb[..., 2] < 0.1)
    assert red.mean() > 0.3
    assert img.shape[1] > 2 * img.shape[0] * 0.9  # 2 rows of 10, not 10 rows

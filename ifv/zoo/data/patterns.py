"""Procedural image classes: the offline stand-in for CIFAR-10 and ImageNet
(docs/stand-ins.md).

Ten classes of patterns drawn with random colours, scales, phases, positions, edge
sharpness and pixel noise; deterministic for a given seed. Images are (3, size, size) in
[0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CLASSES = (
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "anti-diagonal stripes",
    "cross",
    "rings",
    "checkers",
    "dots",
    "disk",
    "x-cross",
)


def _field(label: int, u: Tensor, v: Tensor, p: dict[str, Tensor]) -> Tensor:
    """A signed field whose positive part is the pattern's foreground. u, v: (n, H, W)."""
    du, dv = u - p["cx"], v - p["cy"]
    period, phase, width = p["period"], p["phase"], p["width"]
    wave = 2 * math.pi / period
    if label == 0:
        return torch.sin(wave * v + phase)
    if label == 1:
        return torch.sin(wave * u + phase)
    if label == 2:
        return torch.sin(wave * (u + v) / math.sqrt(2) + phase)
    if label == 3:
        return torch.sin(wave * (u - v) / math.sqrt(2) + phase)
    if label == 4:
        return (width - torch.minimum(du.abs(), dv.abs())) / width
    if label == 5:
        return torch.sin(wave * torch.sqrt(du**2 + dv**2) + phase)
    if label == 6:
        return torch.sin(wave * u + phase) * torch.sin(wave * v + phase)
    if label == 7:
        gu = torch.remainder(du, period) - period / 2
        gv = torch.remainder(dv, period) - period / 2
        return 1 - (gu**2 + gv**2) / (0.3 * period) ** 2
    if label == 8:
        return (2 * width + 0.2 - torch.sqrt(du**2 + dv**2)) / 0.1
    if label == 9:
        d = torch.minimum((du + dv).abs(), (du - dv).abs()) / math.sqrt(2)
        return (width - d) / width
    raise ValueError(f"label must be in 0..9, got {label}")


def make_patterns(n: int, seed: int, size: int = 32, noise: float = 0.05,
                  exclude: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """``n`` labelled images of the ten pattern classes, balanced, shuffled.

    Returns images (n, 3, size, size) float32 in [0, 1] and labels (n,) int64. Classes in
    ``exclude`` are never drawn (the DenseNetEx4 stand-in never sees class 4).
    """
    g = torch.Generator().manual_seed(seed)
    keep = torch.tensor([c for c in range(len(CLASSES)) if c not in exclude])
    labels = keep[torch.randperm(n, generator=g) % len(keep)]

    def uni(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)

    params = {
        "cx": uni(-0.35, 0.35),
        "cy": uni(-0.35, 0.35),
        "period": uni(0.3, 0.7),
        "phase": uni(0, 2 * math.pi),
        "width": uni(0.1, 0.22),
    }
    sharp = uni(3.0, 12.0)
    fg = torch.rand(n, 3, 1, 1, generator=g)
    bg = torch.rand(n, 3, 1, 1, generator=g)
    # keep fore- and background apart so that every pattern is visible
    far = (fg - bg).abs().mean(1, keepdim=True) < 0.3
    bg = torch.where(far, 1.0 - fg, bg)
    lin = torch.linspace(-1, 1, size)
    v, u = torch.meshgrid(lin, lin, indexing="ij")
    u, v = u.expand(n, size, size), v.expand(n, size, size)
    field = torch.zeros(n, size, size)
    for c in labels.unique().tolist():
        idx = labels == c
        sub = {k: t[idx] for k, t in params.items()}
        field[idx] = _field(c, u[idx], v[idx], sub)
    mask = torch.sigmoid(sharp * field).unsqueeze(1)
    images = bg + (fg - bg) * mask
    images = images + noise * torch.randn(images.shape, generator=g)
    return images.clamp(0, 1), labels

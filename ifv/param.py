"""Parametrizations P: R^{n_p} -> input domain (Sec. 2, 3.2, 3.7)."""

from __future__ import annotations

import torch
from torch import Tensor

PARAMS = ("rgb",)


class RGB:
    """P_rgb: images in [0, 1] as the sigmoid of an unbounded tensor (Sec. 3.2).

    v: (B, 3, H, W) -> images (B, 3, H, W).
    """

    name = "rgb"

    def __init__(self, height: int, width: int, init_std: float = 0.01) -> None:
        self.shape = (3, height, width)
        self.init_std = init_std

    @property
    def n_p(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2]

    def init(self, n: int, generator: torch.Generator) -> Tensor:
        """Initial parameters: N(0, init_std^2), i.e. a grey image with faint noise."""
        return torch.randn((n, *self.shape), generator=generator) * self.init_std

    def __call__(self, v: Tensor) -> Tensor:
        return torch.sigmoid(v)

    def render(self, v: Tensor) -> Tensor:
        """The image that SSIM compares and figures show: (B, 3, H, W) in [0, 1]."""
        return self(v)


def make_param(name: str, height: int, width: int, **kwargs: float) -> RGB:
    """The parametrization called ``name`` for inputs of size height x width."""
    if name == "rgb":
        return RGB(height, width, **kwargs)
    raise ValueError(f"unknown parametrization {name!r}; valid: {', '.join(PARAMS)}")

"""Networks of "your own code" for the tests of ifv.zoo.sources: importable as ``nets.NAME``
(pytest puts tests/ on the path), built by ``model._target_=nets.NAME``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyNet(nn.Module):
    """conv-BN-ReLU twice, then pooling and a linear head; ``channels`` inputs (1: grey)."""

    def __init__(self, channels: int = 3, width: int = 6, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((-2, -1)))


class TokenNet(nn.Module):
    """A convolution whose output becomes a sequence of tokens (B, T, C): a tap of neither
    (B, C) nor (B, C, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.tokens = nn.Flatten(2)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.tokens(self.conv(x)).transpose(1, 2).mean(1))


def calibrated(net: nn.Module, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """``net`` with its batch norms' statistics taken over 32 random images (as a trained
    network has them; PyTorch's initial ones are 0 and 1), in eval mode."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.rand(32, *shape, generator=torch.Generator().manual_seed(seed)))
    return net.eval()


def not_a_network(width: int = 3) -> dict[str, int]:
    """A callable that returns no module."""
    return {"width": width}

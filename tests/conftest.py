"""Shared fixtures: an isolated cache for every test session, small random networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Models and stages of the tests never touch the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("IFV_CACHE", str(tmp_path_factory.mktemp("ifv_cache")))
    yield
    mp.undo()


class SmallCNN(nn.Module):
    """conv-relu-conv: a random network with a spatial tappable layer ``conv2``."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(8, channels, 3, padding=1)
        self.head = nn.Linear(channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.act(self.conv1(x))).mean((-2, -1)))


@pytest.fixture
def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN().double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

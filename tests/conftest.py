"""Shared fixtures: an isolated cache for every test session, small random networks."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist the cores are shared out among the workers (one torch thread each
    on 2 cores), for the CLI runs the tests start too; OMP_NUM_THREADS, where set, wins."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ.setdefault("OMP_NUM_THREADS", str(share))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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


def _write_cifar(root: Path, n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-10's python version in miniature: n images per batch file, labels 0..9 cycling."""
    where = root / "cifar-10-batches-py"
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(where / name, "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(n)]}, f)
        batches[name] = data
    with open(where / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return batches


@pytest.fixture
def fake_cifar() -> Callable[..., dict[str, np.ndarray]]:
    """Writes CIFAR-10's python version in miniature: fake_cifar(root, n=20, seed=0)."""
    return _write_cifar

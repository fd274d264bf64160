"""The one provisioning policy: a zoo network wherever it is asked for.

An offline stand-in missing from the model cache is trained there first, once, with a
progress bar (a lock per checkpoint lets one process train while the others wait and then
load it); every other model is loaded from its weights (``ifv.zoo.registry.load``), and
missing weights are a one-line error that says what to place where.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from ifv.errors import UserError
from ifv.files import check_outputs
from ifv.zoo.registry import ModelSpec, load


def will_train(spec: ModelSpec, weights: str | None, cache_dir: str | Path | None) -> bool:
    """Whether ``network`` would train ``spec`` first (an offline stand-in with its default
    weights, missing from the model cache)."""
    return weights is None and spec.tier == "offline" and not spec.checkpoint(cache_dir).exists()


def check_trainable(spec: ModelSpec, weights: str | None, cache_dir: str | Path | None
                    ) -> None:
    """Where ``network`` would train ``spec``, the model cache must take its checkpoint files
    (checked before any work)."""
    if will_train(spec, weights, cache_dir):
        check_outputs(spec.checkpoint(cache_dir).parent,
                      [p.name for p in spec.checkpoint_files(cache_dir)], "the model cache")


def check_network(spec: ModelSpec, weights: str | None, cache_dir: str | Path | None,
                  download: bool) -> None:
    """Raise the ``UserError`` that ``network`` would raise on ``spec``'s weights (missing,
    unreadable, of another architecture, a source without weights), before any work: they
    are read into a fresh network once. Not where ``network`` makes them first: an offline
    stand-in it trains, default weights it may download (``download``)."""
    if weights == "random" or will_train(spec, weights, cache_dir):
        return
    try:
        load(spec, weights=weights, cache_dir=cache_dir, download=False)
    except UserError:
        if not (download and weights is None):
            raise


def network(spec: ModelSpec, *, weights: str | None = None,
            cache_dir: str | Path | None = None, download: bool = False,
            device: torch.device | str = "cpu", progress: bool = True,
            log: Callable[[str], None] = print) -> nn.Module:
    """``spec``'s network in eval mode on ``device``, trained first where it is a missing
    offline stand-in."""
    checkpoint = spec.checkpoint(cache_dir)
    if will_train(spec, weights, cache_dir):
        from ifv.zoo.train import train

        with FileLock(f"{checkpoint}.lock"):  # one process trains, the others wait
            if not checkpoint.exists():
                log(f"model {spec.name} is not in the model cache: training it (once)")
                rec = train(spec, cache_dir, progress=progress, device=str(device), log=log)
                log(f"trained {spec.name} in {rec['train_seconds']:.0f} s -> "
                    f"{rec['checkpoint']}")
    return load(spec, weights=weights, cache_dir=cache_dir, download=download).to(device)

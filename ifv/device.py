"""Where a run computes: the ``device`` setting, float32 matmul precision, and moving a
stage's tensors between the device and the host.

Every stage of ``ifv run`` and ``ifv invert`` runs on one device (``auto``: CUDA where
present, else the CPU). Random draws (targets, initial parameters, random objectives) are
made on the CPU from the run's seed and then moved, so a run on a GPU starts from exactly
the inputs of the same run on the CPU. Cache entries hold host tensors, so a cache made on
a GPU node can be read on a CPU-only machine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ifv.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve(name: Any) -> torch.device:
    """The torch device of a ``device`` setting: auto, cpu, cuda or cuda:N (checked here,
    before any work, with what is valid on this machine)."""
    if not isinstance(name, str):
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise UserError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    if not torch.cuda.is_available():
        why = ("this torch has no CUDA support" if torch.version.cuda is None
               else "no CUDA device is visible")
        raise UserError(f"device {name}: {why}; valid here: auto, cpu")
    index = int(m.group(1) or 0)
    n = torch.cuda.device_count()
    if index >= n:
        raise UserError(f"device {name}: this machine has {n} CUDA device(s); valid: "
                        f"cuda:0..cuda:{n - 1}")
    return torch.device("cuda", index)


def precision_key(device: torch.device, tf32: bool) -> str:
    """The float32 arithmetic a run uses, for cache keys: "tf32" only on CUDA with tf32."""
    return "tf32" if tf32 and device.type == "cuda" else "ieee"


@contextmanager
def float32_precision(tf32: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions inside the block (``tf32``), else full
    float32; the previous settings are restored after it. No effect on the CPU."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, conv.allow_tf32)
    matmul.allow_tf32 = conv.allow_tf32 = bool(tf32)
    try:
        yield
    finally:
        matmul.allow_tf32, conv.allow_tf32 = before


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to(obj: Any, device: torch.device | str) -> Any:
    """``obj`` with every tensor in it (dicts, lists, tuples, dataclass fields) moved to
    ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to(getattr(obj, f.name), device)
                                          for f in dataclasses.fields(obj)})
    if isinstance(obj, dict):
        return {k: to(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to(v, device) for v in obj)
    return obj


def devices(obj: Any) -> set[torch.device]:
    """The devices of the tensors in ``obj`` (dicts, lists, tuples)."""
    if isinstance(obj, Tensor):
        return {obj.device}
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return set().union(*(devices(v) for v in obj)) if obj else set()
    return set()

"""Your own network as a zoo entry: ``torchvision:NAME``, ``timm:NAME``, a file of another
framework (``onnx:PATH``, ``tflite:PATH``; ``ifv.zoo.exchange``), or any importable callable
that returns an ``nn.Module`` (a Hydra ``_target_`` with its arguments), with its weights,
its input and its normalization.

``ifv.zoo.registry.model_entry`` turns such a source into a ``ModelSpec`` (tier "user")
that every face uses like a zoo model: ``ModelSpec.build`` makes the architecture,
``ifv.zoo.registry.load``
puts the weights in (a state dict, or a checkpoint that holds one under ``weights_key``;
a ``module.`` prefix is stripped; read with ``weights_only=True``), and the input in [0, 1]
is normalized by a forward pre-hook (``Normalize``), so the module's own layer names are
the ones to tap. Its tappable layers are found by one forward pass at the input size
(``probe``). Every mistake is one ``UserError`` that says what is wrong and what is valid.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ifv.errors import UserError
from ifv.zoo.exchange import FORMATS, file_format

KINDS = ("torchvision", "timm")
FILES = FORMATS  # the weights are in the file
NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
Stats = tuple[tuple[float, ...], tuple[float, ...]]


class Normalize:
    """A forward pre-hook: the network's input (B, C, H, W) in [0, 1] becomes
    (input - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return ((x - self.mean.to(x)) / self.std.to(x), *args[1:])


def close(name: str, valid: Sequence[str], what: str) -> str:
    """One line for an unknown ``name``: the close matches among ``valid``, or a few."""
    near = difflib.get_close_matches(name, valid, n=5, cutoff=0.6)
    shown = near or list(valid)[:8]
    return (f"unknown {what} {name!r}; {'close matches' if near else 'valid, e.g.'}: "
            f"{', '.join(shown)}")


def normalization(value: Any, key: str = "model.normalize") -> Stats | None:
    """``model.normalize``: imagenet, cifar10, none, or {mean: [...], std: [...]}."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        if value not in NORMALIZE:
            raise UserError(f"unknown {key} {value!r}; valid: {', '.join(NORMALIZE)}, none or "
                            "{mean: [...], std: [...]}")
        return NORMALIZE[value]
    if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
        raise UserError(f"{key} must be imagenet, cifar10, none or {{mean: [...], std: "
                        f"[...]}}, got {value!r}")
    try:
        mean, std = tuple(float(m) for m in value["mean"]), tuple(float(s) for s in value["std"])
    except (TypeError, ValueError):
        raise UserError(f"{key}.mean and .std must be lists of numbers, got {value!r}") from None
    if len(mean) != len(std) or not mean or not all(map(math.isfinite, mean + std)) \
            or min(std) <= 0:
        raise UserError(f"{key}: mean and std need one finite value per channel, std > 0; "
                        f"got {value!r}")
    return mean, std


def input_shape(value: Any, key: str = "model.input_size") -> tuple[int, int, int] | None:
    """``model.input_size``: [C, H, W], positive integers (None: not given)."""
    if value is None:
        return None
    try:
        c, h, w = (int(v) for v in value)
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok or min(c, h, w) < 1:
        raise UserError(f"{key} must be [C, H, W] (positive integers), got {value!r}")
    return c, h, w


def _torchvision(name: str) -> tuple[Any, Stats | None, tuple[int, int, int]]:
    """torchvision's default weights enum member of ``name`` (None where it has none), their
    normalization and input size (ImageNet's 224 px crop where no weights say otherwise)."""
    import torchvision.models as tvm

    names = tvm.list_models()
    if name not in names:
        raise UserError(close(name, names, "torchvision model"))
    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None, None, (3, 224, 224)
    t = weights.transforms()
    size = int(getattr(t, "crop_size", [224])[0])
    mean, std = getattr(t, "mean", None), getattr(t, "std", None)
    stats = (tuple(mean), tuple(std)) if mean is not None and std is not None else None
    return weights, stats, (3, size, size)


def _timm(name: str) -> tuple[Stats | None, tuple[int, int, int]]:
    """timm's normalization and input size of ``name`` (its pretrained config)."""
    try:
        import timm
    except ImportError:
        raise UserError("timm:NAME needs timm; install it with pip install 'ifv[timm]' "
                        "(or pip install timm)") from None
    names = timm.list_models()
    if name not in names:
        raise UserError(close(name, names, "timm model"))
    cfg = timm.models.get_pretrained_cfg(name)
    c, h, w = getattr(cfg, "input_size", None) or (3, 224, 224)
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    stats = (tuple(mean), tuple(std)) if mean and std else None
    return stats, (int(c), int(h), int(w))


def _callable(path: str) -> Any:
    """The object an import path ``pkg.module.name`` names."""
    module, _, attr = path.rpartition(".")
    if not module:
        raise UserError(f"model._target_ must be an import path pkg.module.callable, got "
                        f"{path!r}")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"model._target_ {path!r}: cannot import {module!r} ({exc}); "
                        "put it on PYTHONPATH or install it") from None
    if not hasattr(obj, attr):
        valid = [n for n in dir(obj) if not n.startswith("_")]
        raise UserError(f"model._target_ {path!r}: {close(attr, valid, f'name in {module}')}")
    return getattr(obj, attr)


def _pretrainable(kind: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    """torchvision's or timm's architecture ``name`` at its random initialization."""
    if kind == "torchvision":
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None, **kwargs)
    import timm

    return timm.create_model(name, pretrained=False, **kwargs)


@dataclass(frozen=True)
class Source:
    """Where a user's network comes from: ``kind`` torchvision, timm, onnx, tflite or
    target; ``ref`` the model's name, the file's path or the callable's import path;
    ``args`` the keyword arguments it is built with."""

    kind: str
    ref: str
    args: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        """``kind:ref`` (a file's name, ``tflite:net.tflite``), or the import path with its
        arguments, e.g. ``nets.Net(width=8)``."""
        if self.is_file:
            return f"{self.kind}:{Path(self.ref).name}"
        if self.kind != "target":
            return f"{self.kind}:{self.ref}"
        args = ",".join(f"{k}={v}" for k, v in self.args)
        return f"{self.ref}({args})" if args else self.ref

    @property
    def is_file(self) -> bool:
        """Whether the network and its weights come from one file (onnx, tflite)."""
        return self.kind in FILES

    def identity(self) -> dict[str, Any]:
        """What keys this source in the caches: its description and arguments, and a
        file's content (``content``), so that a changed file is never read stale."""
        ident: dict[str, Any] = {"source": self.describe(), "args": self.args}
        if self.is_file:
            ident["content"] = content(self.ref)
        return ident

    def build(self) -> nn.Module:
        """The architecture at its own random initialization (a file's network with the
        file's weights), in eval mode."""
        kwargs = dict(self.args)
        if self.is_file:
            return file_format(self.kind).convert(self.ref)
        if self.kind in KINDS:
            try:
                net = _pretrainable(self.kind, self.ref, kwargs)
            except TypeError as exc:
                raise UserError(f"{self.describe()} does not take model.args {kwargs}: "
                                f"{exc}") from None
        else:
            from hydra.utils import instantiate

            _callable(self.ref)  # one line where it does not import
            try:
                net = instantiate({"_target_": self.ref, **kwargs})
            except Exception as exc:  # noqa: BLE001 - the user's code failing is one line
                cause = exc.__cause__ or exc
                raise UserError(f"model._target_ {self.ref!r} with model.args {kwargs} "
                                f"failed: {cause.__class__.__name__}: "
                                f"{(str(cause).splitlines() or [''])[0]}") from None
            if not isinstance(net, nn.Module):
                raise UserError(f"model._target_ {self.ref!r} returned a "
                                f"{type(net).__name__}, not a torch.nn.Module")
        return net.eval()


def parse(model: str | Mapping[str, Any]) -> Source | None:
    """The source a ``model`` value names: ``torchvision:NAME``, ``timm:NAME``,
    ``onnx:PATH``, ``tflite:PATH`` (an existing file) or a mapping with ``_target_`` (and
    ``args``); None for a zoo name."""
    if isinstance(model, Mapping):
        target = model.get("_target_")
        if not isinstance(target, str) or not target:
            raise UserError(f"a model given as a mapping needs _target_: an import path, got "
                            f"{dict(model)!r}")
        args = model.get("args") or {}
        if not isinstance(args, Mapping):
            raise UserError(f"model.args must be a mapping of keyword arguments, got {args!r}")
        return Source("target", target, tuple(sorted(dict(args).items())))
    kind, sep, ref = str(model).partition(":")
    if not sep:
        return None
    if kind in FILES and ref:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise UserError(f"model={model}: no file {path} (a .{kind} file of your network)")
        return Source(kind, str(path.resolve()))
    if kind not in KINDS or not ref:
        raise UserError(f"unknown model source {model!r}; valid: a zoo name (ifv list), "
                        f"{', '.join(f'{k}:NAME' for k in KINDS)}, "
                        f"{', '.join(f'{k}:PATH' for k in FILES)}, or model._target_")
    return Source(kind, ref)


def probe(net: nn.Module, shape: tuple[int, int, int], what: str = "the network"
          ) -> dict[str, tuple[int, ...]]:
    """Every tappable layer of ``net`` and its output shape (C, ...) for one grey input of
    ``shape`` [C, H, W]: the modules whose (first) output is one tensor of at least (B, C)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _a: Any, out: Any, name: str = name) -> None:
            if isinstance(out, Tensor) and out.dim() >= 2 and name not in shapes:
                shapes[name] = tuple(out.shape[1:])

        handles.append(module.register_forward_hook(hook))
    like = next(iter(net.parameters()), torch.empty(0))
    try:
        with torch.no_grad():
            net(torch.full((1, *shape), 0.5, dtype=like.dtype, device=like.device))
    except Exception as exc:  # noqa: BLE001 - the network refusing the input is one line
        why = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"{what} cannot take inputs of model.input_size={list(shape)}: "
                        f"{exc.__class__.__name__}: {why[:160]}") from None
    finally:
        for h in handles:
            h.remove()
    return shapes


@functools.lru_cache(maxsize=32)
def _layers(source: Source, shape: tuple[int, int, int]
            ) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(probe(source.build(), shape, source.describe()).items())


def layers(source: Source, shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Every tappable layer of ``source``'s network and its output shape (C, ...) at input
    ``shape`` (``probe`` of its architecture, once per source and shape)."""
    return dict(_layers(source, shape))


def defaults(source: Source) -> tuple[Any, Stats | None, tuple[int, int, int] | None]:
    """What a source says of itself: torchvision's default weights (or None), the
    normalization and input size its weights were trained with (None: not known)."""
    if source.kind == "torchvision":
        return _torchvision(source.ref)
    if source.kind == "timm":
        stats, shape = _timm(source.ref)
        return None, stats, shape
    if source.is_file:
        return None, *file_format(source.kind).defaults(source.ref)
    return None, None, None


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def content(path: str | Path) -> str:
    """The SHA-256 (24 hex digits) of a weights file's content: what keys a user's network
    in the stage cache, so that two checkpoints never share a stage and a changed file is
    never read stale."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return _digest(str(p), st.st_size, st.st_mtime_ns)

"""Planted copies: a network B that computes A's function with the channels of a tapped
layer permuted and positively rescaled (the weight-space symmetries that network comparison
must see through, Sec. 4; ``ifv.math.matching``).

An architecture that allows it implements ``Plantable``: the layers whose channels it can
permute (``plantable``), the groups within which they can be permuted
(``channel_groups``), and ``plant``, which rewrites its own weights in place. The tensor
surgery they share is here: a producer's output channels are permuted and scaled
(``rows``, ``bn_out``), a consumer's inputs permuted and the scale divided out
(``bn_in``, ``cols``). ``planted_copy`` checks the relation and plants it into a copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from ifv.errors import UserError


@runtime_checkable
class Plantable(Protocol):
    """A network whose tapped channels can be permuted and rescaled in its weights."""

    plantable: tuple[str, ...]

    def channel_groups(self, layer: str) -> list[int]: ...

    def plant(self, layer: str, src: Tensor, d: Tensor) -> None: ...


class ChannelScale(nn.Module):
    """x * factor per channel: (B, C, ...) -> (B, C, ...)."""

    def __init__(self, factor: Tensor) -> None:
        super().__init__()
        self.register_buffer("factor", factor.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor.view(1, -1, *([1] * (x.dim() - 2)))


@torch.no_grad()
def rows(m: nn.Module, src: Tensor, d: Tensor) -> None:
    """Output channel j of a convolution / linear layer becomes d_j times the old src[j]."""
    shape = (-1,) + (1,) * (m.weight.dim() - 1)
    m.weight.copy_(m.weight[src] * d.view(shape).to(m.weight))
    if getattr(m, "bias", None) is not None:
        m.bias.copy_(m.bias[src] * d.to(m.bias))


@torch.no_grad()
def bn_out(bn: nn.Module, src: Tensor, d: Tensor) -> None:
    """A batch norm whose outputs are permuted and scaled (its affine part times d)."""
    for name, scaled in (("weight", True), ("bias", True), ("running_mean", False),
                         ("running_var", False)):
        t = getattr(bn, name)
        t.copy_(t[src] * (d.to(t) if scaled else 1.0))


@torch.no_grad()
def bn_in(bn: nn.Module, src: Tensor, d: Tensor) -> None:
    """A batch norm fed the first n channels, permuted and scaled by d: BN(d x) with mean
    d m and weight gamma / d equals BN(x) exactly (eval mode)."""
    n = bn.num_features
    s, dn = src[:n], d[:n]
    bn.running_mean.copy_(bn.running_mean[s] * dn.to(bn.running_mean))
    bn.running_var.copy_(bn.running_var[s])
    bn.weight.copy_(bn.weight[s] / dn.to(bn.weight))
    bn.bias.copy_(bn.bias[s])


@torch.no_grad()
def cols(m: nn.Module, src: Tensor, d: Tensor | None = None) -> None:
    """A convolution / linear layer fed the first n channels, permuted, and scaled by d
    where ``d`` is given (its input column j divided by d_j)."""
    n = m.weight.shape[1]
    w = m.weight[:, src[:n]]
    if d is not None:
        w = w / d[:n].view(1, n, *([1] * (w.dim() - 2))).to(w)
    m.weight.copy_(w)


def plantable(net: nn.Module | type) -> tuple[str, ...]:
    """The layers of a network (or of its class) whose channels ``planted_copy`` can
    permute; none where the architecture is not ``Plantable``."""
    return tuple(getattr(net, "plantable", ()))


def check_plantable(net: nn.Module | type, layer: str, name: str) -> None:
    """Raise ``UserError`` unless ``planted_copy`` can plant into ``layer`` of ``net``
    (``name``: the model, for the message)."""
    valid = plantable(net)
    if not valid:
        raise UserError(f"planted copies are made of networks that know how to permute their "
                        f"tapped channels (ifv.zoo.surgery.Plantable: the zoo's DenseNet-BC and "
                        f"GoogLeNet models), not {name}: every consumer of those channels "
                        "(residual sums, concatenations) must be rewritten with them; compare "
                        "it with a B of its own (compare.b_model, compare.b_weights)")
    if layer not in valid:
        raise UserError(f"planted copies permute the channels of {', '.join(valid)}, not "
                        f"{layer!r}")


def draw_planted(groups: Sequence[int], generator: torch.Generator, *, permute: bool = True,
                 scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """A planted relation, drawn on the CPU: ``perm`` (C,) maps A's channel c to B's channel
    perm[c] (a random permutation within each group, or the identity), ``scales`` (C,) the
    factor d_j of B's channel j, log-uniform in [1/scale, scale] (float64)."""
    parts, start = [], 0
    for size in groups:
        order = torch.randperm(size, generator=generator) if permute else torch.arange(size)
        parts.append(start + order)
        start += size
    perm = torch.cat(parts)
    width = math.log(scale)
    scales = torch.exp((2 * torch.rand(start, generator=generator, dtype=torch.float64) - 1)
                       * width)
    return perm, scales


def planted_copy(net: nn.Module, layer: str, perm: Tensor, scales: Tensor | None = None
                 ) -> nn.Module:
    """B: a copy of ``net`` that computes the same function, with ``layer``'s channels
    permuted (A's channel c is B's channel perm[c], within ``channel_groups``) and B's
    channel j scaled by scales[j] > 0: tap(B)[:, perm[c]] = scales[perm[c]] tap(A)[:, c].
    ``net`` is left as it is; the copy is in eval mode on its device and dtype."""
    check_plantable(net, layer, type(net).__name__)
    assert isinstance(net, Plantable)
    groups = net.channel_groups(layer)
    n = sum(groups)
    perm = torch.as_tensor(perm, dtype=torch.long).cpu()
    d = (torch.ones(n, dtype=torch.float64) if scales is None
         else torch.as_tensor(scales, dtype=torch.float64).cpu())
    if perm.shape != (n,) or d.shape != (n,) or not bool((d > 0).all()):
        raise ValueError(f"perm and scales must be ({n},), scales positive")
    bounds = np.cumsum([0, *groups])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if sorted(perm[lo:hi].tolist()) != list(range(lo, hi)):
            raise ValueError(f"perm must permute within the channel groups {groups}")
    b = copy.deepcopy(net).eval()
    b.plant(layer, torch.argsort(perm), d)  # B's channel j is A's channel src[j]
    return b

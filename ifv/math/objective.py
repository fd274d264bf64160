"""The FV objective f_x = S_x o Agg o N (Sec. 2, 2.3, 3.2).

``tap`` runs a network up to a named layer and stops there; ``aggregate`` maps activations
to one value per feature; ``significance`` is S_x(y) = x^T y (x^T y / ||y||)^k; ``Response``
composes parametrization, network, feature selection and aggregation into
N~ = Agg o N o P: v -> y.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AGGREGATIONS = ("maxpool_mean", "mean", "center", "identity")

# Any map from parameters v: (B, *shape) to responses y: (B, n_f) whose samples are
# independent; ``Response`` is one.
ResponseFn = Callable[[Tensor], Tensor]


class _Stop(Exception):
    """Raised by the tap's hook to end the forward pass at the tapped layer."""


def tap(model: nn.Module, layer: str, inputs: Tensor) -> Tensor:
    """Activations of ``layer`` for ``inputs``; no work is done after that layer.

    The forward hook lives only for this call.
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        raise KeyError(f"unknown layer {layer!r}")
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _args: object, out: Tensor) -> None:
        store["a"] = out
        raise _Stop

    handle = modules[layer].register_forward_hook(hook)
    try:
        model(inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    if "a" not in store:
        raise RuntimeError(f"layer {layer!r} was not reached by the forward pass")
    return store["a"]


def aggregations_for(shape: Sequence[int]) -> tuple[str, ...]:
    """The aggregations that fit a tap whose output per sample has ``shape``: every one
    for (C,), all but identity for (C, H, W), none for any other (e.g. a sequence's (T, C))."""
    if len(shape) == 1:
        return AGGREGATIONS
    return tuple(a for a in AGGREGATIONS if a != "identity") if len(shape) == 3 else ()


def aggregate(a: Tensor, how: str) -> Tensor:
    """Feature response from activations (Sec. 2.3, 3.2).

    a: (B, C, H, W) or (B, C) -> (B, C). ``maxpool_mean``: 3x3 max pooling with stride 1,
    then the spatial mean; ``mean``: spatial mean; ``center``: the neuron at (H//2, W//2);
    ``identity``: the activations themselves (non-spatial layers only). For a non-spatial
    layer every aggregation is the identity.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; valid: {', '.join(AGGREGATIONS)}")
    if a.dim() == 2:
        return a
    if a.dim() != 4:
        raise ValueError(f"activations must be (B, C) or (B, C, H, W), got {tuple(a.shape)}")
    if how == "maxpool_mean":
        kernel = min(3, a.shape[-2], a.shape[-1])
        return F.max_pool2d(a, kernel, stride=1).mean(dim=(-2, -1))
    if how == "mean":
        return a.mean(dim=(-2, -1))
    if how == "center":
        return a[:, :, a.shape[-2] // 2, a.shape[-1] // 2]
    raise ValueError("aggregation 'identity' needs a non-spatial layer; use maxpool_mean, "
                     "mean or center for a spatial one")


def significance(x: Tensor, y: Tensor, k: float) -> Tensor:
    """S_x(y) = x^T y (x^T y / ||y||)^k (Sec. 2). x, y: (B, n_f) -> (B,)."""
    xy = (x * y).sum(-1)
    q = xy / y.norm(dim=-1).clamp_min(torch.finfo(y.dtype).tiny)
    return xy * q.pow(k)


@dataclass
class Response:
    """N~ = Agg o N o P: parameter vectors v (B, *param.shape) -> feature responses (B, n_f).

    ``model`` must be in eval mode so that samples do not interact (batch norm statistics).
    """

    model: nn.Module
    param: Callable[[Tensor], Tensor]
    layer: str
    features: Sequence[int]
    aggregation: str = "maxpool_mean"

    def __post_init__(self) -> None:
        self.features = list(self.features)
        self._index = torch.as_tensor(self.features, dtype=torch.long)
        self._copies: dict[torch.device, Tensor] = {}

    @property
    def n_f(self) -> int:
        return len(self.features)

    def activations(self, images: Tensor) -> Tensor:
        """The tapped layer's activations of the selected features."""
        a = tap(self.model, self.layer, images)
        if a.device not in self._copies:  # the indices on the activations' device, once
            self._copies[a.device] = self._index.to(a.device)
        return a.index_select(1, self._copies[a.device])

    def __call__(self, v: Tensor) -> Tensor:
        return aggregate(self.activations(self.param(v)), self.aggregation)


class _Then:
    """P followed by a transform: v -> T(P(v))."""

    def __init__(self, param: Callable[[Tensor], Tensor], op: Callable[[Tensor], Tensor]):
        self.param, self.op = param, op

    def __call__(self, v: Tensor) -> Tensor:
        return self.op(self.param(v))


def responses_under(response: Response, samples: Sequence[Callable[[Tensor], Tensor]]
                    ) -> list[Response]:
    """N~_T = Agg o N o T o P for each fixed transform T (``ifv.math.transform.Sampled``)."""
    return [dataclasses.replace(response, param=_Then(response.param, t)) for t in samples]

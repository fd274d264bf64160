"""The user-facing pair, without Hydra: ``visualize`` (FV, Opt. (1)) and ``invert`` (Grad-IFV,
Opt. (3)), by model name (or any ``nn.Module``), layer and feature selection.

Defaults are the setting of ``make demo`` (Sec. 3.2): densenet_patterns, dense3, the first 64
features, max pooling + mean, k = 2, P_rgb. The low-level functions stay in their modules:
``ifv.fv.visualize`` (parameters and convergence record), ``ifv.inverse.invert`` / ``solve``
(any response N~ and Gram matrices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ifv import fv
from ifv import inverse as grad_ifv
from ifv.critical import complement
from ifv.errors import UserError
from ifv.fv import FVSettings
from ifv.images import IMAGE_PARAMS, Source, load_images, load_params, to_params
from ifv.inverse import full_space, reduced_gram, reduced_spectrum
from ifv.jacobian import METHODS
from ifv.metrics import relative_residual
from ifv.models import check_layer, get_spec, load
from ifv.models.registry import ModelSpec
from ifv.objective import AGGREGATIONS, Response, tap
from ifv.param import PARAMS, Parametrization, make_param

INPUTS = ("image", "params")

Model = str | nn.Module
Features = int | str | Sequence[int]
Param = str | Mapping[str, Any]


@dataclass
class Inversion:
    """Grad-IFV's answer for a batch of realizations (Opt. (3), Sec. 2.1).

    x_pred: (B, n_f) predicted objectives, unit vectors with x_pred^T y >= 0; entry j
    weighs channel ``features[j]``. y: (B, n_f) feature responses; gram: (B, n_f, n_f)
    G = Dy Dy^T. residual: (B,) ||x*^T Z_k Dy|| / ||Z_k Dy||_2, zero at an exact optimum of
    f_x* (``ifv.metrics.relative_residual``). next_residual: (B,) the same for the runner-up,
    sqrt of the second-smallest eigenvalue of M M^T relative to ||Z_k Dy||_2^2 (NaN for
    dim C = 1): x* is well determined where residual << next_residual. sources: per row, the
    file (or ``images[i]``) and the index within it. settings: what was inverted.
    """

    x_pred: Tensor
    y: Tensor
    gram: Tensor
    residual: Tensor
    next_residual: Tensor
    features: list[int]
    sources: list[tuple[str, int]]
    settings: dict[str, Any] = field(default_factory=dict)

    def top(self, n: int = 5) -> list[list[tuple[int, float]]]:
        """Per sample, the n (channel, weight) pairs of largest |weight|, largest first."""
        order = torch.argsort(self.x_pred.abs(), dim=1, descending=True, stable=True)[:, :n]
        return [[(self.features[int(j)], float(x[j])) for j in row]
                for x, row in zip(self.x_pred, order, strict=True)]

    def to_dict(self, top: int = 5) -> dict[str, Any]:
        """Plain JSON-ready content: the settings and, per sample, the full prediction."""
        rows = []
        for i, ((src, idx), best) in enumerate(zip(self.sources, self.top(top), strict=True)):
            rows.append({
                "file": src, "index": idx,
                "top": [{"feature": f, "weight": w} for f, w in best],
                "residual": _num(self.residual[i]),
                "next_residual": _num(self.next_residual[i]),
                "objective": self.x_pred[i].tolist(),
                "response": self.y[i].tolist(),
            })
        return {"settings": self.settings, "features": self.features, "images": rows}


def _num(t: Tensor) -> float | None:
    """A float for JSON; None for NaN."""
    x = float(t)
    return None if math.isnan(x) else x


@dataclass
class _Setting:
    """The validated, model-independent part of a call."""

    spec: ModelSpec | None
    model_name: str
    param_name: str
    param_kwargs: dict[str, Any]
    k: float
    size: tuple[int, int] | None


def _check(model: Model, layer: str, aggregation: str, k: float, param: Param,
           size: Sequence[int] | None) -> _Setting:
    """Validate everything that needs no network; raise ``UserError`` with what is valid."""
    if aggregation not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    if isinstance(k, bool) or not isinstance(k, int | float) or not 0 <= k < math.inf:
        raise UserError(f"k must be a finite number >= 0, got {k!r}")
    if isinstance(param, Mapping):
        kwargs = dict(param)
        name = str(kwargs.pop("name", None))
    else:
        name, kwargs = str(param), {}
    if name not in PARAMS:
        raise UserError(f"unknown parametrization {name!r}; valid: {', '.join(PARAMS)}")
    if size is not None:
        size = (int(size[0]), int(size[1]))
    if isinstance(model, nn.Module):
        if model.training:
            raise UserError("the model is in training mode; call model.eval() first (samples "
                            "must not interact through batch statistics)")
        return _Setting(None, type(model).__name__, name, kwargs, float(k), size)
    spec = get_spec(str(model))
    if layer not in spec.layers:
        check_layer(spec, layer, 1)
    if size is not None and size != spec.input_size:
        raise UserError(f"{spec.name} takes {spec.input_size[0]}x{spec.input_size[1]} inputs, "
                        f"got size={size}")
    return _Setting(spec, spec.name, name, kwargs, float(k), spec.input_size)


def _make_param(s: _Setting, size: tuple[int, int]) -> Parametrization:
    try:
        return make_param(s.param_name, *size, **s.param_kwargs)
    except TypeError as exc:
        raise UserError(f"invalid options for param {s.param_name}: {exc}") from None


def _select(spec: ModelSpec | None, name: str, layer: str, features: Features,
            channels: int) -> list[int]:
    """Feature indices: the first N channels, ``"all"``, or explicit indices (check_layer)."""
    if spec is None:
        spec = ModelSpec(name=name, tier="user", arch="user", arch_kwargs={},
                         input_size=(0, 0), layers={layer: channels})
    bad = UserError(f"features must be a number, a list of indices or 'all', got {features!r}")
    if isinstance(features, str):
        if features != "all":
            raise bad
        return check_layer(spec, layer, spec.layers[layer])
    if isinstance(features, bool):
        raise bad
    if isinstance(features, int):
        return check_layer(spec, layer, features)
    try:
        selection = [int(i) for i in features]
    except (TypeError, ValueError):
        raise bad from None
    return check_layer(spec, layer, selection)


def _network(model: Model, s: _Setting, weights: str | None, cache_dir: str | Path | None,
             download: bool) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    assert s.spec is not None
    return load(s.spec, weights=weights, cache_dir=cache_dir, download=download)


def _probe(net: nn.Module, layer: str, param: Parametrization, like: Tensor) -> int:
    """The channels of ``layer`` from one forward pass of a grey input."""
    if layer not in dict(net.named_modules()):
        names = [n for n, _ in net.named_modules() if n]
        raise UserError(f"the model has no layer {layer!r}; valid: {', '.join(names[:30])}"
                        + (" ..." if len(names) > 30 else ""))
    v0 = torch.zeros((1, *param.shape), dtype=like.dtype, device=like.device)
    try:
        with torch.no_grad():
            a = tap(net, layer, param(v0))
    except RuntimeError as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"the model cannot take P_{param.name}'s inputs of shape "
                        f"{tuple(param(v0).shape[1:])}: {why}") from None
    return int(a.shape[1]) if a.dim() >= 2 else 1


def _like(net: nn.Module) -> Tensor:
    """An empty tensor with the network's dtype and device."""
    p = next(iter(net.parameters()), None)
    return torch.empty(0) if p is None else p.new_empty(0)


def read_critical(path: str | Path, n_f: int, critical_dim: int | None = None, *,
                  model: str | None = None, layer: str | None = None) -> Tensor:
    """C_M, an orthonormal basis of a critical space (Eq. (4), Sec. 2.2) from a run's
    critical.parquet: the orthogonal complement of the row's ``complement`` vectors.

    The row is the one marked ``best`` (Sec. 3.5), or the one with ``critical_dim``. Where a
    results.parquet lies beside it, its model and layer must match ``model`` / ``layer``.
    Returns (n_f, dim C) float64.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (critical=PATH names a run's critical.parquet)")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one line for the user
        raise UserError(f"{path}: cannot read it as parquet ({exc.__class__.__name__})") from None
    missing = sorted({"critical_dim", "complement", "best"} - set(df.columns))
    if missing or df.empty:
        raise UserError(f"{path}: not a run's critical.parquet (no rows or no columns "
                        f"{missing}); valid: the critical.parquet that `ifv run` writes")
    dims = [int(d) for d in df.critical_dim]
    if critical_dim is None:
        rows = df[df.best.astype(bool)]
        if rows.empty:
            raise UserError(f"{path}: no row is marked best; pick one with critical_dim=D, "
                            f"valid: {', '.join(map(str, dims))}")
    else:
        rows = df[df.critical_dim == critical_dim]
        if rows.empty:
            raise UserError(f"{path}: no critical space of dim {critical_dim}; valid: "
                            f"{', '.join(map(str, dims))}")
    row = rows.iloc[0]
    vectors = [np.asarray(v, dtype=np.float64) for v in row.complement]
    width = {len(v) for v in vectors} or {int(row.critical_dim)}
    run_nf = width.pop() if len(width) == 1 else -1
    _check_run(path.parent / "results.parquet", model, layer)
    if run_nf != n_f or int(row.critical_dim) + len(vectors) != n_f:
        raise UserError(f"{path}: its critical space (dim {int(row.critical_dim)}) belongs to "
                        f"{run_nf} features, not the {n_f} selected here; select the run's "
                        "features")
    if not vectors:
        return full_space(n_f)
    return complement(torch.from_numpy(np.stack(vectors, axis=1)))


def _check_run(results: Path, model: str | None, layer: str | None) -> None:
    """The run beside a critical.parquet must be of the same model and layer."""
    import pandas as pd

    if not results.is_file():
        return
    try:
        run = pd.read_parquet(results, columns=["model", "layer"]).iloc[0]
    except Exception:  # noqa: BLE001 - an unreadable neighbour is no reason to stop
        return
    for key, want in (("model", model), ("layer", layer)):
        if want is not None and str(run[key]) != want:
            raise UserError(f"{results.parent / 'critical.parquet'}: its run used {key} "
                            f"{run[key]!r}, not {want!r}")


def _basis(critical: str | Path | Tensor | None, critical_dim: int | None, n_f: int,
           s: _Setting, layer: str) -> Tensor:
    if critical is None:
        if critical_dim is not None:
            raise UserError("critical_dim needs critical=PATH (a run's critical.parquet)")
        return full_space(n_f)
    if isinstance(critical, Tensor):
        if critical.dim() != 2 or critical.shape[0] != n_f or critical.shape[1] < 1:
            raise UserError(f"critical must be a basis C_M of shape ({n_f}, d), d >= 1, got "
                            f"{tuple(critical.shape)}")
        return critical.double()
    return read_critical(critical, n_f, critical_dim,
                         model=s.model_name if s.spec is not None else None, layer=layer)


def _next_residual(y: Tensor, gram: Tensor, k: float, basis: Tensor) -> Tensor:
    """sqrt(lambda_2(M M^T) / lambda_max(Z_k G Z_k)), M = U^T Z_k Dy (Supp. S1): (B,)."""
    _, evals, _ = reduced_spectrum(y, gram, k, basis)
    if evals.shape[-1] < 2:
        return torch.full(y.shape[:1], math.nan, dtype=torch.float64)
    lam_max = torch.linalg.eigvalsh(reduced_gram(y, gram, k))[..., -1]
    return torch.sqrt(evals[..., 1].clamp_min(0.0) / lam_max)


def invert(images: Source | Sequence[Source], model: Model = "densenet_patterns",
           layer: str = "dense3", features: Features = 64, aggregation: str = "maxpool_mean",
           k: float = 2, param: Param = "rgb", critical: str | Path | Tensor | None = None, *,
           critical_dim: int | None = None, input: str = "image",
           size: Sequence[int] | None = None, weights: str | None = None,
           cache_dir: str | Path | None = None, download: bool = False,
           method: str = "loop") -> Inversion:
    """Grad-IFV for the user's realizations: the predicted objectives x* of Opt. (3).

    ``images``: paths (.pt, .npy, .png) or tensors/arrays in [0, 1], each one image (C, H, W)
    / (H, W, C) or a batch; they are mapped to P's variables v by ``ifv.images.to_params``
    (P_rgb, P_fft, P_ffte) and Dy is taken w.r.t. v (Sec. 2). With ``input="params"`` they
    are the variables v themselves (.pt/.npy/tensors of shape param.shape, or batched; any
    parametrization). ``model``: a zoo name (its weights as ``ifv.models.load`` finds them,
    or ``weights=PATH`` / ``"random"``) or an ``nn.Module`` in eval mode, whose input size is
    the images' (or ``size=(H, W)`` with params). ``features``: the first N channels of
    ``layer``, explicit indices, or ``"all"``. ``critical``: a run's critical.parquet (its best
    space, or ``critical_dim``) or a basis C_M (n_f, d); default C = R^{n_f}.
    """
    s = _check(model, layer, aggregation, k, param, size)
    if input not in INPUTS:
        raise UserError(f"unknown input {input!r}; valid: {', '.join(INPUTS)}")
    if method not in METHODS:
        raise UserError(f"unknown jacobian method {method!r}; valid: {', '.join(METHODS)}")
    idx = None if s.spec is None else _select(s.spec, s.model_name, layer, features, 0)
    if input == "image":
        if s.param_name not in IMAGE_PARAMS:
            raise UserError(f"images cannot be mapped to the variables of P_{s.param_name}; "
                            f"valid for images: {', '.join(IMAGE_PARAMS)}; pass the "
                            "parameters v themselves with input=params")
        imgs, sources = load_images(images, 3, s.size)
        p = _make_param(s, (imgs.shape[-2], imgs.shape[-1]))
        v = to_params(imgs, p)
    else:
        if s.size is None:
            raise UserError("input=params with an nn.Module needs size=(H, W) of its input")
        p = _make_param(s, s.size)
        v, sources = load_params(images, p.shape)
    net = _network(model, s, weights, cache_dir, download)
    like = _like(net)
    channels = _probe(net, layer, p, like)
    if idx is None:
        idx = _select(None, s.model_name, layer, features, channels)
    basis = _basis(critical, critical_dim, len(idx), s, layer)
    response = Response(net, p, layer, idx, aggregation)
    x_pred, y, gram = grad_ifv.invert(response, v.to(like), s.k, basis, method=method)
    settings = {"model": s.model_name, "weights": weights, "layer": layer, "n_f": len(idx),
                "aggregation": aggregation, "k": s.k,
                "param": {"name": s.param_name, **s.param_kwargs}, "input": input,
                "critical": str(critical) if isinstance(critical, str | Path) else None,
                "critical_dim": basis.shape[1]}
    return Inversion(x_pred=x_pred, y=y, gram=gram,
                     residual=relative_residual(x_pred, y, gram, s.k),
                     next_residual=_next_residual(y, gram, s.k, basis), features=idx,
                     sources=sources, settings=settings)


def visualize(x: Tensor | Sequence[float], model: Model = "densenet_patterns",
              layer: str = "dense3", features: Features = 64,
              aggregation: str = "maxpool_mean", k: float = 2, param: Param = "rgb",
              settings: FVSettings | None = None, *, seed: int = 0,
              size: Sequence[int] | None = None, weights: str | None = None,
              cache_dir: str | Path | None = None, download: bool = False,
              progress: bool = True) -> Tensor:
    """Realizations I* = P(v*) of the target objectives x, Opt. (1) with S_x of Sec. 2.

    x: (N, n_f) or (n_f,), normalized onto Omega, the unit sphere; the other arguments as
    in ``invert`` (an ``nn.Module`` needs ``size=(H, W)``); ``settings``: step counts
    (default ``FVSettings()``, Sec. 3.2). Returns P's renders (N, C, H, W)
    in [0, 1], for P_rgb / P_fft / P_ffte the network's input images, which ``invert``
    reads back. ``ifv.fv.visualize`` returns the parameters v and the convergence record.
    """
    s = _check(model, layer, aggregation, k, param, size)
    if s.size is None:
        raise UserError("visualize with an nn.Module needs size=(H, W) of its input")
    p = _make_param(s, s.size)
    net = _network(model, s, weights, cache_dir, download)
    like = _like(net)
    idx = _select(s.spec, s.model_name, layer, features, _probe(net, layer, p, like))
    t = torch.as_tensor(x, dtype=torch.float64)
    t = t.unsqueeze(0) if t.dim() == 1 else t
    if t.dim() != 2 or t.shape[1] != len(idx):
        raise UserError(f"targets x must be (N, {len(idx)}) or ({len(idx)},) for the "
                        f"{len(idx)} selected features, got {tuple(t.shape)}")
    norm = t.norm(dim=1, keepdim=True)
    if not bool((norm > 0).all() and torch.isfinite(t).all()):
        raise UserError("targets x must be finite and nonzero")
    response = Response(net, p, layer, idx, aggregation)

    def init(n: int, g: torch.Generator) -> Tensor:
        return p.init(n, g).to(like)

    result = fv.visualize(response, init, (t / norm).to(like), s.k,
                          settings or FVSettings(), seed=seed, progress=progress)
    return p.render(result.v).detach()

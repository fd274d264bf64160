"""The Python faces, without Hydra: ``visualize`` (FV, Opt. (1)) and ``invert`` (Grad-IFV,
Opt. (3)), by model name (or any ``nn.Module``), layer and feature selection.

Both build on ``ifv.run.setting.Setting``, as ``ifv run`` and ``ifv invert`` do: the same
checks, the same messages, and an offline stand-in missing from the model cache is trained
once. Defaults are the setting of ``make demo`` (Sec. 3.2): densenet_patterns, dense3, the
first 64 features, max pooling + mean, k = 2, P_rgb. The low-level forms stay in their
modules: ``ifv.math.fv.realize``, ``ifv.math.jacobian.response_and_gram``,
``ifv.math.inverse.solve``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ifv.device import float32_precision, to
from ifv.errors import UserError
from ifv.math import fv
from ifv.math.critical import complement
from ifv.math.fv import FVSettings
from ifv.math.inverse import full_space
from ifv.math.jacobian import METHODS
from ifv.math.kink import Kinks
from ifv.math.robust import Robust
from ifv.math.transform import describe
from ifv.run.images import IMAGE_PARAMS, Source, load_images, load_params, to_params
from ifv.run.setting import Features, Model, Param, PriorSpec, Setting, Transforms
from ifv.run.stages import Chain
from ifv.validate import choice

INPUTS = ("image", "params")
@dataclass
class Inversion:
    """Grad-IFV's answer for a batch of realizations (Opt. (3), Sec. 2.1).

    x_pred: (B, n_f) predicted objectives, unit vectors with x_pred^T y >= 0; entry j
    weighs channel ``features[j]``. y: (B, n_f) feature responses; gram: (B, n_f, n_f)
    G = Dy Dy^T. residual: (B,) ||x*^T Z_k Dy|| / ||Z_k Dy||_2, zero at an exact optimum of
    f_x* (``ifv.math.metrics.relative_residual``). next_residual: (B,) the same for the runner-up,
    sqrt of the second-smallest eigenvalue of M M^T relative to ||Z_k Dy||_2^2 (NaN for
    dim C = 1): x* is well determined where residual << next_residual. sources: per row, the
    file (or ``images[i]``) and the index within it. kink_dim: (B,) dim N of the switch
    normals found at each realization (0: none, or kinks off; then gram, residual and x_pred
    are Opt. (3)'s; else gram is G_T = Dy P_T Dy^T, docs/kinks.md). settings: what was
    inverted.
    """

    x_pred: Tensor
    y: Tensor
    gram: Tensor
    residual: Tensor
    next_residual: Tensor
    features: list[int]
    sources: list[tuple[str, int]]
    kink_dim: Tensor | None = None
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
                "kink_dim": None if self.kink_dim is None else int(self.kink_dim[i]),
                "objective": self.x_pred[i].tolist(),
                "response": self.y[i].tolist(),
            })
        return {"settings": self.settings, "features": self.features, "images": rows}


def _num(t: Tensor) -> float | None:
    """A float for JSON; None for NaN."""
    x = float(t)
    return None if math.isnan(x) else x


def read_critical(path: str | Path, n_f: int, critical_dim: int | None = None, *,
                  model: str | None = None, layer: str | None = None,
                  key: str = "critical") -> Tensor:
    """C_M, an orthonormal basis of a critical space (Eq. (4), Sec. 2.2) from a run's
    critical.parquet: the orthogonal complement of the row's ``complement`` vectors.

    The row is the one marked ``best`` (Sec. 3.5), or the one with ``critical_dim``. Where a
    results.parquet lies beside it, its model and layer must match ``model`` / ``layer``.
    ``key``: the option that named the file, for the messages. Returns (n_f, dim C) float64.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: no such file {path}; valid: a run's critical.parquet")
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
           s: Setting, key: str = "critical") -> Tensor:
    if critical is None:
        if critical_dim is not None:
            raise UserError(f"{key}_dim needs {key}=PATH (a run's critical.parquet)")
        return full_space(n_f)
    if isinstance(critical, Tensor):
        if critical.dim() != 2 or critical.shape[0] != n_f or critical.shape[1] < 1:
            raise UserError(f"critical must be a basis C_M of shape ({n_f}, d), d >= 1, got "
                            f"{tuple(critical.shape)}")
        return critical.double()
    return read_critical(critical, n_f, critical_dim,
                         model=s.model_name if s.spec is not None else None, layer=s.layer,
                         key=key)


def invert(images: Source | Sequence[Source], model: Model = "densenet_patterns",
           layer: str = "dense3", features: Features = 64, aggregation: str = "maxpool_mean",
           k: float = 2, param: Param = "rgb", critical: str | Path | Tensor | None = None, *,
           critical_dim: int | None = None, input: str = "image",
           size: Sequence[int] | None = None, weights: str | None = None,
           cache_dir: str | Path | None = None, download: bool = False,
           device: str = "auto", tf32: bool = False, method: str = "auto",
           transforms: Transforms = "none", prior: PriorSpec = "none",
           robust: Robust | None = None, kinks: Kinks | None = None,
           input_size: Sequence[int] | None = None, normalize: Any = None,
           weights_key: str | None = None, progress: bool = True) -> Inversion:
    """Grad-IFV for the user's realizations: the predicted objectives x* of Opt. (3).

    ``images``: paths (.pt, .npy, .png) or tensors/arrays in [0, 1], each one image (C, H, W)
    / (H, W, C) or a batch; they are mapped to P's variables v by ``ifv.run.images.to_params``
    (P_rgb, P_fft, P_ffte) and Dy is taken w.r.t. v (Sec. 2). With ``input="params"`` they
    are the variables v themselves (.pt/.npy/tensors of shape param.shape, or batched; any
    parametrization). ``model``: a zoo name (its weights as ``ifv.zoo.load`` finds them,
    or ``weights=PATH`` / ``"random"``) or an ``nn.Module`` in eval mode, whose input size is
    the images' (or ``size=(H, W)`` with params). ``features``: the first N channels of
    ``layer``, explicit indices, or ``"all"``. ``critical``: a run's critical.parquet (its best
    space, or ``critical_dim``) or a basis C_M (n_f, d); default C = R^{n_f}. ``device``:
    where Dy and the algebra run (auto: CUDA where present; a module's own device);
    ``method``: the Jacobian method (``ifv.math.jacobian``). ``transforms`` and ``prior``: how the
    realizations were made (robust FV: none, standard, lucid, lucent or custom steps; none,
    l2, tv, blur or {name, weight}, as in ``ifv.visualize``); with either, the robust solver
    inverts them (docs/robust-ifv.md) with the options ``robust`` (default ``Robust()``: K =
    32 transform samples of their own seed, the relative-stationarity estimator), and
    ``residual`` is its relative stationarity of the mean gradient (``next_residual`` NaN).
    ``input_size``, ``normalize``, ``weights_key``: your own network's (``model`` a
    source: ``torchvision:NAME``, ``timm:NAME`` or {"_target_": ..., "args": {...}};
    ``ifv.run.setting.Setting.make``). ``kinks``: the tangent condition at kinks of a
    ReLU / max-pooling network (default
    ``Kinks()``; ``Kinks(samples=0)``: plain Opt. (3); docs/kinks.md). The result's tensors
    are on the CPU.
    """
    s = Setting.make(model, layer, features, aggregation, k, param, weights=weights,
                     cache_dir=cache_dir, download=download, size=size, device=device,
                     tf32=tf32, transforms=transforms, prior=prior, input_size=input_size,
                     normalize=normalize, weights_key=weights_key)
    return invert_setting(images, s, critical, critical_dim=critical_dim, input=input,
                          method=method, robust=robust, kinks=kinks, progress=progress)


def invert_setting(images: Source | Sequence[Source], s: Setting,
                   critical: str | Path | Tensor | None = None, *,
                   critical_dim: int | None = None, input: str = "image",
                   method: str = "auto", robust: Robust | None = None,
                   kinks: Kinks | None = None, fv: FVSettings | None = None, seed: int = 0,
                   progress: bool = True, critical_key: str = "critical") -> Inversion:
    """``invert`` for a validated ``Setting`` (``ifv invert`` builds one from its config).
    ``fv`` and ``seed``: how ifv's FV made the realizations, for ``robust.draws="fv"`` (the
    robust solver then uses FV's own L-BFGS draws, ``ifv.math.fv.lbfgs_draws``);
    ``critical_key``: the option that names ``critical``, for the messages. The images and
    the critical space (of a zoo model) are read and checked before the network is
    loaded."""
    choice("input", input, INPUTS)
    choice("jacobian.method", method, METHODS)
    if input == "image":
        if s.param["name"] not in IMAGE_PARAMS:
            raise UserError(f"images cannot be mapped to the variables of P_{s.param['name']}; "
                            f"valid for images: {', '.join(IMAGE_PARAMS)}; pass the "
                            "parameters v themselves with input=params")
        imgs, sources = load_images(images, s.in_channels, s.size)
        size = (imgs.shape[-2], imgs.shape[-1])
        p = s.parametrization(size)
        v = to_params(imgs, p)
    else:
        if s.size is None:
            raise UserError("input=params with an nn.Module needs size=(H, W) of its input")
        size = s.size
        v, sources = load_params(images, s.parametrization().shape)
    # a zoo model's n_f is known without its network: the critical space is checked first
    n_f = len(s.features(s.spec.layers[s.layer])) if s.spec is not None else None
    basis = None if n_f is None else _basis(critical, critical_dim, n_f, s, critical_key)
    bound = s.bind(size, progress=progress)
    if basis is None:
        basis = _basis(critical, critical_dim, bound.n_f, s, critical_key)
    basis = basis.to(bound.device)
    rb = robust or Robust()
    kinks = Kinks() if kinks is None else kinks
    with float32_precision(s.tf32):
        inv = Chain(bound, progress=progress).invert(v.to(bound.like()), basis, kinks, rb,
                                                     fv=fv, seed=seed, method=method)
    inv = to(inv, "cpu")
    settings = {"model": s.model_name, "weights": s.weights, "layer": s.layer,
                "n_f": bound.n_f, "aggregation": s.aggregation, "k": s.k, "param": s.param,
                "input": input, "device": str(bound.device), "tf32": s.tf32,
                "critical": str(critical) if isinstance(critical, str | Path) else None,
                "critical_dim": basis.shape[1],
                "transforms": describe(s.transforms), "prior": s.prior,
                "inversion": (rb.options(bound.transform is not None, fv)
                              | {"seed": rb.source(fv, seed)[2],
                                 "tol": rb.tol, "max_iter": rb.max_iter}
                              if bound.robust else None),
                "kinks": asdict(kinks)}
    return Inversion(x_pred=inv.x, y=inv.y, gram=inv.gram, residual=inv.residual,
                     next_residual=inv.next_residual, features=bound.features,
                     sources=sources, kink_dim=inv.kink_dim, settings=settings)


def visualize(x: Tensor | Sequence[float], model: Model = "densenet_patterns",
              layer: str = "dense3", features: Features = 64,
              aggregation: str = "maxpool_mean", k: float = 2, param: Param = "rgb",
              settings: FVSettings | None = None, *, seed: int = 0,
              size: Sequence[int] | None = None, weights: str | None = None,
              cache_dir: str | Path | None = None, download: bool = False,
              device: str = "auto", tf32: bool = False, transforms: Transforms = "none",
              prior: PriorSpec = "none", input_size: Sequence[int] | None = None,
              normalize: Any = None, weights_key: str | None = None,
              progress: bool = True) -> Tensor:
    """Realizations I* = P(v*) of the target objectives x, Opt. (1) with S_x of Sec. 2.

    x: (N, n_f) or (n_f,), normalized onto Omega, the unit sphere; the other arguments as
    in ``invert`` (an ``nn.Module`` needs ``size=(H, W)``); ``settings``: step counts
    (default ``FVSettings()``, Sec. 3.2); ``device``: where FV runs (the initial
    parameters are drawn on the CPU from ``seed``, the same on every device); ``transforms``
    and ``prior``: robust FV (a fresh transform every Adam step, drawn from ``seed``; the
    prior lambda R subtracted from S_x; ``ifv.run.setting.Setting.make``). Returns P's
    renders (N, C, H, W) in [0, 1] on the CPU, for P_rgb / P_fft / P_ffte the network's
    input images, which ``invert`` reads back. ``ifv.math.fv.realize`` returns the parameters v
    and the convergence record.
    """
    s = Setting.make(model, layer, features, aggregation, k, param, weights=weights,
                     cache_dir=cache_dir, download=download, size=size, device=device,
                     tf32=tf32, transforms=transforms, prior=prior, input_size=input_size,
                     normalize=normalize, weights_key=weights_key)
    if s.size is None:
        raise UserError("visualize with an nn.Module needs size=(H, W) of its input")
    bound = s.bind(progress=progress)
    n_f = bound.n_f
    t = torch.as_tensor(x, dtype=torch.float64)
    t = t.unsqueeze(0) if t.dim() == 1 else t
    if t.dim() != 2 or t.shape[1] != n_f:
        raise UserError(f"targets x must be (N, {n_f}) or ({n_f},) for the "
                        f"{n_f} selected features, got {tuple(t.shape)}")
    norm = t.norm(dim=1, keepdim=True)
    if not bool((norm > 0).all() and torch.isfinite(t).all()):
        raise UserError("targets x must be finite and nonzero")
    with float32_precision(s.tf32):
        result = fv.realize(bound.response, (t / norm).to(bound.like()), s.k,
                            settings or FVSettings(), init=bound.init, seed=seed,
                            progress=progress, transform=bound.transform, prior=bound.prior)
    return bound.param.render(result.v).detach().cpu()

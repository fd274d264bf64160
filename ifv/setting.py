"""One validated setting: a network, its tapped layer and features, the aggregation, the
parametrization P and the power k of S_x (Sec. 2), and the sizes of a run (Sec. 3.2, 3.4).

``Setting`` is what ``ifv run``, ``ifv invert``, ``ifv.visualize`` and ``ifv.invert`` share:
it checks every value once, with one message each, and ``Setting.bind`` turns it into the
response N~ = Agg o N o P. An offline stand-in missing from the model cache is trained
there, once, with a progress bar, wherever it is asked for (the one provisioning policy).
``Experiment`` adds what ``ifv run`` needs beyond the setting: targets, FV and
re-optimization sizes, Algorithm 1's options, the seed.

FV as Lucid and Lucent run it is part of the setting, since the inversion must know it:
``transforms`` (none, a preset of ``ifv.transform.PRESETS`` or a list of steps) and a
``prior`` (``ifv.prior.PRIORS`` with its weight); ``Robust`` holds the robust solver's
options (docs/robust-ifv.md).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ifv.device import resolve
from ifv.errors import UserError
from ifv.fv import FVSettings, lbfgs_draws, settings_key
from ifv.jacobian import METHODS
from ifv.kink import Kinks
from ifv.models import check_layer, get_spec, load
from ifv.models.registry import ModelSpec
from ifv.objective import AGGREGATIONS, Response, ResponseFn, tap
from ifv.param import PARAMS, Parametrization, make_param
from ifv.prior import PRIORS, WEIGHTS, Prior
from ifv.robust import ESTIMATORS, responses_under
from ifv.store import check_outputs
from ifv.transform import (
    PRESETS,
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    Step,
    Transform,
    preset,
)

Model = str | nn.Module
Features = int | str | Sequence[int]
Param = str | Mapping[str, Any]
Transforms = str | Sequence[Mapping[str, Any]]
PriorSpec = str | Mapping[str, Any]
Log = Callable[[str], None]
# The steps of a custom transforms list: {pad: px}, {jitter: px}, {scale: [factors]},
# {rotate: [degrees]} (pad fills with grey; ifv's arithmetic, ``ifv.transform``).
STEPS = ("pad", "jitter", "scale", "rotate")

CANONICAL = ("half", "all")
# the options a setting's messages name by default (``Setting.make``'s ``keys``)
KEYS = {"model": "model", "layer": "layer", "features": "features",
        "weights": "model.weights", "param": "param"}
ORDERS = ("sequential", "pairwise", "random:SEED")


def choice(key: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else a ``UserError`` that lists them."""
    if not isinstance(value, str) or value not in valid:
        raise UserError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
    return value


def count(key: str, value: Any, low: int = 0) -> int:
    """An integer >= ``low`` (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


def number(key: str, value: Any, *, low: float = 0.0, strict: bool = False) -> float:
    """A finite number >= ``low`` (> ``low`` with ``strict``)."""
    ok = (not isinstance(value, bool) and isinstance(value, int | float)
          and math.isfinite(value) and (value > low if strict else value >= low))
    if not ok:
        raise UserError(f"{key} must be a finite number {'>' if strict else '>='} {low:g}, "
                        f"got {value!r}")
    return float(value)


def share(key: str, value: Any) -> float:
    """A number in [0, 1]."""
    if number(key, value) > 1:
        raise UserError(f"{key} must be a number in [0, 1], got {value!r}")
    return float(value)


def _selection(features: Any, key: str = "features") -> int | str | tuple[int, ...]:
    """A feature selection: the first N channels, ``"all"``, or explicit indices (integers;
    ``key``: the option the user set, for the message)."""
    bad = UserError(f"{key} must be a positive number, a list of indices or all, got "
                    f"{features!r}")
    if isinstance(features, str):
        if features != "all":
            raise bad
        return features
    if isinstance(features, bool):
        raise bad
    if isinstance(features, int):
        if features < 1:
            raise bad
        return features
    try:
        if any(isinstance(i, bool) for i in features):
            raise TypeError("a boolean is no index")
        return tuple(operator.index(i) for i in features)
    except TypeError:
        raise bad from None


def _transforms(value: Any) -> str | tuple[tuple[str, Any], ...]:
    """none, a preset name, or a custom list of steps as ((kind, value), ...)."""
    valid = ("none", *PRESETS)
    if isinstance(value, str):
        return choice("transforms", value, valid)
    bad = (f"transforms must be {', '.join(valid)} or a list of steps "
           f"[{{pad: PX}}, {{jitter: PX}}, {{scale: [S, ..]}}, {{rotate: [DEG, ..]}}], "
           f"got {value!r}")
    if not isinstance(value, Sequence) or not value:
        raise UserError(bad)
    steps = []
    for i, step in enumerate(value):
        if not isinstance(step, Mapping) or len(step) != 1:
            raise UserError(bad)
        ((kind, arg),) = step.items()
        key = f"transforms[{i}].{kind}"
        choice(f"transforms[{i}] step", kind, STEPS)
        if kind in ("pad", "jitter"):
            steps.append((kind, count(key, arg)))
            continue
        if isinstance(arg, str) or not isinstance(arg, Sequence) or not arg:
            raise UserError(f"{key} must be a non-empty list of numbers, got {arg!r}")
        if kind == "scale":
            steps.append((kind, tuple(number(key, a, strict=True) for a in arg)))
        else:
            steps.append((kind, tuple(number(key, a, low=-360.0) for a in arg)))
    return tuple(steps)


def _prior(value: Any) -> dict[str, Any]:
    """{"name": a prior of PRIORS, "weight": lambda >= 0 (default ``ifv.prior.WEIGHTS``)}."""
    options = dict(value) if isinstance(value, Mapping) else {"name": value}
    name = choice("prior", options.pop("name", None), PRIORS)
    weight = options.pop("weight", None)
    if options:
        raise UserError(f"unknown prior option(s) {sorted(options)}; valid: name, weight")
    if name == "none":
        if weight not in (None, 0, 0.0):
            raise UserError("prior.weight needs a prior: prior=l2, tv or blur")
        return {"name": name, "weight": 0.0}
    return {"name": name,
            "weight": WEIGHTS[name] if weight is None else number("prior.weight", weight)}


def transform_steps(spec: str | tuple[tuple[str, Any], ...], height: int, width: int
                    ) -> Transform | None:
    """The ``Transform`` of a validated transforms value for height x width inputs (None
    for none)."""
    if spec == "none":
        return None
    if isinstance(spec, str):
        return preset(spec, height, width)
    make: dict[str, Callable[[Any], Step]] = {
        "pad": lambda a: Pad(a, "constant", 0.5), "jitter": Jitter,
        "scale": RandomScale, "rotate": RandomRotate}
    return Transform(tuple(make[kind](arg) for kind, arg in spec))


def describe_transforms(spec: str | tuple[tuple[str, Any], ...]) -> str:
    """One string for a transforms value: its name, or the custom steps (``pad=3 jitter=2
    scale=0.9,1.1``)."""
    if isinstance(spec, str):
        return spec
    return " ".join(f"{kind}={','.join(f'{a:g}' for a in arg) if isinstance(arg, tuple) else arg}"
                    for kind, arg in spec)


@dataclass(frozen=True)
class Bound:
    """A setting bound to its network: N~ = Agg o N o P and what it selects.

    ``response``: v (B, *param.shape) -> y (B, n_f); ``features``: the n_f channel indices;
    ``n_channels``: the channels of the tapped layer; ``transform``: FV's random
    transformations (None: none); ``prior``: lambda R o P (None: none).
    """

    setting: Setting
    network: nn.Module
    param: Parametrization
    response: Response
    features: list[int]
    n_channels: int
    transform: Transform | None = None
    prior: Prior | None = None

    @property
    def robust(self) -> bool:
        """Whether FV is robust FV (transforms or a prior): the robust solver inverts it."""
        return self.transform is not None or self.prior is not None

    def fv_key(self, fv: FVSettings) -> dict[str, Any]:
        """FV's part of a stage cache's key: the settings that shape a realization
        (``ifv.fv.settings_key``) and, for robust FV only, the transforms and the prior, so
        that the bare case keeps its entries."""
        key: dict[str, Any] = {"fv": settings_key(fv, self.transform is not None,
                                                  self.prior is not None)}
        if self.robust:
            key |= {"transforms": describe_transforms(self.setting.transforms),
                    "prior": self.setting.prior}
        return key

    def robust_inputs(self, rb: Robust, fv: FVSettings | None = None, seed: int = 0
                      ) -> tuple[list[ResponseFn], Prior | None]:
        """What the robust solver needs besides v: one response per fixed transform (FV's
        L-BFGS draws for ``seed`` where ``rb`` uses them, ``fv`` the FV settings that made
        the realizations; else the ``rb.samples`` draws of ``rb.seed``; the response itself
        without transforms) and R o P without its weight (None without a prior),
        docs/robust-ifv.md."""
        if self.transform is None:
            samples = [lambda images: images]
        elif rb.uses_fv_draws(fv):
            samples = lbfgs_draws(self.transform, fv, seed)  # type: ignore[arg-type]
        else:
            samples = self.transform.samples(rb.samples, rb.seed)
        prior = (None if self.prior is None
                 else Prior(self.setting.prior["name"], self.param))
        return responses_under(self.response, samples), prior

    @property
    def n_f(self) -> int:
        return len(self.features)

    @property
    def device(self) -> torch.device:
        return self.like().device

    def like(self) -> Tensor:
        """An empty tensor with the network's dtype and device."""
        return _like(self.network)

    def init(self, n: int, generator: torch.Generator) -> Tensor:
        """P's initial parameters (n, *param.shape), drawn on the CPU from ``generator`` and
        moved to the network's device and dtype: the same start on every device."""
        return self.param.init(n, generator).to(self.like())


@dataclass(frozen=True)
class Setting:
    """The validated setting (build it with ``Setting.make`` or ``Setting.from_config``).

    ``spec`` is the zoo entry (None for a user's ``module``); ``selection`` the first N
    channels, ``"all"`` or explicit indices; ``param`` P's name and options; ``size`` the
    input's (H, W) where known (a zoo model's, or given for a module); ``device`` where
    every stage runs (``ifv.device.resolve``); ``tf32``: TF32 matmuls and convolutions on
    CUDA (off: full float32); ``transforms``: none, a preset or custom steps ((kind, value),
    ...); ``prior``: its name and weight.
    """

    spec: ModelSpec | None
    module: nn.Module | None
    layer: str
    selection: int | str | tuple[int, ...]
    aggregation: str
    param: dict[str, Any]
    k: float
    size: tuple[int, int] | None
    weights: str | None = None
    cache_dir: str | None = None
    download: bool = False
    device: torch.device = torch.device("cpu")
    tf32: bool = False
    transforms: str | tuple[tuple[str, Any], ...] = "none"
    prior: dict[str, Any] = field(default_factory=lambda: {"name": "none", "weight": 0.0})

    @classmethod
    def make(cls, model: Model = "densenet_patterns", layer: str = "dense3",
             features: Features = 64, aggregation: str = "maxpool_mean", k: float = 2,
             param: Param = "rgb", *, weights: str | None = None,
             cache_dir: str | Path | None = None, download: bool = False,
             train: Mapping[str, Any] | None = None,
             size: Sequence[int] | None = None, device: str = "auto",
             tf32: bool = False, transforms: Transforms = "none",
             prior: PriorSpec = "none", keys: Mapping[str, str] | None = None) -> Setting:
        """Validate everything that needs no network; raise ``UserError`` with what is valid.

        ``model``: a zoo name (``ifv list``) or an ``nn.Module`` in eval mode; ``train``:
        recipe overrides of a zoo model (a different checkpoint); ``device``: auto, cpu,
        cuda or cuda:N (a module stays where it is: ``auto`` takes its device, another
        device must be its own); ``transforms``: none, standard (Lucid's set sized to the
        input), lucid, lucent or a list of steps ({pad: PX}, {jitter: PX}, {scale: [..]},
        {rotate: [DEG, ..]}); ``prior``: none, l2, tv, blur or {name, weight}. ``keys``:
        the options the user set for model, layer, features, weights and param, where they
        are not these (e.g. ``compare.b_layer``), which the messages then name (``KEYS``).
        """
        names = {**KEYS, **(keys or {})}
        if not isinstance(tf32, bool):
            raise UserError(f"tf32 must be true or false, got {tf32!r}")
        dev = resolve(device)
        choice("aggregation", aggregation, AGGREGATIONS)
        k = number("k", k)
        options = dict(param) if isinstance(param, Mapping) else {"name": param}
        choice("param", options.get("name"), PARAMS)
        for key, value in options.items():  # P's options are sizes and powers
            if key != "name":
                number(f"param.{key}", value)
        selection = _selection(features, names["features"])
        robust = {"transforms": _transforms(transforms), "prior": _prior(prior)}
        if size is not None:
            size = (count("size[0]", int(size[0]), 1), count("size[1]", int(size[1]), 1))
        if isinstance(model, nn.Module):
            if model.training:
                raise UserError("the model is in training mode; call model.eval() first "
                                "(samples must not interact through batch statistics)")
            own = _like(model).device
            if device != "auto" and dev != own:
                raise UserError(f"the model is on {own}, not on device {device}; move it "
                                f"with model.to({str(dev)!r}) or pass device={str(own)!r}")
            return cls(None, model, layer, selection, aggregation, options, k, size,
                       device=own, tf32=tf32, **robust)
        spec = get_spec(str(model), names["model"]).with_recipe(**dict(train or {}))
        channels = spec.layers.get(layer, 0)
        check_layer(spec, layer, channels if selection == "all" else selection,
                    layer_key=names["layer"], features_key=names["features"])
        if size is not None and size != spec.input_size:
            raise UserError(f"{spec.name} takes {spec.input_size[0]}x{spec.input_size[1]} "
                            f"inputs, got size={size}")
        if weights is not None and str(weights) != "random" and not Path(
                weights).expanduser().is_file():
            raise UserError(f"no weights file {weights} ({names['weights']} of {spec.name})")
        setting = cls(spec, None, layer, selection, aggregation, options, k, spec.input_size,
                      weights=None if weights is None else str(weights),
                      cache_dir=None if cache_dir is None else str(cache_dir),
                      download=bool(download), device=dev, tf32=tf32, **robust)
        _check_channels(setting.parametrization(), spec, names)  # P, checked before any work
        if weights is None and spec.tier == "offline" and not spec.checkpoint(cache_dir).exists():
            check_outputs(spec.checkpoint(cache_dir).parent,  # to train it
                          [p.name for p in spec.checkpoint_files(cache_dir)], "the model cache")
        return setting

    @classmethod
    def from_config(cls, cfg: Any) -> Setting:
        """The setting of a composed config (``ifv.config``): model.*, layer, features.*,
        aggregation.name, param, k, device, tf32, transforms.*, prior.*."""
        m = cfg.model
        indices = cfg.features.indices is not None
        features = cfg.features.indices if indices else cfg.features.n
        return cls.make(m.name, cfg.layer, _plain(features), cfg.aggregation.name, cfg.k,
                        _plain(cfg.param), weights=m.weights, cache_dir=m.cache_dir,
                        download=m.download, train=_plain(m.train), device=cfg.device,
                        tf32=cfg.tf32, transforms=_transforms_config(cfg.transforms),
                        prior=_plain(cfg.prior),
                        keys={"features": "features.indices" if indices else "features.n"})

    @property
    def model_name(self) -> str:
        return self.spec.name if self.spec is not None else type(self.module).__name__

    def features(self, channels: int) -> list[int]:
        """The channel indices the selection picks from a layer of ``channels``."""
        spec = self.spec or ModelSpec(name=self.model_name, tier="user", arch="user",
                                      arch_kwargs={}, input_size=(0, 0),
                                      layers={self.layer: channels})
        sel = self.selection
        return check_layer(spec, self.layer, channels if sel == "all" else
                           list(sel) if isinstance(sel, tuple) else sel)

    def parametrization(self, size: tuple[int, int] | None = None) -> Parametrization:
        """P at the input size (the setting's, else ``size``)."""
        h, w = self.size or size or (0, 0)
        if not h:
            raise UserError("a model given as nn.Module needs size=(H, W) of its input")
        opts = {k: v for k, v in self.param.items() if k != "name"}
        try:
            return make_param(self.param["name"], h, w, **opts)
        except TypeError as exc:
            raise UserError(f"invalid options for param {self.param['name']}: {exc}") from None

    def network(self, *, progress: bool = True, log: Log = print) -> nn.Module:
        """The network in eval mode on the setting's device: a zoo model is loaded (an
        offline stand-in missing from the model cache is trained first, once, on that
        device); a module is returned as given."""
        if self.module is not None:
            return self.module
        assert self.spec is not None
        spec = self.spec
        checkpoint = spec.checkpoint(self.cache_dir)
        if self.weights is None and spec.tier == "offline" and not checkpoint.exists():
            from filelock import FileLock

            from ifv.train import train

            with FileLock(f"{checkpoint}.lock"):  # one process trains, the others wait
                if not checkpoint.exists():
                    log(f"model {spec.name} is not in the model cache: training it (once)")
                    rec = train(spec, self.cache_dir, progress=progress,
                                device=str(self.device), log=log)
                    log(f"trained {spec.name} in {rec['train_seconds']:.0f} s -> "
                        f"{rec['checkpoint']}")
        return load(spec, weights=self.weights, cache_dir=self.cache_dir,
                    download=self.download).to(self.device)

    def bind(self, size: tuple[int, int] | None = None, *, progress: bool = True,
             log: Log = print) -> Bound:
        """The response N~ of this setting on its network (``size``: a module's input)."""
        p = self.parametrization(size)
        net = self.network(progress=progress, log=log)
        channels = (self.spec.layers[self.layer] if self.spec is not None
                    else _probe(net, self.layer, p))
        idx = self.features(channels)
        response = Response(net, p, self.layer, idx, self.aggregation)
        h, w = self.size or size or (0, 0)  # as parametrization() found them
        prior = (None if self.prior["name"] == "none"
                 else Prior(self.prior["name"], p, self.prior["weight"]))
        return Bound(self, net, p, response, idx, channels,
                     transform_steps(self.transforms, h, w), prior)

    def model_key(self) -> dict[str, Any]:
        """The identity of a zoo model's weights, for cache keys (a file by path, size and
        modification time)."""
        assert self.spec is not None
        weights = self.weights
        if weights and weights != "random":
            path = Path(weights).expanduser()
            stat = path.stat()
            weights = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return {"model": self.spec.name, "key": self.spec.key(), "weights": weights}


def _check_channels(p: Parametrization, spec: ModelSpec, key: Mapping[str, str]) -> None:
    """P must make the inputs the zoo model takes: as many channels (its size is the
    model's by construction)."""
    if p.channels == spec.in_channels:
        return
    h, w = spec.input_size
    fits = [n for n in PARAMS if make_param(n, h, w).channels == spec.in_channels]
    raise UserError(f"{key['param']}={p.name} makes {p.channels}-channel inputs, but "
                    f"{key['model']}={spec.name} takes {spec.in_channels}-channel ones; valid "
                    f"{key['param']} for {spec.name}: {', '.join(fits)}")


def _like(net: nn.Module) -> Tensor:
    """An empty tensor with the dtype and device of ``net``'s parameters (CPU float32 where
    it has none)."""
    p = next(iter(net.parameters()), None)
    return torch.empty(0) if p is None else p.new_empty(0)


def _probe(net: nn.Module, layer: str, param: Parametrization) -> int:
    """The channels of ``layer`` of a user's module, from one forward pass of a grey input."""
    if layer not in dict(net.named_modules()):
        names = [n for n, _ in net.named_modules() if n]
        raise UserError(f"the model has no layer {layer!r}; valid: {', '.join(names[:30])}"
                        + (" ..." if len(names) > 30 else ""))
    like = _like(net)
    v0 = torch.zeros((1, *param.shape), dtype=like.dtype, device=like.device)
    try:
        with torch.no_grad():
            a = tap(net, layer, param(v0))
    except RuntimeError as exc:
        why = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(f"the model cannot take P_{param.name}'s inputs of shape "
                        f"{tuple(param(v0).shape[1:])}: {why}") from None
    return int(a.shape[1]) if a.dim() >= 2 else 1


def _transforms_config(node: Any) -> Any:
    """transforms.name, or with name custom its transforms.steps."""
    if node.name != "custom":
        if node.steps is not None:
            raise UserError("transforms.steps needs transforms=custom")
        return str(node.name)
    if node.steps is None:
        raise UserError("transforms=custom needs transforms.steps=[{pad: PX}, {jitter: PX}, "
                        "{scale: [..]}, {rotate: [..]}]")
    return _plain(node.steps)


def _plain(node: Any) -> Any:
    """A config node as plain Python values (lists, dicts, scalars)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


@dataclass(frozen=True)
class Critical:
    """Algorithm 1's options (Sec. 2.2, 3.5): on the first ``n_jacobians`` Gram matrices,
    a rho search (``rho`` None) or one rho, with a merge ``order``."""

    search: bool = False
    n_jacobians: int = 32
    order: str = "sequential"
    rho: float | None = None


DRAWS = ("auto", "fv", "sampled")  # inversion.draws (``Robust``)


@dataclass(frozen=True)
class Robust:
    """The robust solver's options (docs/robust-ifv.md). ``draws``: the transforms that
    estimate the expectation: ``fv``, the fixed draws FV's L-BFGS averaged over
    (``ifv.fv.lbfgs_draws``, exact for realizations ifv made); ``sampled``, ``samples``
    draws of their own ``seed`` (for realizations made elsewhere); ``auto``, fv where ifv
    made the realizations with L-BFGS (``ifv run``), else sampled. ``estimator``: relative
    (the relative stationarity) or mean (Opt. (3) on the mean gradient). The fixed point on
    the weights (k > 0) stops at relative change ``tol`` or after ``max_iter`` steps;
    ``batch_size`` realizations at a time (each holds K^2 n_f^2 float64 of cross-Grams)."""

    samples: int = 32
    seed: int = 12345
    tol: float = 1e-10
    max_iter: int = 100
    batch_size: int = 8
    draws: str = "auto"
    estimator: str = "relative"

    def uses_fv_draws(self, fv: FVSettings | None) -> bool:
        """Whether the draws are FV's own: ``fv`` describes how ifv made the realizations
        (None: made elsewhere)."""
        if self.draws == "fv" and fv is None:
            raise UserError("inversion.draws=fv needs the FV settings the realizations were "
                            "made with; valid here: auto, sampled")
        return self.draws == "fv" or (self.draws == "auto" and fv is not None
                                      and fv.lbfgs_steps > 0)

    def record(self, transformed: bool, fv: FVSettings | None) -> dict[str, Any]:
        """The results' inversion_* columns (``ifv.results.RUN``) for realizations made with
        (``transformed``) or without transforms; ``fv`` as in ``uses_fv_draws``."""
        if not transformed:
            return {"inversion_samples": 1, "inversion_draws": "none",
                    "inversion_estimator": "mean"}
        draws, n, _ = self.source(fv, 0)
        return {"inversion_samples": n, "inversion_draws": draws,
                "inversion_estimator": self.estimator}

    def options(self, transformed: bool, fv: FVSettings | None) -> dict[str, Any]:
        """``record`` without the column prefix (samples, draws, estimator): what the JSON
        of ``ifv invert`` and the summary of ``ifv compare`` record under "inversion"."""
        return {key.removeprefix("inversion_"): value
                for key, value in self.record(transformed, fv).items()}

    def source(self, fv: FVSettings | None, seed: int) -> tuple[str, int, int]:
        """The transform draws used, as (draws, K, seed): ("fv", fv.transform_samples, the
        run's ``seed``) for FV's own draws, else ("sampled", samples, self.seed)."""
        if self.uses_fv_draws(fv):
            return "fv", fv.transform_samples, seed  # type: ignore[union-attr]
        return "sampled", self.samples, self.seed

    @classmethod
    def from_config(cls, c: Any) -> Robust:
        """``inversion.*`` of a composed config."""
        return cls(samples=count("inversion.samples", c.samples, 1),
                   seed=count("inversion.seed", c.seed),
                   tol=number("inversion.tol", c.tol),
                   max_iter=count("inversion.max_iter", c.max_iter, 1),
                   batch_size=count("inversion.batch_size", c.batch_size, 1),
                   draws=choice("inversion.draws", c.draws, DRAWS),
                   estimator=choice("inversion.estimator", c.estimator, ESTIMATORS))


@dataclass(frozen=True)
class Experiment:
    """Everything one ``ifv run`` depends on: the setting and the run's sizes.

    ``reopt`` is FV without L-BFGS from the realizations (Sec. 3.4); ``stable_ssim``: a
    sample whose SSIM under its own target drops below it is unstable (Supp. S4);
    ``jacobian_batch``: samples per stored part of the Jacobian stage (each part is cut
    into chunks that fit ``jacobian_max_bytes``).
    """

    name: str
    setting: Setting
    n_random: int
    n_canonical: int
    fv: FVSettings
    reopt: FVSettings
    stable_ssim: float
    seed: int
    jacobian_method: str = "auto"
    jacobian_max_bytes: int = 1 << 30
    jacobian_batch: int = 32
    critical: Critical = field(default_factory=Critical)
    robust: Robust = field(default_factory=Robust)
    kinks: Kinks = field(default_factory=Kinks)

    @property
    def n_f(self) -> int:
        return len(self.features)

    @property
    def features(self) -> list[int]:
        s = self.setting
        assert s.spec is not None
        return s.features(s.spec.layers[s.layer])

    @classmethod
    def from_config(cls, cfg: Any) -> Experiment:
        """Validate a composed config (``ifv.config.compose``) into an ``Experiment``;
        loads nothing."""
        setting = Setting.from_config(cfg)
        n_f = len(setting.features(setting.spec.layers[setting.layer]))  # type: ignore[union-attr]
        n_total = count("sampling.n_total", cfg.sampling.n_total, 1)
        n_canonical = _n_canonical(cfg.sampling.canonical, n_total, n_f)
        r = cfg.reopt
        fv = fv_settings(cfg.fv)
        reopt = FVSettings(adam_steps=count("reopt.steps", r.steps),
                           adam_lr=number("reopt.lr", r.lr, strict=True), lbfgs_steps=0,
                           batch_size=count("reopt.batch_size", r.batch_size, 1),
                           prior_ramp=0.0, prior_delay=0.0)  # from a realization: full weight
        c = cfg.critical
        rho = c.rho
        if rho is not None and not (number("critical.rho", rho) and 0 < rho < 1):
            raise UserError(f"critical.rho must be in (0, 1) or null (search), got {rho!r}")
        order = str(c.order)
        if order not in ORDERS[:2] and not order.startswith("random:"):
            raise UserError(f"unknown critical.order {order!r}; valid: {', '.join(ORDERS)}")
        critical = Critical(search=bool(c.search),
                            n_jacobians=count("critical.n_jacobians", c.n_jacobians, 2),
                            order=order, rho=None if rho is None else float(rho))
        return cls(name=str(cfg.name), setting=setting, n_random=n_total - n_canonical,
                   n_canonical=n_canonical, fv=fv, reopt=reopt,
                   stable_ssim=number("reopt.stable_ssim", r.stable_ssim),
                   seed=count("seed", cfg.seed),
                   jacobian_method=choice("jacobian.method", cfg.jacobian.method, METHODS),
                   jacobian_max_bytes=count("jacobian.max_bytes", cfg.jacobian.max_bytes, 1),
                   jacobian_batch=count("jacobian.batch_size", cfg.jacobian.batch_size, 1),
                   critical=critical, robust=Robust.from_config(cfg.inversion),
                   kinks=kinks_options(cfg.kinks))


def kinks_options(c: Any) -> Kinks:
    """``kinks.*`` of a composed config (``ifv.kink.Kinks``)."""
    rho = number("kinks.rho", c.rho, strict=True)
    if rho >= 1:
        raise UserError(f"kinks.rho must be a number in (0, 1), got {c.rho!r}")
    return Kinks(samples=count("kinks.samples", c.samples),
                 sigma=number("kinks.sigma", c.sigma, strict=True), rho=rho,
                 seed=count("kinks.seed", c.seed), rows=count("kinks.rows", c.rows, 1))


def fv_settings(f: Any) -> FVSettings:
    """``fv.*`` of a composed config."""
    return FVSettings(adam_steps=count("fv.adam_steps", f.adam_steps),
                      adam_lr=number("fv.adam_lr", f.adam_lr, strict=True),
                      lbfgs_steps=count("fv.lbfgs_steps", f.lbfgs_steps),
                      history=count("fv.history", f.history, 1),
                      tol=number("fv.tol", f.tol),
                      batch_size=count("fv.batch_size", f.batch_size, 1),
                      transform_samples=count("fv.transform_samples", f.transform_samples, 1),
                      prior_delay=share("fv.prior_delay", f.prior_delay),
                      prior_ramp=number("fv.prior_ramp", f.prior_ramp),
                      adam_average=share("fv.adam_average", f.adam_average))


def _n_canonical(canonical: Any, n_total: int, n_f: int) -> int:
    """Canonical targets among ``n_total``: ``half``, ``all`` (each e_i once) or a number."""
    if canonical == "half":
        return n_total // 2
    if canonical == "all":
        n = n_f
    elif isinstance(canonical, int) and not isinstance(canonical, bool) and canonical >= 0:
        n = canonical
    else:
        raise UserError(f"sampling.canonical must be half, all or a number >= 0, got "
                        f"{canonical!r}")
    if n > n_total:
        raise UserError(f"{n} canonical targets do not fit in sampling.n_total={n_total}")
    return n

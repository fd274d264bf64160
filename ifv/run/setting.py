"""One validated setting: a network, its tapped layer and features, the aggregation, the
parametrization P and the power k of S_x (Sec. 2), and the sizes of a run (Sec. 3.2, 3.4).

``Setting`` is what ``ifv run``, ``ifv invert``, ``ifv.visualize`` and ``ifv.invert`` share:
it checks every value once, with one message each, and ``Setting.bind`` turns it into the
response N~ = Agg o N o P. An offline stand-in missing from the model cache is trained
there, once, with a progress bar, wherever it is asked for (the one provisioning policy).
``Experiment`` adds what ``ifv run`` needs beyond the setting: targets, FV and
re-optimization sizes, Algorithm 1's options, the seed.

FV as Lucid and Lucent run it is part of the setting, since the inversion must know it:
``transforms`` (none, a preset of ``ifv.math.transform.PRESETS`` or a list of steps) and a
``prior`` (``ifv.math.prior.PRIORS`` with its weight). Each domain parses and validates its
own values (``ifv.math.transform.parse``, ``ifv.math.prior.parse``,
``FVSettings.from_config``, ``Robust.from_config``, ``Kinks.from_config``); this module
composes them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ifv.device import resolve
from ifv.errors import UserError
from ifv.math import prior as priors
from ifv.math import transform as transforms_
from ifv.math.fv import FVSettings, lbfgs_draws, settings_key
from ifv.math.jacobian import METHODS
from ifv.math.kink import Kinks
from ifv.math.objective import (
    AGGREGATIONS,
    Response,
    ResponseFn,
    aggregations_for,
    responses_under,
)
from ifv.math.param import IMAGE_PARAMS, PARAMS, Parametrization, make_param
from ifv.math.prior import Prior
from ifv.math.robust import Robust
from ifv.math.transform import Transform
from ifv.validate import choice, count, number, plain
from ifv.zoo import check_layer
from ifv.zoo.provision import check_network, check_trainable, network
from ifv.zoo.registry import ModelSpec, model_entry
from ifv.zoo.sources import close, content, layers, probe

Model = str | Mapping[str, Any] | nn.Module  # a zoo name, a source, a _target_, a module
Features = int | str | Sequence[int]
Param = str | Mapping[str, Any]
Transforms = str | Sequence[Mapping[str, Any]]
PriorSpec = str | Mapping[str, Any]
Log = Callable[[str], None]

CANONICAL = ("half", "all")
# the options a setting's messages name by default (``Setting.make``'s ``keys``)
KEYS = {"model": "model", "layer": "layer", "features": "features",
        "weights": "model.weights", "param": "param"}
ORDERS = ("sequential", "pairwise", "random:SEED")


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
        (``ifv.math.fv.settings_key``) and, for robust FV only, the transforms and the prior, so
        that the bare case keeps its entries."""
        key: dict[str, Any] = {"fv": settings_key(fv, self.transform is not None,
                                                  self.prior is not None)}
        if self.robust:
            key |= {"transforms": transforms_.describe(self.setting.transforms),
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
             prior: PriorSpec = "none", keys: Mapping[str, str] | None = None,
             input_size: Sequence[int] | None = None, normalize: Any = None,
             weights_key: str | None = None) -> Setting:
        """Validate everything that needs no network; raise ``UserError`` with what is valid.

        ``model``: a zoo name (``ifv list``), your own network (``torchvision:NAME``,
        ``timm:NAME``, or {"_target_": "pkg.module.callable", "args": {...}}, with
        ``weights`` a file, ``weights_key`` the key of its state dict in a checkpoint,
        ``input_size`` [C, H, W] and ``normalize``: imagenet, cifar10, none or {mean, std};
        ``ifv.zoo.sources``), or an ``nn.Module`` in eval mode; ``train``:
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
        for key, value in options.items():  # P's options are sizes, powers and channels
            if key == "channels":
                count("param.channels", value, 1)
            elif key != "name":
                number(f"param.{key}", value)
        selection = _selection(features, names["features"])
        robust = {"transforms": transforms_.parse(transforms), "prior": priors.parse(prior)}
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
        spec = model_entry(model, input_size=input_size, normalize=normalize,
                           weights_key=weights_key, key=names["model"])
        if train:
            if not spec.trainable:
                raise UserError(f"model.train is for the zoo models ifv trains, not "
                                f"{spec.name}")
            spec = spec.with_recipe(**dict(train))
        channels = spec.layers.get(layer, 0)
        check_layer(spec, layer, channels if selection == "all" else selection,
                    layer_key=names["layer"], features_key=names["features"])
        _check_aggregation(spec, layer, aggregation, names["layer"])
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
        check_trainable(spec, weights, cache_dir)
        return setting

    @classmethod
    def from_config(cls, cfg: Any) -> Setting:
        """The setting of a composed config (``ifv.faces.config``): model.*, layer, features.*,
        aggregation.name, param, k, device, tf32, transforms.*, prior.*."""
        indices = cfg.features.indices is not None
        features = cfg.features.indices if indices else cfg.features.n
        return cls.make(layer=cfg.layer, features=plain(features),
                        aggregation=cfg.aggregation.name, k=cfg.k, param=plain(cfg.param),
                        device=cfg.device, tf32=cfg.tf32,
                        transforms=transforms_.from_config(cfg.transforms),
                        prior=plain(cfg.prior),
                        keys={"features": "features.indices" if indices else "features.n"},
                        **model_options(cfg.model))

    @property
    def in_channels(self) -> int:
        """The channels of the network's input (a module's: P's ``channels`` option, else
        3)."""
        if self.spec is not None:
            return self.spec.in_channels
        return int(self.param.get("channels", 3))

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
        if self.spec is not None and self.spec.source is not None \
                and self.param["name"] in IMAGE_PARAMS:
            opts.setdefault("channels", self.spec.in_channels)  # e.g. 1: a grayscale network
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
        return network(self.spec, weights=self.weights, cache_dir=self.cache_dir,
                       download=self.download, device=self.device, progress=progress, log=log)

    def check_network(self) -> None:
        """Raise the ``UserError`` that loading the network would, before any work
        (``ifv.zoo.provision.check_network``; a module is there already)."""
        if self.spec is not None:
            check_network(self.spec, self.weights, self.cache_dir, self.download)

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
                     transforms_.build(self.transforms, h, w), prior)

    def model_key(self) -> dict[str, Any]:
        """The identity of the network and its weights, for cache keys: the zoo entry or
        your network's source (``ModelSpec.key``) and the weights by the SHA-256 of their
        file's content (``ifv.zoo.sources.content``): the file given, else the default one
        (a zoo model's checkpoint, a pretrained source's hub file), so that two files never
        share a stage and a retrained checkpoint is never read stale. Call it once the
        network is loaded (``bind``): an offline stand-in's checkpoint exists from then."""
        assert self.spec is not None
        weights = self.weights
        if weights and weights != "random":
            weights = f"sha256:{content(weights)}"
        elif weights is None and (self.spec.source is None or self.spec.weights_source):
            weights = f"sha256:{content(self.spec.weights_file(self.cache_dir))}"
        elif weights is None:
            weights = f"{self.spec.source.kind}-pretrained"
        return {"model": self.spec.name, "key": self.spec.key(), "weights": weights}


def model_options(m: Any) -> dict[str, Any]:
    """The keyword arguments of ``Setting.make`` that a ``model.*`` config node gives: the
    model (a zoo name, a source, or your ``_target_`` with its ``args``) and its weights,
    cache, recipe overrides, input and normalization."""
    model = {"_target_": m._target_, "args": plain(m.args)} if m._target_ else m.name
    return {"model": model, "weights": m.weights, "cache_dir": m.cache_dir,
            "download": m.download, "train": plain(m.train),
            "input_size": plain(m.input_size), "normalize": plain(m.normalize),
            "weights_key": m.weights_key}


def _check_aggregation(spec: ModelSpec, layer: str, aggregation: str, key: str) -> None:
    """A user's network's tap must give what the aggregation reads: (C,) or (C, H, W) per
    sample (``aggregations_for``); its shape is known from the probe of its layers."""
    if spec.source is None:
        return
    shape = layers(spec.source, (spec.in_channels, *spec.input_size))[layer]
    fits = aggregations_for(shape)
    if aggregation not in fits:
        raise UserError(f"{key}={layer} gives {list(shape)} per sample; aggregation="
                        f"{aggregation} needs " + ("(C,) or (C, H, W)" if not fits else
                                                   f"one of: {', '.join(fits)}")
                        + f" (ifv layers model={spec.name} shows what fits each layer)")


def _check_channels(p: Parametrization, spec: ModelSpec, key: Mapping[str, str]) -> None:
    """P must make the inputs the zoo model takes: as many channels (its size is the
    model's by construction)."""
    if p.channels == spec.in_channels:
        return
    h, w = spec.input_size
    own = spec.source is not None  # a user's network: image parametrizations take its channels
    fits = [n for n in PARAMS if make_param(
        n, h, w, **({"channels": spec.in_channels} if own and n in IMAGE_PARAMS else {})
    ).channels == spec.in_channels]
    raise UserError(f"{key['param']}={p.name} makes {p.channels}-channel inputs, but "
                    f"{key['model']}={spec.name} takes {spec.in_channels}-channel ones; valid "
                    f"{key['param']} for {spec.name}: {', '.join(fits)}")


def _like(net: nn.Module) -> Tensor:
    """An empty tensor with the dtype and device of ``net``'s parameters (CPU float32 where
    it has none)."""
    p = next(iter(net.parameters()), None)
    return torch.empty(0) if p is None else p.new_empty(0)


def _probe(net: nn.Module, layer: str, param: Parametrization) -> int:
    """The channels of ``layer`` of a user's module, from one forward pass of a grey input
    of P's shape (``ifv.zoo.sources.probe``)."""
    like = _like(net)
    v0 = torch.zeros((1, *param.shape), dtype=like.dtype, device=like.device)
    shape = tuple(param(v0).shape[1:])
    shapes = probe(net, shape, f"the model (P_{param.name})")  # type: ignore[arg-type]
    if layer not in shapes:
        raise UserError(f"the model has no layer {layer!r}: "
                        f"{close(layer, list(shapes), 'layer')}")
    return int(shapes[layer][0])


@dataclass(frozen=True)
class Critical:
    """Algorithm 1's options (Sec. 2.2, 3.5): on the first ``n_jacobians`` Gram matrices,
    a rho search (``rho`` None) or one rho, with a merge ``order``."""

    search: bool = False
    n_jacobians: int = 32
    order: str = "sequential"
    rho: float | None = None


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
        """Validate a composed config (``ifv.faces.config.compose``) into an ``Experiment``;
        loads nothing."""
        setting = Setting.from_config(cfg)
        n_f = len(setting.features(setting.spec.layers[setting.layer]))  # type: ignore[union-attr]
        n_total = count("sampling.n_total", cfg.sampling.n_total, 1)
        n_canonical = _n_canonical(cfg.sampling.canonical, n_total, n_f)
        r = cfg.reopt
        fv = FVSettings.from_config(cfg.fv)
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
                   kinks=Kinks.from_config(cfg.kinks))


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

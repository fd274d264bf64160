"""The model zoo: every network by name, its tier, its tappable layers, its training recipe.

Offline-tier models are trained here by ``ifv train`` on data the project generates; their
checkpoints live in the model cache under a name that includes a hash of the architecture
and recipe, so that changing the recipe never loads a stale checkpoint.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ifv.errors import UserError
from ifv.files import Refused, content_key, default_cache_dir, load_tensors
from ifv.zoo.models import googlenet as _gn
from ifv.zoo.models.densenet import DenseNetBC, block_channels
from ifv.zoo.models.googlenet import GoogLeNetFV
from ifv.zoo.models.resnet import CifarResNet, stage_channels
from ifv.zoo.models.srnet import IN_CHANNELS as SR_IN_CHANNELS
from ifv.zoo.models.srnet import SRNet, SRRecipe, srnet_layers
from ifv.zoo.sources import (
    Normalize,
    Source,
    close,
    defaults,
    input_shape,
    layers,
    normalization,
    parse,
)

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "densenet_bc": DenseNetBC, "googlenet": GoogLeNetFV, "resnet_cifar": CifarResNet,
    "srnet": SRNet}


@dataclass(frozen=True)
class Recipe:
    """How a zoo model is trained (Sec. 3.1: SGD with Nesterov momentum and weight decay)."""

    dataset: str = "patterns"
    n_train: int = 8000
    n_test: int = 2000
    exclude_classes: tuple[int, ...] = ()
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    pad_crop: int = 4
    flip: bool = False
    seed: int = 0
    # weight decay of the classifier's weight matrix alone (None: weight_decay); see
    # ifv.zoo.train.classifier_structure for why the classifier's decay matters (Sec. 3.5)
    classifier_weight_decay: float | None = None
    # learning-rate schedule: "onecycle" (short CPU runs) or "step" (Huang et al. 2017:
    # lr/10 at 50% and 75% of the epochs, the paper's DenseNet recipe)
    schedule: str = "onecycle"


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry. ``layers`` maps each tappable layer to its channel count."""

    name: str
    tier: str
    arch: str
    arch_kwargs: dict[str, Any]
    input_size: tuple[int, int]
    layers: dict[str, int]
    recipe: Recipe = field(default_factory=Recipe)
    description: str = ""
    # pretrained weights not trained by ifv, e.g. "torchvision:GoogLeNet_Weights.IMAGENET1K_V1"
    # (the file in the torch hub cache); None: trained by `ifv train` into the model cache
    weights_source: str | None = None
    # (mean, std) per channel, applied inside the network to its [0, 1] input; None: none
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # the child module that computes the logits (zero-initialized by `ifv train`)
    classifier: str = "classifier"
    # a user's network (tier "user", ``model_entry``): where it comes from, its input
    # channels and the key of the state dict inside its checkpoint
    source: Source | None = None
    channels: int | None = None
    weights_key: str | None = None

    @property
    def trainable(self) -> bool:
        """Whether ``ifv train`` makes this model's weights."""
        return self.weights_source is None and self.source is None

    @property
    def architecture(self) -> type[nn.Module]:
        """The class that builds this network."""
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture {self.arch!r}; valid: "
                            f"{', '.join(ARCHITECTURES)}")
        return ARCHITECTURES[self.arch]

    def build(self) -> nn.Module:
        """A freshly initialized network of this architecture (a user's network with its
        normalization as a forward pre-hook)."""
        if self.source is not None:
            net = self.source.build()
            if self.normalize is not None:
                net.register_forward_pre_hook(Normalize(*self.normalize))
            return net
        if self.arch == "googlenet":
            return GoogLeNetFV(**self.arch_kwargs, normalize=self.normalize)
        return self.architecture(**self.arch_kwargs)

    def key(self) -> str:
        """Hash of the architecture and the recipe: the checkpoint's identity (a user's
        network: its source, input and normalization; its weights are keyed by content,
        ``ifv.zoo.sources.content``)."""
        if self.source is not None:
            return content_key({**self.source.identity(),
                                "input": [self.in_channels, *self.input_size],
                                "normalize": self.normalize,
                                "weights_key": self.weights_key}, 10)
        ident: dict[str, Any] = {"arch": self.arch, "kwargs": self.arch_kwargs,
                                 "recipe": asdict(self.recipe),
                                 "input_size": list(self.input_size)}
        if self.weights_source is not None:
            ident["weights"] = self.weights_source
        if self.normalize is not None:
            ident["normalize"] = self.normalize
        return content_key(ident, 10)

    def checkpoint(self, cache_dir: str | Path | None = None) -> Path:
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        return base / "models" / f"{self.name}-{self.key()}.pt"

    def checkpoint_files(self, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
        """What ``ifv train`` writes: the checkpoint and its record (.json) beside it."""
        path = self.checkpoint(cache_dir)
        return path, path.with_suffix(".json")

    @property
    def in_channels(self) -> int:
        """The channels of the network's input: a user's network's, SRNet's geometry
        images (mask, normal, depth), else RGB images."""
        if self.channels is not None:
            return self.channels
        if self.arch == "srnet":
            return int(self.arch_kwargs.get("in_channels", SR_IN_CHANNELS))
        return 3

    def weights_file(self, cache_dir: str | Path | None = None) -> Path:
        """The file ``load`` reads by default: the hub-cache file of a pretrained source,
        else the checkpoint ``ifv train`` writes."""
        if self.weights_source is None:
            return self.checkpoint(cache_dir)
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(_source_url(self)).name

    def with_recipe(self, **changes: Any) -> ModelSpec:
        """The same model with some recipe fields changed (e.g. epochs)."""
        unknown = set(changes) - set(asdict(self.recipe))
        if unknown:
            raise UserError(f"unknown training option(s) {sorted(unknown)}; valid: "
                            f"{', '.join(asdict(self.recipe))}")
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        defaults = {f.name: f.default for f in fields(self.recipe)}
        for key, value in changes.items():
            if not _fits(value, defaults[key]):
                raise UserError(f"model.train.{key} must be of the kind of its default "
                                f"{defaults[key]!r}, got {value!r}")
        return replace(self, recipe=replace(self.recipe, **changes))


def _fits(value: Any, default: Any) -> bool:
    """Whether ``value`` can stand for a recipe field whose default is ``default`` (a number
    for a float or None, else the default's own type; booleans only for booleans)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if default is None:  # an optional number
        return value is None or isinstance(value, int | float)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _densenet_layers(depth: int, growth: int, num_classes: int = 10) -> dict[str, int]:
    names = ("conv0", "dense1", "trans1", "dense2", "trans2", "dense3")
    ch = block_channels(depth, growth)
    return {**dict(zip(names, ch, strict=True)), "pool": ch[-1], "classifier": num_classes}


# The DenseNet stand-ins: DenseNet-BC-22 with the paper's ReLU; the _softplus variants swap
# every ReLU for Softplus (beta = 4), a smooth network for comparison (docs/stand-ins.md).
_OFFLINE_DN = {"depth": 22, "growth": 12, "num_classes": 10}
_SMOOTH_DN = {**_OFFLINE_DN, "activation": "softplus"}

# The GoogLeNet stand-in: torchvision's GoogLeNet (ReLU, max pooling, inception4c as it is)
# on the pattern classes at 64 px, 6000 images x 3 epochs, at learning rate 0.001: a higher
# one collapses inception4c's 512 channels onto a few input directions within an epoch, a
# network unlike GoogLeNet on ImageNet (docs/stand-ins.md). The _softplus variant is smooth:
# Softplus, average pooling, inception4c tapped before its activation.
_GN_OFFLINE_SIZE = 64
_GN_OFFLINE_RECIPE = Recipe(n_train=6000, epochs=3, lr=0.001)
_OFFLINE_GN = {"num_classes": 10, "init_weights": True}
_SMOOTH_GN = {**_OFFLINE_GN, "activation": "softplus", "pool": "avg",
              "preactivation": ["inception4c"]}

# The classifier's weight matrix is decayed strongly (the rest at 1e-4) so that the Ex4
# network's class-4 row dies within 3 epochs, as the critical-space experiment (Sec. 3.5)
# needs. DNcl gets the same recipe, so that the pair differs only in the class-4 data, as in
# the paper. Measurements: docs/stand-ins.md.
_OFFLINE_DN_RECIPE = Recipe(classifier_weight_decay=0.5)

# Huang et al. 2017 / Sec. 3.1: SGD with Nesterov momentum 0.9, batch 64, weight decay 1e-4,
# 300 epochs, lr 0.1 divided by 10 at 50% and 75% of the epochs, random horizontal flips,
# 4-pixel zero padding and random 32x32 crops; all 50000 training and 10000 test images.
_CIFAR_RECIPE = Recipe(dataset="cifar10", n_train=50000, n_test=10000, epochs=300,
                       batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4, pad_crop=4,
                       flip=True, schedule="step")

# The paper-sized stand-ins (scale=paper): the paper's widths at the tapped layers, with the
# architectures and recipes of the small ones (the classifier decay of the DenseNet pair):
# DenseNet-BC-100 (342 channels at dense3) at 32 px
# and GoogLeNet at 224 px (512 at inception4c), both on the pattern classes rendered at
# their size. For a GPU: on 2 CPU cores `ifv train` takes tens of minutes (its bar shows
# the estimate).
_OFFLINE_DN100 = {**_OFFLINE_DN, "depth": 100}

# Networks trained here on real CIFAR-10 (tier "real"), as they are: ReLU, the layers a user
# taps. A schedule that 2 CPU cores run in about an hour each (one-cycle SGD with Nesterov
# momentum, flips and 4-pixel pad-and-crop, all 50000 training images; 20 epochs for
# ResNet-20, 15 for the slower DenseNet); the data come from
# model.data.root (an ImageFolder folder or zip, or the python version).
_REAL_RECIPE = Recipe(dataset="cifar10", n_train=50000, n_test=10000, epochs=20,
                      batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, pad_crop=4,
                      flip=True, schedule="onecycle")


def _resnet_layers(width: int = 16, num_classes: int = 10) -> dict[str, int]:
    names = ("stem", "layer1", "layer2", "layer3")
    ch = stage_channels(width)
    return {**dict(zip(names, ch, strict=True)), "pool": ch[-1], "classifier": num_classes}


_SR_OFFLINE = {"channels": 64, "blocks": 10, "up_channels": 16}
_SR_PAPER = {"channels": 64, "blocks": 10, "up_channels": 64}

MODELS: dict[str, ModelSpec] = {
    "densenet_patterns": ModelSpec(
        name="densenet_patterns",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_OFFLINE_DN,
        input_size=(32, 32),
        layers=_densenet_layers(22, 12),
        recipe=_OFFLINE_DN_RECIPE,
        description="DenseNet-BC depth 22 (ReLU) on the 10 procedural pattern classes "
                    "(stand-in for DenseNet-BC-100 on CIFAR-10)",
    ),
    "densenet_patterns_softplus": ModelSpec(
        name="densenet_patterns_softplus",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_SMOOTH_DN,
        input_size=(32, 32),
        layers=_densenet_layers(22, 12),
        recipe=_OFFLINE_DN_RECIPE,
        description="densenet_patterns with Softplus (beta = 4) for every ReLU: a smooth "
                    "network",
    ),
    "densenet_patterns_ex4": ModelSpec(
        name="densenet_patterns_ex4",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_OFFLINE_DN,
        input_size=(32, 32),
        layers=_densenet_layers(22, 12),
        recipe=replace(_OFFLINE_DN_RECIPE, exclude_classes=(4,)),
        description="the same, never shown class 4 (stand-in for DenseNetEx4)",
    ),
    "densenet_patterns_ex4_softplus": ModelSpec(
        name="densenet_patterns_ex4_softplus",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_SMOOTH_DN,
        input_size=(32, 32),
        layers=_densenet_layers(22, 12),
        recipe=replace(_OFFLINE_DN_RECIPE, exclude_classes=(4,)),
        description="densenet_patterns_ex4 with Softplus for every ReLU: a smooth network",
    ),
    "googlenet_patterns": ModelSpec(
        name="googlenet_patterns",
        tier="offline",
        arch="googlenet",
        arch_kwargs=_OFFLINE_GN,
        input_size=(_GN_OFFLINE_SIZE, _GN_OFFLINE_SIZE),
        layers=_gn.layers(10),
        recipe=_GN_OFFLINE_RECIPE,
        classifier="fc",
        description=f"torchvision's GoogLeNet (ReLU, max pooling) on the 10 pattern "
                    f"classes at {_GN_OFFLINE_SIZE}x{_GN_OFFLINE_SIZE} (stand-in for "
                    "GoogLeNet on ImageNet)",
    ),
    "googlenet_patterns_softplus": ModelSpec(
        name="googlenet_patterns_softplus",
        tier="offline",
        arch="googlenet",
        arch_kwargs=_SMOOTH_GN,
        input_size=(_GN_OFFLINE_SIZE, _GN_OFFLINE_SIZE),
        layers=_gn.layers(10),
        recipe=_GN_OFFLINE_RECIPE,
        classifier="fc",
        description="googlenet_patterns made smooth: Softplus, average pooling, inception4c "
                    "tapped before its activation",
    ),
    "densenet_patterns_bc100": ModelSpec(
        name="densenet_patterns_bc100",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_OFFLINE_DN100,
        input_size=(32, 32),
        layers=_densenet_layers(100, 12),
        recipe=_OFFLINE_DN_RECIPE,
        description="paper-sized stand-in (scale=paper): DenseNet-BC-100 (342 channels at "
                    "dense3) with densenet_patterns' recipe, for a GPU",
    ),
    "densenet_patterns_bc100_ex4": ModelSpec(
        name="densenet_patterns_bc100_ex4",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_OFFLINE_DN100,
        input_size=(32, 32),
        layers=_densenet_layers(100, 12),
        recipe=replace(_OFFLINE_DN_RECIPE, exclude_classes=(4,)),
        description="the same, never shown class 4 (paper-sized stand-in for DenseNetEx4)",
    ),
    "googlenet_patterns_224": ModelSpec(
        name="googlenet_patterns_224",
        tier="offline",
        arch="googlenet",
        arch_kwargs=_OFFLINE_GN,
        input_size=(224, 224),
        layers=_gn.layers(10),
        recipe=_GN_OFFLINE_RECIPE,
        classifier="fc",
        description="paper-sized stand-in (scale=paper): googlenet_patterns at 224x224 (512 "
                    "channels at inception4c, 14x14 maps), for a GPU",
    ),
    "googlenet": ModelSpec(
        name="googlenet",
        tier="paper",
        arch="googlenet",
        arch_kwargs={"num_classes": 1000, "init_weights": False},
        input_size=(224, 224),
        layers=_gn.layers(1000),
        weights_source="torchvision:GoogLeNet_Weights.IMAGENET1K_V1",
        normalize=_gn.IMAGENET_V1_NORMALIZE,
        classifier="fc",
        description="GoogLeNet with torchvision's ImageNet weights (IMAGENET1K_V1, from the "
                    "torch hub cache; model.download=true fetches them)",
    ),
    "densenet_cifar": ModelSpec(
        name="densenet_cifar",
        tier="paper",
        arch="densenet_bc",
        arch_kwargs={"depth": 100, "growth": 12, "num_classes": 10},
        input_size=(32, 32),
        layers=_densenet_layers(100, 12),
        recipe=_CIFAR_RECIPE,
        description="DenseNet-BC-100 (k=12, 0.8M weights) trained on CIFAR-10 by `ifv train` "
                    "(Sec. 3.1 recipe: 300 epochs, for a GPU)",
    ),
    "densenet_cifar_ex4": ModelSpec(
        name="densenet_cifar_ex4",
        tier="paper",
        arch="densenet_bc",
        arch_kwargs={"depth": 100, "growth": 12, "num_classes": 10},
        input_size=(32, 32),
        layers=_densenet_layers(100, 12),
        recipe=replace(_CIFAR_RECIPE, exclude_classes=(4,)),
        description="the same, every training image of class 4 dropped (DenseNetEx4)",
    ),
    "resnet20_cifar": ModelSpec(
        name="resnet20_cifar",
        tier="real",
        arch="resnet_cifar",
        arch_kwargs={"depth": 20, "num_classes": 10},
        input_size=(32, 32),
        layers=_resnet_layers(),
        recipe=_REAL_RECIPE,
        description="ResNet-20 (He et al. 2016, ReLU, 0.27M weights) trained on real "
                    "CIFAR-10 by `ifv train` (about an hour on 2 CPU cores)",
    ),
    "densenet22_cifar": ModelSpec(
        name="densenet22_cifar",
        tier="real",
        arch="densenet_bc",
        arch_kwargs={"depth": 22, "growth": 12, "num_classes": 10},
        input_size=(32, 32),
        layers=_densenet_layers(22, 12),
        recipe=replace(_REAL_RECIPE, epochs=15),
        description="DenseNet-BC-22 (k=12, ReLU, the paper's architecture at depth 22) "
                    "trained on real CIFAR-10 by `ifv train` (about 1.5 h on 2 CPU cores)",
    ),
    # SRNet (Weiss et al. 2019): 10 residual blocks of 64 filters as in FRVSR's SRNet; the
    # offline stand-in keeps them (so block8 has the paper's 64 filters) and narrows only
    # the layers at 2x and 4x resolution, which dominate the CPU time (docs/stand-ins.md)
    "srnet_geometry": ModelSpec(
        name="srnet_geometry",
        tier="offline",
        arch="srnet",
        arch_kwargs=_SR_OFFLINE,
        input_size=(32, 32),
        layers=srnet_layers(**_SR_OFFLINE),
        recipe=SRRecipe(),
        description="SRNet (10 residual blocks of 64, 16-channel upsampling path) trained on "
                    "procedural isosurface geometry images, 32x32 -> 128x128 (stand-in for "
                    "Weiss et al.'s SRNet)",
    ),
    "srnet": ModelSpec(
        name="srnet",
        tier="paper",
        arch="srnet",
        arch_kwargs=_SR_PAPER,
        input_size=(128, 128),
        layers=srnet_layers(**_SR_PAPER),
        recipe=SRRecipe(low=128, crop=32),
        description="SRNet of Weiss et al. 2019 at 128x128 (10 residual blocks of 64); its "
                    "weights are not public: only model.weights=PATH",
    ),
}


def get_spec(name: str, key: str = "model") -> ModelSpec:
    """The zoo entry called ``name`` (``key``: the option the user set, for the message)."""
    if name not in MODELS:
        raise UserError(f"unknown {key} {name!r}; valid: {', '.join(MODELS)}, or your own "
                        "network: torchvision:NAME, timm:NAME, onnx:PATH, tflite:PATH, "
                        "model._target_=PATH")
    return MODELS[name]


def model_entry(model: str | Mapping[str, Any], *, input_size: Any = None,
                normalize: Any = None, weights_key: str | None = None,
                name: str | None = None, key: str = "model") -> ModelSpec:
    """The entry of a ``model`` value: a zoo name (``get_spec``), or a user's network
    (``torchvision:NAME``, ``timm:NAME``, or a mapping with ``_target_`` and ``args``) as an
    entry of tier "user" whose layers are found by one forward pass
    (``ifv.zoo.sources.layers``).
    ``input_size`` [C, H, W] and ``normalize`` default to what the source's weights say
    (torchvision, timm); a ``_target_`` needs ``input_size``. ``name``: the label results
    carry (default: the source)."""
    source = parse(model)
    if source is None:
        if input_size is not None or normalize is not None or weights_key is not None:
            given = [k for k, v in (("input_size", input_size), ("normalize", normalize),
                                    ("weights_key", weights_key)) if v is not None]
            raise UserError(f"{key}.{given[0]} is for your own network (torchvision:NAME, "
                            f"timm:NAME, model._target_); zoo model {model!r} fixes it")
        return get_spec(str(model), key)
    tv_weights, stats, shape = defaults(source)
    shape = input_shape(input_size, f"{key}.input_size") or shape
    if shape is None:
        raise UserError(f"{key}._target_ {source.ref!r} needs its input: pass "
                        f"{key}.input_size=[C, H, W] (e.g. [3, 32, 32])")
    stats = stats if normalize is None else normalization(normalize,
                                                                   f"{key}.normalize")
    if stats is not None and len(stats[0]) != shape[0]:
        raise UserError(f"{key}.normalize has {len(stats[0])} channels, {key}.input_size "
                        f"{list(shape)} has {shape[0]}")
    probed = layers(source, shape)
    return ModelSpec(
        name=name or source.describe(), tier="user", arch=source.kind,
        arch_kwargs=dict(source.args), input_size=(shape[1], shape[2]),
        layers={n: int(s[0]) for n, s in probed.items()},
        description=f"your network: {source.describe()}",
        weights_source=(f"torchvision:{type(tv_weights).__name__}.{tv_weights.name}"
                        if tv_weights is not None else None),
        normalize=stats, classifier="", source=source, channels=shape[0],
        weights_key=weights_key)


def check_layer(spec: ModelSpec, layer: str, features: int | list[int], *,
                layer_key: str = "layer", features_key: str = "features") -> list[int]:
    """Validate a layer name and a feature selection (the first N channels, or indices,
    each at most once); return the feature indices. ``layer_key`` and ``features_key``: the
    options the user set, which the messages name."""
    if layer not in spec.layers:
        if len(spec.layers) > 12:  # a user's network: the close ones, and where to look
            raise UserError(f"{layer_key}: {close(layer, list(spec.layers), 'layer')}"
                            f" (every layer of {spec.name}: ifv layers model={spec.name})")
        raise UserError(f"{layer_key}: model {spec.name!r} has no layer {layer!r}; valid: "
                        + ", ".join(f"{k} ({c} channels)" for k, c in spec.layers.items()))
    channels = spec.layers[layer]
    idx = list(range(features)) if isinstance(features, int) else [int(i) for i in features]
    if not idx:
        raise UserError(f"{features_key} must select at least one channel")
    if isinstance(features, int) and features > channels:
        raise UserError(f"{features_key}={features} is larger than the {channels} channels "
                        f"of {spec.name}.{layer}; valid: 1..{channels}")
    bad = [i for i in idx if not 0 <= i < channels]
    if bad:
        raise UserError(f"{features_key}: feature indices {bad} out of range for "
                        f"{spec.name}.{layer}; valid: 0..{channels - 1}")
    repeated = sorted(i for i, n in Counter(idx).items() if n > 1)
    if repeated:
        raise UserError(f"{features_key}: feature indices {repeated} repeated; select each "
                        f"channel of {spec.name}.{layer} at most once")
    return idx


def load(name: str | ModelSpec, *, weights: str | None = None,
         cache_dir: str | Path | None = None, download: bool = False) -> nn.Module:
    """The network in eval mode with frozen parameters.

    ``weights``: None loads the default weights (``spec.weights_file``: the checkpoint of
    ``ifv train model=NAME`` in the model cache, or for a pretrained source the file in the
    torch hub cache, downloaded first only when ``download``); a path loads that file (an ifv
    checkpoint or a plain state dict); ``"random"`` keeps the random initialization (for
    tests and timing only), the same one every time (seed 0). Missing or unreadable weights
    raise ``UserError``; nothing falls back to random weights.
    """
    spec = get_spec(name) if isinstance(name, str) else name
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = spec.build()
    if weights != "random" and spec.source is not None and not weights \
            and spec.weights_source is None:
        _pretrained(model, spec, download)
    elif weights != "random":
        path = Path(weights).expanduser() if weights else spec.weights_file(cache_dir)
        if not path.exists():
            if weights:
                raise UserError(f"no weights file {path} (model.weights of {spec.name})")
            if spec.arch == "srnet" and spec.tier == "paper":
                raise UserError(f"no weights for {spec.name}: the original SRNet weights "
                                "(Weiss et al. 2019) are not public and ifv does not train "
                                "them; pass model.weights=PATH (a state dict of this "
                                "architecture), or use the offline stand-in srnet_geometry")
            if spec.weights_source is None:
                how = ("needs CIFAR-10 at model.data.root; the paper's recipe runs "
                       f"{spec.recipe.epochs} epochs, for a GPU)"
                       if spec.recipe.dataset == "cifar10" else "runs on the CPU)")
                raise UserError(f"no weights for {spec.name} at {path}; train them with "
                                f"'ifv train model={spec.name}' ({how} or pass "
                                "model.weights=PATH")
            if not download:
                raise UserError(f"no weights for {spec.name} at {path}; place {path.name} "
                                f"(from {_source_url(spec)}) there, pass model.download=true "
                                "to download it, or pass model.weights=PATH (a state dict)")
            fetch_weights(spec)
        hint = ("delete it and train again" if spec.trainable and not weights
                else "replace it with a state dict of this architecture")
        _load_into(model, read_state_dict(path, hint, spec.weights_key), path, spec)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def read_state_dict(path: Path, hint: str = "replace it", key: str | None = None
                    ) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a plain (torchvision) state dict, or a checkpoint that
    holds one under ``key`` (default: "state_dict" where there is one, as in ifv's own),
    loaded without unpickling anything but tensors and containers (``load_tensors``). A
    ``module.`` prefix on every key (a DataParallel model's) is stripped."""
    try:
        obj = load_tensors(path)
    except Refused as why:
        raise UserError(f"cannot read weights {path}: {why}; {hint}") from None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = list(obj)[:8] if isinstance(obj, dict) else []
            raise UserError(f"{path} holds no {key!r} (model.weights_key); its keys: "
                            f"{', '.join(map(str, keys)) or 'none'}")
        obj = obj[key]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, torch.Tensor) for v in obj.values()):
        what = (f"a dict with keys {', '.join(map(str, list(obj)[:6]))}"
                if isinstance(obj, dict) and obj else type(obj).__name__)
        raise UserError(f"{path} holds no state dict (a dict of tensors) but {what}; give "
                        f"the key that holds it with model.weights_key=KEY, or {hint}")
    if all(str(k).startswith("module.") for k in obj):
        obj = {str(k).removeprefix("module."): v for k, v in obj.items()}
    return obj


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
               spec: ModelSpec) -> None:
    """Load ``state`` strictly (less torchvision's auxiliary GoogLeNet heads)."""
    if spec.arch == "googlenet":
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    try:
        res = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise UserError(f"the weights in {path} do not fit {spec.name}: "
                        f"{lines[1] if len(lines) > 1 else lines[0]}") from None
    if res.missing_keys or res.unexpected_keys:
        raise UserError(f"the weights in {path} do not fit {spec.name}: missing "
                        f"{res.missing_keys[:3]}{'...' if len(res.missing_keys) > 3 else ''}, "
                        f"unexpected {res.unexpected_keys[:3]}"
                        f"{'...' if len(res.unexpected_keys) > 3 else ''}")


def _pretrained(model: nn.Module, spec: ModelSpec, download: bool) -> None:
    """A user's network without a weights file: timm's pretrained weights, from the
    Hugging Face cache (``_hub_file``) or, only with ``download``, from the hub; a file's
    network (onnx, tflite) has its weights already; other sources need model.weights."""
    assert spec.source is not None
    if spec.source.is_file:
        return
    if spec.source.kind != "timm":
        what = ("has no pretrained weights in torchvision" if spec.source.kind == "torchvision"
                else "is built by model._target_")
        raise UserError(f"{spec.name} {what}: pass model.weights=PATH (a state dict, or a "
                        "checkpoint with model.weights_key=KEY), or model.weights=random")
    import timm

    overlay = {} if download else {"pretrained_cfg_overlay": {"file": _hub_file(spec)}}
    try:
        state = timm.create_model(spec.source.ref, pretrained=True, **overlay,
                                  **dict(spec.source.args)).state_dict()
    except Exception as exc:  # noqa: BLE001 - no network, a damaged file: one line
        raise UserError(f"cannot load the pretrained weights of {spec.name} "
                        f"({exc.__class__.__name__}); pass model.weights=PATH") from None
    model.load_state_dict(state)


def _hub_file(spec: ModelSpec) -> str:
    """The file of ``spec``'s timm weights in the Hugging Face cache, found without the
    network; ``UserError`` with where it was looked for where it is not there."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    assert spec.source is not None
    cfg = timm.models.get_pretrained_cfg(spec.source.ref)
    repo, _, revision = (getattr(cfg, "hf_hub_id", None) or "").partition("@")
    names = ("model.safetensors", getattr(cfg, "hf_hub_filename", None) or "pytorch_model.bin")
    for name in names if repo else ():
        found = try_to_load_from_cache(repo, name, cache_dir=constants.HF_HUB_CACHE,
                                       revision=revision or None)
        if isinstance(found, str):
            return found
    where = f"{repo} ({' or '.join(names)})" if repo else "no Hugging Face repository"
    raise UserError(f"no pretrained weights for {spec.name} in the Hugging Face cache "
                    f"{constants.HF_HUB_CACHE}: looked for {where}; pass model.download=true "
                    "to download them, or model.weights=PATH")


def _source_url(spec: ModelSpec) -> str:
    """The download address of a pretrained source ("torchvision:ENUM.MEMBER")."""
    kind, _, ref = (spec.weights_source or "").partition(":")
    import torchvision.models

    try:
        weights = torchvision.models.get_weight(ref) if kind == "torchvision" else None
    except (ValueError, AttributeError, KeyError):
        weights = None
    if weights is None:
        raise UserError(f"unknown weights source {spec.weights_source!r} of {spec.name}")
    return weights.url


def fetch_weights(spec: ModelSpec) -> Path:
    """Download the pretrained weights of ``spec`` into the torch hub cache (SHA-256 checked
    against the prefix in the file name, written atomically); only on the user's request."""
    dst = spec.weights_file()
    url = _source_url(spec)
    m = torch.hub.HASH_REGEX.search(dst.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=m.group(1) if m else None,
                                       progress=True)
    except Exception as exc:  # noqa: BLE001 - no network, a bad hash: one user error
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"cannot download {url} to {dst} ({exc.__class__.__name__}: {msg}); "
                        "place the file there by hand or pass model.weights=PATH") from None
    return dst


def record_of(path: Path) -> dict[str, Any] | None:
    """The training record written beside a checkpoint, if any."""
    rec = path.with_suffix(".json")
    return json.loads(rec.read_text()) if rec.exists() else None


TIERS = ("offline", "paper")
SCALES = ("small", "paper")

# The paper's networks (Sec. 3.1) and the zoo model that plays each in a tier; the offline
# tier has a small stand-in (CPU) and, for DenseNet and GoogLeNet, a paper-sized one
# (scale=paper). SRNet's stand-in keeps the paper's 64 filters at block8 in both scales.
NETWORKS: dict[str, dict[str, str]] = {
    "densenet": {"offline": "densenet_patterns", "offline_paper": "densenet_patterns_bc100",
                 "paper": "densenet_cifar"},
    "densenet_ex4": {"offline": "densenet_patterns_ex4",
                     "offline_paper": "densenet_patterns_bc100_ex4",
                     "paper": "densenet_cifar_ex4"},
    "googlenet": {"offline": "googlenet_patterns", "offline_paper": "googlenet_patterns_224",
                  "paper": "googlenet"},
    "srnet": {"offline": "srnet_geometry", "offline_paper": "srnet_geometry", "paper": "srnet"},
}


def _check(key: str, value: str, valid: tuple[str, ...] | dict[str, Any]) -> None:
    if value not in valid:
        raise UserError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")


def model_for(network: str, tier: str, scale: str = "small") -> str:
    """The zoo model that plays ``network`` in ``tier`` at ``scale`` (the ``${zoo:...}``
    config resolver): ``scale=paper`` picks the offline tier's paper-sized stand-ins; the
    paper tier's models are paper-sized at either scale."""
    _check("tier", tier, TIERS)
    _check("scale", scale, SCALES)
    _check("network", network, NETWORKS)
    if tier == "offline" and scale == "paper":
        return NETWORKS[network]["offline_paper"]
    return NETWORKS[network][tier]


def widths(tier: str, scale: str) -> str:
    """Whose layer widths a run's models have: "paper" (the paper tier, or the offline tier
    at scale=paper) or "small" (the small stand-ins); the ``${widths:...}`` resolver that
    picks a sweep's points."""
    _check("tier", tier, TIERS)
    _check("scale", scale, SCALES)
    return "paper" if "paper" in (tier, scale) else "small"

"""The model zoo: every network by name, its tier, its tappable layers, its training recipe.

Offline-tier models are trained here by ``ifv train`` on data the project generates; their
checkpoints live in the model cache under a name that includes a hash of the architecture
and recipe, so that changing the recipe never loads a stale checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ifv.errors import UserError
from ifv.models.densenet import DenseNetBC, block_channels
from ifv.store import content_key, default_cache_dir


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

    def build(self) -> nn.Module:
        """A freshly initialized network of this architecture."""
        if self.arch == "densenet_bc":
            return DenseNetBC(**self.arch_kwargs)
        raise UserError(f"unknown architecture {self.arch!r}")

    def key(self) -> str:
        """Hash of the architecture and the recipe: the checkpoint's identity."""
        return content_key({"arch": self.arch, "kwargs": self.arch_kwargs,
                            "recipe": asdict(self.recipe)}, 10)

    def checkpoint(self, cache_dir: str | Path | None = None) -> Path:
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        return base / "models" / f"{self.name}-{self.key()}.pt"

    def with_recipe(self, **changes: Any) -> ModelSpec:
        """The same model with some recipe fields changed (e.g. epochs)."""
        unknown = set(changes) - set(asdict(self.recipe))
        if unknown:
            raise UserError(f"unknown training option(s) {sorted(unknown)}; valid: "
                            f"{', '.join(asdict(self.recipe))}")
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return replace(self, recipe=replace(self.recipe, **changes))


def _densenet_layers(depth: int, growth: int, num_classes: int = 10) -> dict[str, int]:
    names = ("conv0", "dense1", "trans1", "dense2", "trans2", "dense3")
    ch = block_channels(depth, growth)
    return {**dict(zip(names, ch, strict=True)), "pool": ch[-1], "classifier": num_classes}


_OFFLINE_DN = {"depth": 22, "growth": 12, "num_classes": 10}

MODELS: dict[str, ModelSpec] = {
    "densenet_patterns": ModelSpec(
        name="densenet_patterns",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_OFFLINE_DN,
        input_size=(32, 32),
        layers=_densenet_layers(22, 12),
        description="DenseNet-BC depth 22 on the 10 procedural pattern classes "
                    "(stand-in for DenseNet-BC-100 on CIFAR-10)",
    ),
    "densenet_patterns_ex4": ModelSpec(
        name="densenet_patterns_ex4",
        tier="offline",
        arch="densenet_bc",
        arch_kwargs=_OFFLINE_DN,
        input_size=(32, 32),
        layers=_densenet_layers(22, 12),
        recipe=Recipe(exclude_classes=(4,)),
        description="the same, never shown class 4 (stand-in for DenseNetEx4)",
    ),
}


def get_spec(name: str) -> ModelSpec:
    """The zoo entry called ``name``."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name]


def check_layer(spec: ModelSpec, layer: str, features: int | list[int]) -> list[int]:
    """Validate a layer name and a feature selection; return the feature indices."""
    if layer not in spec.layers:
        raise UserError(f"model {spec.name!r} has no layer {layer!r}; valid: "
                        + ", ".join(f"{k} ({c} channels)" for k, c in spec.layers.items()))
    channels = spec.layers[layer]
    idx = list(range(features)) if isinstance(features, int) else [int(i) for i in features]
    if not idx:
        raise UserError("features must select at least one channel")
    if isinstance(features, int) and features > channels:
        raise UserError(f"features={features} is larger than the {channels} channels of "
                        f"{spec.name}.{layer}; valid: 1..{channels}")
    bad = [i for i in idx if not 0 <= i < channels]
    if bad:
        raise UserError(f"feature indices {bad} out of range for {spec.name}.{layer}; "
                        f"valid: 0..{channels - 1}")
    return idx


def load(name: str | ModelSpec, *, weights: str | None = None,
         cache_dir: str | Path | None = None) -> nn.Module:
    """The network in eval mode with frozen parameters.

    ``weights``: None loads the trained checkpoint from the model cache (train it with
    ``ifv train model=NAME``), a path loads that file, ``"random"`` keeps the random
    initialization (for tests and timing only), the same one every time (seed 0).
    """
    spec = get_spec(name) if isinstance(name, str) else name
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = spec.build()
    if weights != "random":
        path = Path(weights).expanduser() if weights else spec.checkpoint(cache_dir)
        if not path.exists():
            raise UserError(f"no weights for {spec.name} at {path}; train them with "
                            f"'ifv train model={spec.name}' or pass model.weights=PATH")
        model.load_state_dict(read_checkpoint(path)["state_dict"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by ``ifv train`` (loaded with weights_only=True)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"cannot read checkpoint {path}: {exc.__class__.__name__}; delete it "
                        "and train again") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not an ifv checkpoint (no state_dict)")
    return ckpt


def record_of(path: Path) -> dict[str, Any] | None:
    """The training record written beside a checkpoint, if any."""
    rec = path.with_suffix(".json")
    return json.loads(rec.read_text()) if rec.exists() else None

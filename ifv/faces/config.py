"""The configuration's schema and its composition: Hydra is the shell around ``ifv.run.setting``.

The dataclasses below are registered in Hydra's ConfigStore as ``ifv_schema``, the first
entry of ``conf/config.yaml``'s defaults list, so every YAML file and every command-line
override is merged into typed fields: a value of the wrong type (``seed=abc``) or a key
that does not exist is refused by OmegaConf before anything runs. Ranges and choices that a
type cannot say (``k >= 0``, a finite learning rate, a known layer) are checked by
``ifv.run.setting``, once, for ``ifv run``, ``ifv invert`` and the Python API alike.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ifv.errors import UserError
from ifv.math.fv import FVSettings

CONF = Path(__file__).parents[1] / "conf"


@dataclass
class DataConf:
    root: str = "~/data"
    download: bool = False


@dataclass
class ModelConf:
    name: str | None = "???"             # a zoo name, torchvision:NAME or timm:NAME
    weights: str | None = None
    cache_dir: str | None = None
    download: bool = False
    train: dict[str, Any] = field(default_factory=dict)
    data: DataConf = field(default_factory=DataConf)
    # your own network (ifv.zoo.sources): an importable callable and its arguments, the
    # key of the state dict in a checkpoint, its input [C, H, W] and normalization
    _target_: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights_key: str | None = None
    input_size: list[int] | None = None
    normalize: Any = None                # imagenet, cifar10, none or {mean: [..], std: [..]}


@dataclass
class FeaturesConf:
    n: Any = 64                          # a number, or all
    indices: list[int] | None = None
    points: dict[str, Any] | None = None    # a sweep's n_f per layer widths and profile
    per_widths: dict[str, int] | None = None  # n per layer widths (paper, small)


@dataclass
class AggregationConf:
    name: str = "maxpool_mean"


def _mutable(frozen: type, name: str) -> type:
    """A mutable copy of a frozen dataclass with the same fields, types and defaults, for
    OmegaConf (which makes frozen dataclasses read-only)."""
    hints = typing.get_type_hints(frozen)
    return dataclasses.make_dataclass(
        name, [(f.name, hints[f.name], f.default) for f in dataclasses.fields(frozen)])


FVConf = _mutable(FVSettings, "FVConf")  # fv.*: the fields of ifv.math.fv.FVSettings


@dataclass
class SamplingConf:
    n_total: int = 300
    canonical: Any = "half"              # half, all, or a number


@dataclass
class ReoptConf:
    steps: int = 500
    lr: float = 0.05
    batch_size: int = 64
    stable_ssim: float = 0.7


@dataclass
class JacobianConf:
    method: str = "auto"
    max_bytes: int = 1 << 30
    batch_size: int = 32


@dataclass
class CriticalConf:
    search: bool = False
    n_jacobians: int = 32
    order: str = "sequential"
    rho: float | None = None


@dataclass
class TransformsConf:
    name: str = "none"                   # none, standard, lucid, lucent, or custom
    steps: list[dict[str, Any]] | None = None  # custom: [{pad: PX}, {jitter: PX}, ...]


@dataclass
class PriorConf:
    name: str = "none"                   # none, l2, tv, blur
    weight: float | None = None          # null: the prior's default (ifv.math.prior.WEIGHTS)


@dataclass
class InversionConf:
    samples: int = 32                    # transform samples K of the expectation estimate
    seed: int = 12345                    # their own seed
    tol: float = 1e-10                   # fixed point on the weights (k > 0)
    max_iter: int = 100
    batch_size: int = 8                  # realizations per robust-Jacobian part
    draws: str = "auto"                  # auto, fv (FV's L-BFGS draws), sampled (samples of seed)
    estimator: str = "relative"          # relative (relative stationarity) or mean


@dataclass
class KinksConf:                         # Grad-IFV at kinks (ifv.math.kink, docs/kinks.md)
    samples: int = 4                     # directions K of the second differences; 0: off
    sigma: float = 1.0e-3                # their step in P's variables v
    rho: float = 1.0e-3                  # a switch normal's least singular value / ||Dy||_2
    seed: int = 0                        # the directions' seed
    rows: int = 64                       # rows of each second difference (random combos)


@dataclass
class InvertConf:
    input: str = "image"                 # image, or params (P's variables v)
    critical: str | None = None          # a run's critical.parquet
    critical_dim: int | None = None
    top: int = 5
    out: str = "ifv-invert.json"


@dataclass
class CompareConf:                       # `ifv compare` only (ifv.faces.compare; docs/compare.md)
    name: str = "compare"                # names the output folder outputs/compare/NAME/TIME
    planted: str | None = None           # B = A's network permuted | rescaled; null: b_*
    scale: float = 2.0                   # rescaled: d_j log-uniform in [1/scale, scale]
    b_model: str | None = None           # B's zoo model; null: A's
    b_weights: str | None = None
    b_train: dict[str, Any] = field(default_factory=dict)  # B's recipe overrides, e.g. seed
    b_layer: str | None = None           # null: A's layer
    b_features: Any = None               # null: A's selection; a number, all or a list
    objectives: Any = "all"              # canonical e_i: all of A's features or N of them
    n_random: int = 0                    # sparse random objectives besides (scale fit)
    images: list[str] | None = None      # the baseline's images; null: procedural patterns
    n_images: int = 256
    pairs: int = 16                      # matched pairs shown with B's own realization
    max_residual: float = 0.1            # B's residual above it: far from B's optima
    max_ratio: float = 0.5               # ... above max_ratio x the runner-up's: undetermined
    min_share: float = 0.5               # a confident pair's least weight share
    out: str | None = None               # null: outputs/compare/NAME/TIME


@dataclass
class Config:
    name: str = "???"
    network: str = "densenet"
    tier: str = "offline"
    layer: str = "???"
    k: float = 2.0
    seed: int = 0
    device: str = "auto"
    tf32: bool = False
    scale: str = "small"
    stage_cache: str | None = None
    progress: bool = True
    figures: bool = True
    profile_name: str = "quick"
    sizes: dict[str, Any] = field(default_factory=dict)
    model: ModelConf = field(default_factory=ModelConf)
    features: FeaturesConf = field(default_factory=FeaturesConf)
    aggregation: AggregationConf = field(default_factory=AggregationConf)
    param: dict[str, Any] = field(default_factory=dict)  # name and P's options
    fv: FVConf = field(default_factory=FVConf)
    sampling: SamplingConf = field(default_factory=SamplingConf)
    reopt: ReoptConf = field(default_factory=ReoptConf)
    jacobian: JacobianConf = field(default_factory=JacobianConf)
    critical: CriticalConf = field(default_factory=CriticalConf)
    invert: InvertConf = field(default_factory=InvertConf)
    compare: CompareConf = field(default_factory=CompareConf)
    transforms: TransformsConf = field(default_factory=TransformsConf)
    prior: PriorConf = field(default_factory=PriorConf)
    inversion: InversionConf = field(default_factory=InversionConf)
    kinks: KinksConf = field(default_factory=KinksConf)
    s4: dict[str, Any] | None = None     # an S4 experiment's row of the paper's table


def register() -> None:
    """The schema in Hydra's ConfigStore, the ``${zoo:NETWORK,TIER,SCALE}`` resolver (the
    zoo model that plays a network in a tier) and ``${widths:TIER,SCALE}`` (whose layer
    widths: paper or small, for a sweep's points)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from ifv.zoo.registry import model_for, widths

    ConfigStore.instance().store(name="ifv_schema", node=Config)
    if not OmegaConf.has_resolver("zoo"):
        OmegaConf.register_new_resolver("zoo", model_for)
    if not OmegaConf.has_resolver("widths"):
        OmegaConf.register_new_resolver("widths", widths)


def choices(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/ and in your config
    folder's (``user_dir``)."""
    folders = [CONF / group] + ([own / group] if (own := user_dir()) else [])
    return sorted({p.stem for f in folders for p in f.glob("*.yaml")})


def _fields(path: str) -> list[str]:
    """The keys of the schema's node at ``path`` (dotted; "" is the root)."""
    node: Any = Config
    for part in [p for p in path.split(".") if p]:
        hints = typing.get_type_hints(node)
        node = hints.get(part)
        if not dataclasses.is_dataclass(node):
            return []
    return [f.name for f in dataclasses.fields(node)]


def one_line(exc: BaseException) -> str:
    """Hydra's or OmegaConf's error as one line for the user."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ValidationError

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, value = str(exc.missing_cfg_file).rpartition("/")
        if group and exc.options:
            return f"unknown {group} {value!r}; valid: {', '.join(sorted(exc.options))}"
    cause = exc.__cause__
    key = getattr(cause, "full_key", None)
    if isinstance(cause, ValidationError) and key:
        return f"invalid value for {key}: {str(cause).splitlines()[0]}"
    if isinstance(cause, ConfigAttributeError) and key:
        parent = key.rpartition(".")[0]
        valid = _fields(parent)
        return (f"invalid configuration: no key {key!r}"
                + (f"; valid: {', '.join(f'{parent}.{k}' if parent else k for k in valid)}"
                   if valid else ""))
    text = str(exc).strip()
    first = text.splitlines()[0] if text else repr(exc)
    if isinstance(exc, OverrideParseException):
        return (f"malformed override: {first}; use KEY=VALUE, e.g. k=2 or "
                "experiment=dnde_simple")
    user = "UserError raised while resolving interpolation: "
    if user in first:
        return first.split(user, 1)[1]
    return f"invalid configuration: {first}"


def _unknown_option(overrides: list[str]) -> str | None:
    """The first group override whose value names no option of its group (Hydra reports
    some of these, e.g. ``features=64``, without naming the group)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - a malformed override is reported by the caller
        return None
    for o in parsed:
        group = o.key_or_group
        if o.is_delete() or not (CONF / group).is_dir():
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            if str(value) not in choices(group):
                return f"unknown {group} {str(value)!r}; valid: {', '.join(choices(group))}"
    return None


def _one_selection(cfg: Any, overrides: list[str]) -> None:
    """Refuse features.n beside features.indices on the command line: the indices select
    the features, and the number would go unused without a word."""
    keys = {o.partition("=")[0].lstrip("+~") for o in overrides}
    if {"features.n", "features.indices"} <= keys and cfg.features.indices is not None:
        raise UserError(f"give features.n or features.indices, not both: features.indices="
                        f"{list(cfg.features.indices)} selects {len(cfg.features.indices)} "
                        f"features, features.n={cfg.features.n} would go unused")


def user_dir() -> Path | None:
    """Your own config folder ($IFV_CONFIG_DIR, default ~/.config/ifv), where it exists: its
    model/NAME.yaml files register your networks as ``model=NAME`` (``ifv list`` shows
    them), and any other group's files add options the same way."""
    path = Path(os.environ.get("IFV_CONFIG_DIR", "~/.config/ifv")).expanduser()
    return path if path.is_dir() else None


def expand(args: list[str]) -> list[str]:
    """The command line as Hydra takes it: ``model.train.KEY=V``, ``model.args.KEY=V`` and
    ``compare.b_train.KEY=V`` add KEY to an empty dict (``++``); ``model=torchvision:NAME``
    (or ``timm:NAME``) picks conf/model/source.yaml with that name; your config folder
    (``user_dir``) joins the search path."""
    out = []
    for a in args:
        key, _, value = a.partition("=")
        if key in ("model", "+model") and ":" in value:
            out += ["model=source", f"model.name={value}"]
        elif a.startswith(("model.train.", "model.args.", "compare.b_train.")):
            out.append(f"++{a}")
        else:
            out.append(a)
    own = user_dir()
    if own is not None and not any(a.startswith("hydra.searchpath") for a in args):
        out.append(f"hydra.searchpath=[file://{own}]")
    return out


def compose(overrides: list[str], *, with_hydra: bool = False) -> Any:
    """The composed, resolved config of ``overrides`` (no sweeps: one value per key).

    ``with_hydra`` keeps the ``hydra`` node (launcher, the sweep an experiment carries in
    ``hydra.sweeper.params``). Any error is a ``UserError`` of one line.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=expand(overrides),
                                return_hydra_config=with_hydra)
        # resolve the job's part now; the hydra node holds run-time values (hydra.job.num)
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                               resolve=True, throw_on_missing=True)
        if with_hydra:
            OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    except Exception as exc:  # noqa: BLE001 - every config error becomes one line
        msg = one_line(exc)
        if msg.startswith("invalid configuration"):
            msg = _unknown_option(overrides) or msg
        raise UserError(msg) from None
    _one_selection(cfg, overrides)
    return cfg


register()

"""The ``ifv`` command: run, train, list, invert. Hydra is the shell around the library."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

USAGE = """\
usage: ifv COMMAND [hydra overrides]

commands:
  run [-m] [KEY=VALUE ...]   run an experiment of the paper (default: experiment=dnde_simple);
                             experiment=exp01..exp25 are the rows of Supp. S4, also by
                             readable names (gn4c_simple, dncl_k2, ...: ifv list); exp06,
                             exp07, exp11, exp12 sweep n_f themselves (a multirun, points
                             per tier and profile); -m runs a sweep, e.g.
                             ifv run -m k=0,2 features=n32,n64; hydra/launcher=joblib runs
                             its jobs in parallel, hydra/launcher=slurm on a SLURM cluster
  train model=NAME [...]     train a zoo model into the model cache (offline tier; paper
                             tier: densenet_cifar[_ex4] on CIFAR-10 at model.data.root)
  list                       experiments, models (tier, weights present) and their layers
  invert IMAGE... [KEY=VALUE ...]
                             Grad-IFV on your images (.pt, .npy, .png in [0, 1]): the
                             predicted objective's top features; `ifv invert --help`
  --help                     this text; `ifv run --help` shows the composed config

examples:
  ifv run                                   # the simple case on the offline DenseNet
  ifv run experiment=dnde_simple k=0 profile=quick
  ifv run layer=dense2 features=n32 aggregation=mean
  ifv run experiment=gn4c_simple            # S4 experiment 1 (exp01) on the offline GoogLeNet
  ifv run experiment=exp07 profile=paper    # the n_f sweep: the paper's points and step counts
  ifv run experiment=exp11 hydra/launcher=joblib    # the sweep's jobs in parallel
  ifv train model=densenet_patterns model.train.epochs=8
  ifv invert a.png b.npy layer=dense3 features=64 critical=outputs/RUN/critical.parquet

Results go to outputs/<experiment>/<time>/ (results.parquet, critical.parquet, PNG figures).
Caches: $IFV_CACHE (default ~/.cache/ifv): models/ and stages/.
"""

CONF = Path(__file__).parent / "conf"
GROUPS = ("model", "features", "aggregation", "param", "fv", "sampling", "reopt", "jacobian",
          "critical", "profile", "experiment")


def _register_resolvers() -> None:
    """${zoo:NETWORK,TIER} names the zoo model that plays a network in a tier."""
    from omegaconf import OmegaConf

    from ifv.models.registry import model_for

    if not OmegaConf.has_resolver("zoo"):
        OmegaConf.register_new_resolver("zoo", model_for)


_register_resolvers()

# conf/hydra/launcher/joblib.yaml has the name of the joblib plugin's own config, which Hydra
# 1.3 then merges in as its schema with a deprecation warning (in every job process too). The
# file lists every field, so it keeps working when Hydra drops that matching.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against")


class _Fail(Exception):
    """A user error detected by the CLI before anything runs."""


def choices(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _open_train(args: list[str]) -> list[str]:
    """``model.train.KEY=V`` adds KEY to the (empty) recipe-override dict: Hydra needs ``++``."""
    return [f"++{a}" if a.startswith("model.train.") else a for a in args]


def _parse(args: list[str]) -> list[Any]:
    """Hydra's parse of command-line overrides; a malformed one is a one-line user error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(args)
    except OverrideParseException as exc:
        first = str(exc).strip().splitlines()[0]
        raise _Fail(f"malformed override: {first}; use KEY=VALUE, e.g. k=2 or "
                    "experiment=dnde_simple") from None


def _check_overrides(args: list[str]) -> list[str]:
    """Parse the overrides; check group choices; return them with sweeps cut to one value.

    Hydra's own overrides (hydra/launcher=joblib, hydra.launcher.n_jobs=2, hydra.run.dir=...)
    pass through unchecked: Hydra validates them when composing.
    """
    parsed = _parse(args)
    single = []
    for o in parsed:
        key = o.key_or_group
        values = [str(v) for v in o.sweep_iterator()] if o.is_sweep_override() else None
        if key in GROUPS and not o.is_delete():
            opts = choices(key)
            for val in values or [o.value()]:
                if str(val) not in opts:
                    raise _Fail(f"unknown {key} {val!r}; valid: {', '.join(opts)}")
        if values is not None:
            single.append(f"{o.get_key_element()}={values[0]}")
        else:
            single.append(o.input_line)
    return single


def compose(overrides: list[str], *, with_hydra: bool = False) -> Any:
    """The composed config for ``overrides`` (sweeps cut to their first value).

    ``with_hydra`` keeps the ``hydra`` node (launcher, hydra.sweeper.params), with the
    sweeper's params resolved as a check.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    single = _check_overrides(_open_train(overrides))
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=single,
                                return_hydra_config=with_hydra)
        # resolve the job's part; the hydra node holds run-time values (hydra.job.num)
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                               resolve=True)
        if with_hydra:
            OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    except Exception as exc:  # noqa: BLE001 - Hydra's config errors become one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        user = "UserError raised while resolving interpolation: "
        if user in first:
            raise _Fail(first.split(user, 1)[1]) from None
        raise _Fail(f"invalid configuration: {first}") from None
    return cfg


def _run_task(cfg: Any) -> None:
    """One job of `ifv run` (called by Hydra, once per sweep point)."""
    from hydra.core.hydra_config import HydraConfig

    from ifv import pipeline
    from ifv.errors import UserError

    out = Path(HydraConfig.get().runtime.output_dir)
    figures = bool(cfg.get("figures", True))
    try:
        exp = pipeline.from_config(cfg)
        df = pipeline.run(exp, out, stage_cache=cfg.get("stage_cache"),
                          progress=bool(cfg.get("progress", True)),
                          figures=figures)
    except UserError as exc:
        print(f"ifv: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(pipeline.summary(df))
    print(f"results: {out / 'results.parquet'}")
    if figures:
        print(f"figures: {out}/angle_ssim.png, alpha.png, realizations.png, ssim_kde.png")


# A config-carried sweep is resolved once, from the config of the first values of the
# command line's own sweeps: a command-line sweep over these would leave it stale.
_SWEEP_INPUTS = ("experiment", "tier", "profile", "features")


def config_sweep(cfg: Any, overrides: list[str]) -> dict[str, str]:
    """The sweep a composed config carries itself (``hydra.sweeper.params``, e.g. the n_f
    points of exp07 for its tier and profile), less the keys the command line sets."""
    from omegaconf import OmegaConf

    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    if not params:
        return {}
    given = {o.key_or_group for o in _parse(overrides)}
    resolved = OmegaConf.to_container(params, resolve=True)
    return {str(k): str(v) for k, v in resolved.items() if k not in given}


def _sweep_points(sweep: dict[str, str]) -> list[dict[str, Any]]:
    """The jobs of a sweep as {key: value}: the product of every key's values."""
    import itertools

    values = []
    for key, spec in sweep.items():
        (o,) = _parse([f"{key}={spec}"])
        values.append(list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()])
    return [dict(zip(sweep, combo, strict=True)) for combo in itertools.product(*values)]


def _check_job(cfg: Any, point: dict[str, Any]) -> None:
    """Validate the experiment of one job: ``cfg`` with the sweep ``point`` set."""
    import copy

    from omegaconf import OmegaConf, open_dict

    from ifv import pipeline
    from ifv.errors import UserError

    job = copy.deepcopy(cfg) if point else cfg
    with open_dict(job):
        for key, value in point.items():
            OmegaConf.update(job, key, value)
    try:
        pipeline.from_config(job)
    except UserError as exc:
        where = " ".join(f"{k}={v}" for k, v in point.items())
        raise _Fail(f"{where}: {exc}" if where else str(exc)) from None


def _check_nesting(overrides: list[str], cfg: Any, sweep: dict[str, str]) -> None:
    """Refuse a command-line sweep over experiment, tier, profile or features when an
    experiment it runs carries its own sweep (Hydra cannot nest the two)."""
    parsed = _parse(overrides)
    outer = [o for o in parsed if o.is_sweep_override() and o.key_or_group in _SWEEP_INPUTS]
    if not outer:
        return
    carrier = cfg if sweep else None
    exp = next((o for o in outer if o.key_or_group == "experiment"), None)
    if carrier is None and exp is not None:
        rest = [a for a, o in zip(overrides, parsed, strict=True) if o is not exp]
        for value in exp.sweep_iterator():
            other = compose([*rest, f"experiment={value}"], with_hydra=True)
            if config_sweep(other, overrides):
                carrier = other
                break
    if carrier is not None:
        keys = ", ".join(config_sweep(carrier, overrides))
        swept = ", ".join(o.key_or_group for o in outer)
        raise _Fail(f"experiment {carrier.name} sweeps {keys} itself (points per tier and "
                    f"profile); it cannot run inside a sweep over {swept}: run one `ifv run` "
                    "per value")


def cmd_run(args: list[str]) -> int:
    """`ifv run`: validate, then hand over to Hydra (which runs sweeps with -m).

    An experiment that carries its own sweep (``hydra.sweeper.params``: the n_f points of
    exp06, exp07, exp11, exp12) runs as a multirun without -m; each of its jobs is validated
    first. Setting a swept key on the command line (features.n=64) runs that value alone.
    """
    import hydra

    if any(a in ("-h", "--help", "--cfg", "-c", "--info", "--hydra-help") for a in args):
        passthrough = args
    else:
        overrides = [a for a in args if not a.startswith("-")]
        cfg = compose(overrides, with_hydra=True)
        sweep = config_sweep(cfg, overrides)
        _check_nesting(overrides, cfg, sweep)
        points = _sweep_points(sweep)
        for point in points or [{}]:
            _check_job(cfg, point)
        if sweep:
            print(f"{cfg.name}: a sweep over "
                  + "; ".join(f"{k} = {v.replace(',', ', ')}" for k, v in sweep.items())
                  + f" (tier {cfg.tier}, profile {cfg.get('profile_name')}): "
                  f"{len(points)} points, Hydra multirun")
            if not any(a in ("-m", "--multirun") for a in args):
                args = ["-m", *args]
        passthrough = _open_train(args)
    main = hydra.main(config_path=str(CONF), config_name="config", version_base=None)(_run_task)
    sys.argv = ["ifv run", *passthrough]
    main()
    return 0


def cmd_train(args: list[str]) -> int:
    """`ifv train model=NAME [model.train.KEY=VALUE ...]`."""
    from ifv.errors import UserError
    from ifv.models import get_spec
    from ifv.train import train

    if not any(a.startswith("model=") for a in args):
        raise _Fail(f"which model? use ifv train model=NAME; valid: {', '.join(choices('model'))}")
    cfg = compose(args)
    data = cfg.model.get("data") or {}
    try:
        spec = get_spec(cfg.model.name).with_recipe(**dict(cfg.model.get("train") or {}))
        rec = train(spec, cfg.model.get("cache_dir"), progress=bool(cfg.get("progress", True)),
                    data_root=data.get("root"), download=bool(data.get("download", False)))
    except UserError as exc:
        raise _Fail(str(exc)) from None
    print(f"trained {rec['model']} ({rec['tier']} tier) in {rec['train_seconds']:.0f} s "
          f"on {rec['device']} ({rec['n_train']} training images)")
    if rec.get("task") == "superres":
        from ifv.models.srnet import upscaling_summary

        print(upscaling_summary(rec))
        print(f"  checkpoint: {rec['checkpoint']} (record: .json beside it)")
        return 0
    print(f"  test accuracy {rec['test_accuracy']:.4f} (seen classes "
          f"{rec['test_accuracy_seen_classes']:.4f})")
    if "softmax_share" in rec:
        print(f"  classifier: softmax share ||1^T W||/(sqrt(n)||W||) = "
              f"{rec['softmax_share']:.3g}"
              + "".join(f", {k} = {v:.3g}" for k, v in rec.items()
                        if k.startswith("dead_share")))
    print(f"  output Jacobian (median over test images): (1,..,1) at "
          f"{rec['softmax_angle']:.1f} deg from the near-null space"
          + "".join(f", {k} = {v:.3g}" for k, v in rec.items()
                    if k.startswith(("dead_angle", "dead_grad"))))
    print(f"  checkpoint: {rec['checkpoint']} (record: .json beside it)")
    return 0


def cmd_list(args: list[str]) -> int:
    """`ifv list`: experiments, models with tier and weights, layers with channels."""
    from ifv.models import MODELS

    cache = None
    for a in args:
        if a.startswith("model.cache_dir="):
            cache = a.split("=", 1)[1]
    print("experiments: " + ", ".join(choices("experiment")))
    print("profiles:    " + ", ".join(choices("profile")))
    print("aggregation: " + ", ".join(choices("aggregation")))
    print("models:")
    for spec in MODELS.values():
        path = spec.weights_file(cache)
        if path.exists():
            have = f"weights present ({path})"
        elif spec.weights_source is not None:
            have = f"weights missing: place {path} or pass model.download=true"
        elif spec.arch == "srnet" and spec.tier == "paper":
            have = "no weights: pass model.weights=PATH (not public, not trained by ifv)"
        else:
            have = f"not trained (ifv train model={spec.name})"
        print(f"  {spec.name:24s} {spec.tier:8s} {have}")
        print(f"    {spec.description}")
        print("    layers: " + ", ".join(f"{k} ({c})" for k, c in spec.layers.items()))
    return 0


INVERT_KEYS = {
    "model": "zoo model (ifv list); default densenet_patterns",
    "model.weights": "weights file, or random (tests only); default: the model cache",
    "model.cache_dir": "model cache; default $IFV_CACHE/models",
    "model.download": "true: download missing pretrained weights (googlenet)",
    "layer": "tapped layer; default dense3",
    "features": "the first N channels, or all; default 64",
    "features.indices": "explicit channels, e.g. [0,5,7]",
    "aggregation": "maxpool_mean (default), mean, center or identity",
    "k": "power of the cosine term of S_x; default 2",
    "param": "parametrization P: rgb (default), fft, ffte; others with input=params",
    "input": "image (default: files in [0, 1]) or params (.pt/.npy of P's variables v)",
    "critical": "a run's critical.parquet: C is its best critical space",
    "critical_dim": "with critical: the critical space of this dimension instead",
    "top": "features printed per image; default 5",
    "out": "JSON file written; default ifv-invert.json",
}


def _number(opts: dict[str, str], key: str, cast: type, low: float) -> Any:
    """The option ``key`` as an int or float >= low."""
    try:
        val = cast(opts[key])
    except ValueError:
        val = None
    if val is None or not val >= low:
        raise _Fail(f"{key} must be {'an integer' if cast is int else 'a number'} >= {low:g}, "
                    f"got {opts[key]!r}")
    return val


def _invert_kwargs(opts: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments of ``ifv.api.invert`` from ``ifv invert``'s KEY=VALUE options."""
    kw: dict[str, Any] = {}
    for key in ("model", "layer", "aggregation", "param", "input", "critical"):
        if key in opts:
            kw[key] = opts[key]
    if "model.weights" in opts:
        kw["weights"] = opts["model.weights"]
    if "model.cache_dir" in opts:
        kw["cache_dir"] = opts["model.cache_dir"]
    if "model.download" in opts:
        if opts["model.download"].lower() not in ("true", "false"):
            raise _Fail(f"model.download must be true or false, got {opts['model.download']!r}")
        kw["download"] = opts["model.download"].lower() == "true"
    if "features" in opts and "features.indices" in opts:
        raise _Fail("give features=N or features.indices=[...], not both")
    if "features" in opts:
        kw["features"] = "all" if opts["features"] == "all" else _number(opts, "features", int, 1)
    if "features.indices" in opts:
        text = opts["features.indices"].strip().removeprefix("[").removesuffix("]")
        try:
            kw["features"] = [int(i) for i in text.split(",") if i.strip()]
        except ValueError:
            raise _Fail(f"features.indices must be a list of integers like [0,5,7], got "
                        f"{opts['features.indices']!r}") from None
    if "k" in opts:
        kw["k"] = _number(opts, "k", float, 0)
    if "critical_dim" in opts:
        kw["critical_dim"] = _number(opts, "critical_dim", int, 1)
    return kw


def cmd_invert(args: list[str]) -> int:
    """`ifv invert IMAGE... [KEY=VALUE ...]`: Grad-IFV (Opt. (3)) on the user's images."""
    from collections import Counter

    from ifv.api import invert
    from ifv.errors import UserError
    from ifv.store import write_json

    if any(a in ("-h", "--help") for a in args):
        print("usage: ifv invert IMAGE... [KEY=VALUE ...]\n\nIMAGE: .pt, .npy or .png in "
              "[0, 1], (C, H, W) or (H, W, C), optionally batched (B first)\n\nkeys:")
        for key, text in INVERT_KEYS.items():
            print(f"  {key:17s} {text}")
        return 0
    images, opts = [], {}
    for a in args:
        key, sep, val = a.partition("=")
        if Path(a).exists() or not (sep or a.startswith("-")):
            images.append(a)
        elif not sep:
            raise _Fail(f"unknown option {a!r}; use KEY=VALUE (ifv invert --help)")
        elif key not in INVERT_KEYS:
            raise _Fail(f"unknown key {key!r} in {a!r}; valid: {', '.join(INVERT_KEYS)}")
        else:
            opts[key] = val
    if not images:
        raise _Fail("which images? use ifv invert IMAGE... [KEY=VALUE ...] (ifv invert --help)")
    top = _number(opts, "top", int, 1) if "top" in opts else 5
    try:
        res = invert(images, **_invert_kwargs(opts))
    except UserError as exc:
        raise _Fail(str(exc)) from None
    s = res.settings
    per_file = Counter(f for f, _ in res.sources)
    print(f"Grad-IFV on {s['model']}.{s['layer']}: {s['n_f']} features, {s['aggregation']}, "
          f"k={s['k']:g}, P_{s['param']['name']}, dim C = {s['critical_dim']}")
    for (src, idx), best, r, nxt in zip(res.sources, res.top(top), res.residual.tolist(),
                                        res.next_residual.tolist(), strict=True):
        print(f"{src}{f'[{idx}]' if per_file[src] > 1 else ''}: residual {r:.2e} (next {nxt:.2e})")
        for feature, weight in best:
            print(f"  feature {feature:5d}  {weight:+.4f}")
    out = write_json(opts.get("out") or "ifv-invert.json", res.to_dict(top))
    print("residual: ||x*^T Z_k Dy|| / ||Z_k Dy||, 0 at an optimum of f_x*; the prediction is "
          "well determined where it lies far below next (the runner-up's)")
    print(f"wrote {out}")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "list": cmd_list, "invert": cmd_invert}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ifv`` command."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"ifv: error: unknown command {cmd!r}; valid: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except _Fail as exc:
        print(f"ifv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifv: interrupted; finished stages are cached and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

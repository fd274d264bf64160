"""The ``ifv`` command: run, train, list. Hydra is the shell around the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

USAGE = """\
usage: ifv COMMAND [hydra overrides]

commands:
  run [-m] [KEY=VALUE ...]   run an experiment of the paper (default: experiment=dnde_simple);
                             -m runs a sweep, e.g. ifv run -m k=0,2 features=n32,n64
  train model=NAME [...]     train a zoo model into the model cache (offline tier; paper
                             tier: densenet_cifar[_ex4] on CIFAR-10 at model.data.root)
  list                       experiments, models (tier, weights present) and their layers
  --help                     this text; `ifv run --help` shows the composed config

examples:
  ifv run                                   # the simple case on the offline DenseNet
  ifv run experiment=dnde_simple k=0 profile=quick
  ifv run layer=dense2 features=n32 aggregation=mean
  ifv train model=densenet_patterns model.train.epochs=8

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


class _Fail(Exception):
    """A user error detected by the CLI before anything runs."""


def choices(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _open_train(args: list[str]) -> list[str]:
    """``model.train.KEY=V`` adds KEY to the (empty) recipe-override dict: Hydra needs ``++``."""
    return [f"++{a}" if a.startswith("model.train.") else a for a in args]


def _check_overrides(args: list[str]) -> list[str]:
    """Parse the overrides; check group choices; return them with sweeps cut to one value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except OverrideParseException as exc:
        first = str(exc).strip().splitlines()[0]
        raise _Fail(f"malformed override: {first}; use KEY=VALUE, e.g. k=2 or "
                    "experiment=dnde_simple") from None
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


def compose(overrides: list[str]) -> Any:
    """The composed config for ``overrides`` (sweeps cut to their first value)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    single = _check_overrides(_open_train(overrides))
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=single)
        OmegaConf.to_container(cfg, resolve=True)
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
    try:
        exp = pipeline.from_config(cfg)
        df = pipeline.run(exp, out, stage_cache=cfg.get("stage_cache"),
                          progress=bool(cfg.get("progress", True)))
    except UserError as exc:
        print(f"ifv: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(pipeline.summary(df))
    print(f"results: {out / 'results.parquet'}")
    print(f"figures: {out}/angle_ssim.png, alpha.png, realizations.png, ssim_kde.png")


def cmd_run(args: list[str]) -> int:
    """`ifv run`: validate, then hand over to Hydra (which runs sweeps with -m)."""
    import hydra

    if any(a in ("-h", "--help", "--cfg", "-c", "--info", "--hydra-help") for a in args):
        passthrough = args
    else:
        overrides = [a for a in args if not a.startswith("-")]
        from ifv import pipeline
        from ifv.errors import UserError

        cfg = compose(overrides)
        try:
            pipeline.from_config(cfg)
        except UserError as exc:
            raise _Fail(str(exc)) from None
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


COMMANDS = {"run": cmd_run, "train": cmd_train, "list": cmd_list}


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

"""The ``ifv`` command: run, train, list, invert. A thin shell: Hydra composes and launches,
``ifv.run.setting`` validates, ``ifv.run.pipeline`` and ``ifv.faces.api`` compute."""

from __future__ import annotations

import copy
import itertools
import os
import shutil
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, open_dict

from ifv.errors import UserError
from ifv.faces.config import CONF, choices, compose, expand, one_line, user_dir
from ifv.files import check_file, check_outputs, check_writable
from ifv.run.store import StageCache

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
                             tier: densenet_cifar[_ex4] on CIFAR-10 at model.data.root);
                             device=auto|cpu|cuda|cuda:N
  list                       experiments, models (tier, weights present) and their layers
  layers model=NAME          where a network can be tapped: each module's output shape and
                             the aggregations that fit it; `ifv layers --help`
  invert IMAGE... [KEY=VALUE ...]
                             Grad-IFV on your images (.pt, .npy, .png in [0, 1]): the
                             predicted objective's top features; the same overrides as
                             run, plus invert.*; `ifv invert --help`
  compare [comparison=NAME] [KEY=VALUE ...]
                             network A against B: FV on A, Grad-IFV on B, the matching
                             beside the correlation baseline; `ifv compare --help`
  --help                     this text; `ifv run --help` shows the composed config
  --version                  the installed version

examples:
  ifv run                                   # the simple case on the offline DenseNet
  ifv run experiment=dnde_simple k=0 profile=quick
  ifv run layer=dense2 features=n32 aggregation=mean
  ifv run experiment=gn4c_simple            # S4 experiment 1 (exp01) on the offline GoogLeNet
  ifv run experiment=exp07 profile=paper    # the n_f sweep: the paper's points and step counts
  ifv run experiment=exp11 hydra/launcher=joblib    # the sweep's jobs in parallel
  ifv run experiment=exp07 scale=paper profile=paper device=cuda
                                            # 32..512 features of the 224 px stand-in, on a GPU
  ifv train model=densenet_patterns model.train.epochs=8
  ifv invert a.png b.npy features.n=32 invert.critical=outputs/RUN/critical.parquet

Results go to outputs/<experiment>/<time>/ (results.parquet, critical.parquet, PNG figures).
Caches: $IFV_CACHE (default ~/.cache/ifv): models/ and stages/.
"""

# conf/hydra/launcher/joblib.yaml has the name of the joblib plugin's own config, which Hydra
# 1.3 then merges in as its schema with a deprecation warning (in every job process too). The
# file lists every field, so it keeps working when Hydra drops that matching.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against")

# A sweep an experiment carries is resolved from the config of one job: a command-line sweep
# over these keys would leave it stale, so the two cannot nest.
_SWEEP_INPUTS = ("experiment", "tier", "profile", "features")
_HELP = ("-h", "--help", "--cfg", "-c", "--info", "--hydra-help")
# What Hydra writes into each job's folder, besides the run's outputs (its log is named
# after the task's module, this one), and into a sweep's folder.
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "cli.log")
SWEEP_FILES = ("multirun.yaml",)
# Set for the jobs of an `ifv run` whose folder (or sweep folder) is made by this run: a job
# that fails before its work removes its folder again.
_FRESH = "IFV_FRESH_OUTPUT"


def _parse(args: list[str]) -> list[Any]:
    """Hydra's parse of command-line overrides; a malformed one is a one-line user error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(args)
    except Exception as exc:  # noqa: BLE001 - Hydra's parse error becomes one line
        raise UserError(one_line(exc)) from None


def _values(o: Any) -> list[Any]:
    return list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]


def config_sweep(cfg: Any, overrides: list[str]) -> dict[str, str]:
    """The sweep a composed config carries itself (``hydra.sweeper.params``, e.g. the n_f
    points of exp07 for its tier and profile), less the keys the command line sets."""
    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    if not params:
        return {}
    given = {o.key_or_group for o in _parse(overrides)}
    resolved = OmegaConf.to_container(params, resolve=True)
    return {str(k): str(v) for k, v in resolved.items() if k not in given}


def _jobs(overrides: list[str]) -> tuple[Any, dict[str, str], int]:
    """Validate every job of ``ifv run OVERRIDES``: the product of the command line's sweeps
    and of the sweep a config carries. Returns the first job's config, the carried sweep and
    the number of jobs."""
    from ifv.run.setting import Experiment

    parsed = _parse(overrides)
    swept = [o for o in parsed if o.is_sweep_override()]
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    first, carried, n_jobs, networks = None, {}, 0, set()
    for combo in itertools.product(*(_values(o) for o in swept)):
        job = [*fixed, *(f"{o.get_key_element()}={v}" for o, v in zip(swept, combo, strict=True))]
        cfg = compose(job, with_hydra=True)
        sweep = config_sweep(cfg, overrides)
        outer = [o.key_or_group for o in swept if o.key_or_group in _SWEEP_INPUTS]
        if sweep and outer:
            raise UserError(f"experiment {cfg.name} sweeps {', '.join(sweep)} itself (points "
                            f"per tier and profile); it cannot run inside a sweep over "
                            f"{', '.join(outer)}: run one `ifv run` per value")
        keys = list(sweep)
        for point in itertools.product(*(_values(o) for o in _parse(
                [f"{k}={v}" for k, v in sweep.items()]))):
            one = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if point else cfg
            with open_dict(one):
                for key, value in zip(keys, point, strict=True):
                    OmegaConf.update(one, key, value)
            try:
                s = Experiment.from_config(one).setting
                network = (s.model_name, s.spec and s.spec.key(), s.weights, s.cache_dir)
                if network not in networks:  # its weights read once, before any job starts
                    s.check_network()
                    networks.add(network)
            except UserError as exc:
                where = " ".join(f"{k}={v}" for k, v in zip(keys, point, strict=True))
                named = not where or str(exc).startswith(where)  # the message names the point
                raise UserError(str(exc) if named else f"{where}: {exc}") from None
            n_jobs += 1
        if first is None:
            first, carried = cfg, sweep
    return first, carried, n_jobs


def _run_task(cfg: Any) -> None:
    """One job of `ifv run` (called by Hydra, once per sweep point)."""
    from hydra.core.hydra_config import HydraConfig

    from ifv.run import pipeline
    from ifv.run.setting import Experiment

    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        exp = Experiment.from_config(cfg)
        df = pipeline.run(exp, out, stage_cache=cfg.stage_cache, progress=cfg.progress,
                          figures=cfg.figures)
    except UserError as exc:
        print(f"ifv: error: {exc}", file=sys.stderr)
        if os.environ.get(_FRESH) and not any((out / n).exists() for n in pipeline.TABLES):
            shutil.rmtree(out, ignore_errors=True)  # made by this run, before its work
        sys.exit(2)
    print(pipeline.summary(df))
    print(f"results: {out / 'results.parquet'}")
    if cfg.figures:
        print(f"figures: {out}/angle_ssim.png, alpha.png, realizations.png, ssim_kde.png")


def _job_dirs(cfg: Any, n_jobs: int) -> list[Path]:
    """The folders of a sweep's jobs: hydra.sweep.dir / hydra.sweep.subdir of each job's
    number."""
    cfg = copy.deepcopy(cfg)
    dirs = []
    for num in range(n_jobs):
        with open_dict(cfg):
            cfg.hydra.job.num = num
        dirs.append(Path(cfg.hydra.sweep.dir).expanduser() / str(cfg.hydra.sweep.subdir))
    return dirs


def cmd_run(args: list[str]) -> int:
    """`ifv run`: validate every job, then hand over to Hydra.

    A sweep on the command line, or one an experiment carries (``hydra.sweeper.params``: the
    n_f points of exp06, exp07, exp11, exp12), runs as a Hydra multirun, -m or not. Setting
    a swept key on the command line (features.n=64) runs that value alone.
    """
    import hydra

    from ifv.run.pipeline import outputs

    if not any(a in _HELP for a in args):
        overrides = [a for a in args if not a.startswith("-")]
        cfg, carried, n_jobs = _jobs(overrides)
        if carried:
            print(f"{cfg.name}: a sweep over "
                  + "; ".join(f"{k} = {v.replace(',', ', ')}" for k, v in carried.items())
                  + f" (tier {cfg.tier}, profile {cfg.profile_name}): "
                  f"{n_jobs} points, Hydra multirun")
        multirun = n_jobs > 1 or bool(carried) or any(a in ("-m", "--multirun") for a in args)
        if multirun:
            args = ["-m", *[a for a in args if a not in ("-m", "--multirun")]]
        folder = Path(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir).expanduser()
        if multirun:
            check_outputs(folder, SWEEP_FILES, "hydra.sweep.dir")
            for job in _job_dirs(cfg, n_jobs):
                check_outputs(job, [*outputs(cfg.figures), *HYDRA_FILES], "a job's folder")
        else:
            check_outputs(folder, [*outputs(cfg.figures), *HYDRA_FILES], "hydra.run.dir")
        check_writable(StageCache(cfg.stage_cache).root, "stage_cache")
        os.environ[_FRESH] = "" if folder.exists() or folder.is_symlink() else "1"
    main = hydra.main(config_path=str(CONF), config_name="config", version_base=None)(_run_task)
    sys.argv = ["ifv run", *expand(args)]
    main()
    return 0


TRAIN_HELP = """\
usage: ifv train model=NAME [model.train.KEY=VALUE ...] [model.data.root=DATA] [device=...]

Trains a zoo model (ifv list) into the model cache (model.cache_dir, default
$IFV_CACHE/models); a stopped training resumes after its last finished epoch.
  model.train.KEY=V     the recipe: epochs, n_train, n_test, batch_size, lr, seed, ...
  model.data.root=DATA  CIFAR-10 for the real and paper tiers: a folder or zip in the
                        ImageFolder layout, or the python version (model.data.download=true
                        fetches it there)
  device=auto|cpu|cuda|cuda:N, progress=false (no bar; the time estimate is still printed)
"""


def cmd_train(args: list[str]) -> int:
    """`ifv train model=NAME [model.train.KEY=VALUE ...] [device=...]`."""
    from ifv.device import resolve
    from ifv.zoo import get_spec
    from ifv.zoo.train import train

    if any(a in ("-h", "--help") for a in args):
        print(TRAIN_HELP, end="")
        return 0
    if not any(a.startswith("model=") for a in args):
        raise UserError(f"which model? use ifv train model=NAME; valid: "
                        f"{', '.join(choices('model'))}")
    cfg = compose(args)
    m = cfg.model
    spec = get_spec(m.name).with_recipe(**OmegaConf.to_container(m.train, resolve=True))
    device = resolve(cfg.device)
    check_outputs(spec.checkpoint(m.cache_dir).parent,
                  [p.name for p in spec.checkpoint_files(m.cache_dir)], "the model cache")
    rec = train(spec, m.cache_dir, progress=cfg.progress, data_root=m.data.root,
                download=m.data.download, device=str(device),
                log=lambda line: print(line, flush=True))
    print(f"trained {rec['model']} ({rec['tier']} tier) in {rec['train_seconds']:.0f} s "
          f"on {rec['device']} ({rec['n_train']} training images)")
    if rec.get("task") == "superres":
        from ifv.zoo.models.srnet import upscaling_summary

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
    from ifv.zoo import MODELS

    cache = None
    for a in args:
        if a.startswith("model.cache_dir="):
            cache = a.split("=", 1)[1]
    print("experiments: " + ", ".join(choices("experiment")))
    print("comparisons: " + ", ".join(choices("comparison")) + " (ifv compare comparison=NAME)")
    print("profiles:    " + ", ".join(choices("profile")))
    print("aggregation: " + ", ".join(choices("aggregation")))
    print("transforms:  " + ", ".join(choices("transforms")))
    print("priors:      " + ", ".join(choices("prior")))
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
    own = [n for n in choices("model") if n not in MODELS and n not in ("auto", "source")]
    where = user_dir()
    print(f"your models ({where / 'model' if where else '$IFV_CONFIG_DIR/model'}/NAME.yaml; "
          "ifv layers model=NAME shows their layers): " + (", ".join(own) or "none"))
    print("  any network: model=torchvision:NAME, timm:NAME, onnx:PATH, tflite:PATH, or "
          "model._target_=pkg.module.callable with model.args.*, model.weights=PATH, "
          "model.input_size=[C,H,W]")
    return 0


LAYERS_HELP = """\
usage: ifv layers model=NAME [model.input_size=[C,H,W]] [model.args.KEY=V ...]

Every module of a network with its output shape for one input, and the aggregations that
fit it (tap it with layer=NAME aggregation=AGG). NAME: a zoo name (ifv list),
torchvision:NAME, timm:NAME, onnx:PATH, tflite:PATH, or your code:
model._target_=pkg.module.callable with its model.args.* and model.input_size.
"""


def cmd_layers(args: list[str]) -> int:
    """`ifv layers model=... [model.input_size=...]`: every tappable module of a network
    with its output shape at the input size."""
    from ifv.math.objective import aggregations_for
    from ifv.run.setting import model_options
    from ifv.zoo.registry import model_entry
    from ifv.zoo.sources import layers, probe

    if any(a in ("-h", "--help") for a in args):
        print(LAYERS_HELP, end="")
        return 0
    if not any(a.startswith(("model=", "model._target_=")) for a in args):
        raise UserError("which model? use ifv layers model=NAME (a zoo name, torchvision:NAME, "
                        "timm:NAME, onnx:PATH, tflite:PATH) or "
                        "model._target_=pkg.module.callable")
    options = model_options(compose(args).model)
    spec = model_entry(options["model"], input_size=options["input_size"],
                       normalize=options["normalize"], weights_key=options["weights_key"])
    shape = (spec.in_channels, *spec.input_size)
    found = (layers(spec.source, shape) if spec.source is not None
             else probe(spec.build().eval(), shape, spec.name))
    print(f"{spec.name}: the output of each module for an input of {list(shape)} and the "
          "aggregations that fit it (tap it with layer=NAME aggregation=AGG; a module called "
          "twice gives its first output)")
    for name, out in found.items():
        fits = aggregations_for(out)
        print(f"  {name:40s} {str(list(out)):20s} "
              + (", ".join(fits) if fits else "none: not tappable (needs (C,) or (C, H, W))"))
    return 0


INVERT_HELP = """\
usage: ifv invert IMAGE... [KEY=VALUE ...]

IMAGE: .pt, .npy or .png in [0, 1], (C, H, W) or (H, W, C), optionally batched (B first).
The setting takes the same overrides as `ifv run` (default: the make demo setting):
  model=NAME | network=NAME tier=offline|paper scale=small|paper, model.weights=PATH,
  model.cache_dir=DIR, model.download=true, layer=NAME, features=n64 | features.n=N|all |
  features.indices=[0,5,7], aggregation=NAME, k=K, param=rgb|fft|ffte,
  device=auto|cpu|cuda|cuda:N, tf32=false|true, jacobian.method=auto|loop|batched|vmap,
  transforms=none|standard|lucid|lucent|custom (transforms.steps=[...]), prior=none|l2|tv|blur
  (prior.weight=W): how the images were made; with either, the robust solver inverts them
  with inversion.samples=K (32) transform samples of inversion.seed (docs/robust-ifv.md).
  A Lucid/Lucent loop (a fresh random transform each Adam step, no final L-BFGS) does
  not end at a stationary point, and the robust solver is unreliable on its last image.
  Invert the mean of the loop's last quarter of iterates instead (ifv's loop:
  fv.adam_average=0.25; another tool's: the mean of its images over those steps, e.g.
  Lucent's render_vis with thresholds over the last steps). That was measured to work in
  ifv's loop with param=rgb, not with Lucent's own defaults (colour-decorrelated FFT):
  docs/robust-ifv.md Sec. 9
and keys of its own:
  invert.input         image (default: files in [0, 1]) or params (.pt/.npy of P's variables v)
  invert.critical      a run's critical.parquet: C is its best critical space
  invert.critical_dim  with invert.critical: the critical space of this dimension instead
  invert.top           features printed per image; default 5
  invert.out           JSON file written; default ifv-invert.json
"""


def cmd_invert(args: list[str]) -> int:
    """`ifv invert IMAGE... [KEY=VALUE ...]`: Grad-IFV (Opt. (3)) on the user's images."""
    from ifv.faces.api import invert_setting
    from ifv.files import write_json
    from ifv.math.fv import FVSettings
    from ifv.math.kink import Kinks
    from ifv.math.robust import Robust
    from ifv.run.setting import Setting
    from ifv.validate import count

    if any(a in ("-h", "--help") for a in args):
        print(INVERT_HELP, end="")
        return 0
    images = [a for a in args if Path(a).exists() or "=" not in a]
    if not images:
        raise UserError("which images? use ifv invert IMAGE... [KEY=VALUE ...] "
                        "(ifv invert --help)")
    flags = [a for a in images if a.startswith("-") and not Path(a).exists()]
    if flags:
        raise UserError(f"unknown option {flags[0]!r}; use KEY=VALUE (ifv invert --help)")
    cfg = compose([a for a in args if a not in images])
    inv = cfg.invert
    top = count("invert.top", inv.top, 1)
    if inv.critical_dim is not None:
        count("invert.critical_dim", inv.critical_dim, 1)
    check_file(inv.out, "invert.out")
    res = invert_setting(images, Setting.from_config(cfg), inv.critical,
                         critical_dim=inv.critical_dim, input=inv.input,
                         method=cfg.jacobian.method, robust=Robust.from_config(cfg.inversion),
                         kinks=Kinks.from_config(cfg.kinks),
                         fv=FVSettings.from_config(cfg.fv) if cfg.inversion.draws == "fv" else None,
                         seed=count("seed", cfg.seed), progress=cfg.progress,
                         critical_key="invert.critical")
    s = res.settings
    per_file = Counter(f for f, _ in res.sources)
    print(f"Grad-IFV on {s['model']}.{s['layer']}: {s['n_f']} features, {s['aggregation']}, "
          f"k={s['k']:g}, P_{s['param']['name']}, dim C = {s['critical_dim']}"
          + (f"; robust: transforms {s['transforms']}, prior {s['prior']['name']}, "
             f"K = {s['inversion']['samples']}" if s["inversion"] else "")
          + (f"; tangent condition at kinks, K = {s['kinks']['samples']}"
             if s["kinks"]["samples"] else ""))
    for (src, idx), best, r, nxt, dim in zip(res.sources, res.top(top), res.residual.tolist(),
                                             res.next_residual.tolist(),
                                             res.kink_dim.tolist(), strict=True):
        print(f"{src}{f'[{idx}]' if per_file[src] > 1 else ''}: residual {r:.2e} (next "
              f"{nxt:.2e})" + (f", dim N {dim}" if s["kinks"]["samples"] else ""))
        for feature, weight in best:
            print(f"  feature {feature:5d}  {weight:+.4f}")
    out = write_json(inv.out, res.to_dict(top))
    print("residual: ||x*^T Z_k Dy|| / ||Z_k Dy||, 0 at an optimum of f_x*; the prediction is "
          "well determined where it lies far below next (the runner-up's)")
    print(f"wrote {out}")
    return 0


COMPARE_HELP = """\
usage: ifv compare [comparison=NAME] [KEY=VALUE ...]

Network A is the setting of `ifv run` (model=, layer=, features=, aggregation=, k=, param=,
fv.*, seed=, device=); B is A's network with a planted relation or a model of its own:
  comparison=NAME       a prepared comparison (ifv list): dnde_permuted, dnde_seeds, ...
  compare.planted       permuted | rescaled: B = A's network with the tapped channels
                        permuted within their groups (and rescaled: compare.scale=S)
  compare.b_model, compare.b_weights, compare.b_train.KEY=V (e.g. seed=1), compare.b_layer,
  compare.b_features    B's own model (null: A's), recipe overrides, layer and features
  compare.objectives    canonical e_i of A: all, or N evenly spaced; compare.n_random=N more
  compare.images=[FILES]  the baseline's images (default: compare.n_images patterns)
  compare.pairs         matched pairs shown with B's own FV; compare.max_residual,
  compare.max_ratio,    compare.min_share: the confidence thresholds;
  compare.out=DIR       the output folder (default outputs/compare/NAME/TIME)
  transforms=, prior=   robust FV on A (ifv run's keys); B is inverted by the robust
                        solver under the same ones (inversion.*)
Writes compare.parquet, summary.json, correspondence.png, pairs.png (docs/compare.md).
"""


def cmd_compare(args: list[str]) -> int:
    """`ifv compare [comparison=NAME] [KEY=VALUE ...]`: network A against network B through
    FV on A and Grad-IFV on B (``ifv.faces.compare``)."""
    import time

    from ifv.faces.compare import compare
    from ifv.faces.correspondence import FILES, report, write
    from ifv.run.setting import Experiment, Setting, model_options
    from ifv.validate import plain

    if any(a in ("-h", "--help") for a in args):
        print(COMPARE_HELP, end="")
        return 0
    flags = [a for a in args if "=" not in a]
    if flags:
        raise UserError(f"unknown argument {flags[0]!r}; use KEY=VALUE (ifv compare --help)")
    cfg = compose([f"+{a}" if a.startswith("comparison=") else a for a in args])
    c = cfg.compare
    exp = Experiment.from_config(cfg)
    a = exp.setting
    own_b = any(v not in (None, {}) for v in (c.b_model, c.b_weights, c.b_layer, c.b_features)
                ) or bool(c.b_train)
    b = None
    if c.planted is not None and own_b:
        raise UserError("compare.planted makes B from A's network; drop compare.b_*")
    if c.planted is None:
        if not own_b:
            raise UserError("which B? give comparison=NAME (ifv list), compare.planted="
                            "permuted|rescaled, or B's own compare.b_model / compare.b_train")
        f = cfg.features
        features, features_key = (
            (c.b_features, "compare.b_features") if c.b_features is not None else
            (f.indices, "features.indices") if f.indices is not None else (f.n, "features.n"))
        keys = {"model": "compare.b_model" if c.b_model else "model",
                "layer": "compare.b_layer" if c.b_layer else "layer",
                "features": features_key, "weights": "compare.b_weights"}
        # B's model: a zoo name, a source or a model you registered (its own model.* node),
        # else A's network; its weights and recipe from compare.b_*
        if c.b_model and ":" not in c.b_model and c.b_model not in choices("model"):
            raise UserError(f"unknown compare.b_model {c.b_model!r}; valid: "
                            f"{', '.join(choices('model'))}, torchvision:NAME, timm:NAME")
        node = compose([f"model={c.b_model}"]).model if c.b_model else cfg.model
        options = model_options(node)
        if options["input_size"] is None:  # B takes A's inputs unless its node says otherwise
            options["input_size"] = plain(cfg.model.input_size)
        b = Setting.make(**{**options, "weights": c.b_weights or (
                             node.weights if c.b_model else None),
                            "train": plain(c.b_train), "cache_dir": cfg.model.cache_dir},
                         layer=c.b_layer or cfg.layer, features=plain(features),
                         aggregation=cfg.aggregation.name, k=cfg.k, param=plain(cfg.param),
                         device=cfg.device, tf32=cfg.tf32, transforms=a.transforms,
                         prior=a.prior, keys=keys)
    out = Path(c.out or f"outputs/compare/{c.name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    check_outputs(out, FILES, "compare.out")
    cache = StageCache(cfg.stage_cache).root
    check_writable(cache, "stage_cache")
    comp = compare(a, b, planted=c.planted, scale=c.scale, objectives=plain(c.objectives),
                   n_random=c.n_random, fv=exp.fv, images=plain(c.images),
                   n_images=c.n_images, pairs=c.pairs, seed=exp.seed,
                   max_residual=c.max_residual, max_ratio=c.max_ratio, min_share=c.min_share,
                   method=exp.jacobian_method, max_bytes=exp.jacobian_max_bytes, cache=cache,
                   progress=cfg.progress, robust=exp.robust, kinks=exp.kinks)
    comp.settings["name"] = c.name  # what `make collect` files the comparison under
    paths = write(comp, out)
    print(report(comp.summary()))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


COMMANDS = {"run": cmd_run, "train": cmd_train, "list": cmd_list, "layers": cmd_layers,
            "invert": cmd_invert, "compare": cmd_compare}


def version() -> str:
    """``ifv VERSION``, from the installed package's metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"ifv {dist_version('ifv')}"
    except PackageNotFoundError:
        return "ifv (not installed: no package metadata)"


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so that the interpreter's final
    flush does not fail again (Python's documented handling of SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ifv`` command. Output into a pipe whose reader has closed (``ifv
    list | head -3``) ends the command quietly, with status 0."""
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 0


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"ifv: error: unknown command {cmd!r}; valid: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except UserError as exc:
        print(f"ifv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ifv: interrupted; finished stages are cached and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The 25 experiments of Supp. S4: every config (and alias) against the paper's table, in both
tiers and both profiles; each one run end to end at a tiny size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from omegaconf import OmegaConf

from ifv.faces.cli import config_sweep, main
from ifv.faces.config import choices, compose
from ifv.run.setting import Experiment
from ifv.zoo import get_spec
from paper.reference import s4_table

# Supp. S4, written out from the paper (not from the configs):
# id -> (network, layer, features, aggregation, k, parametrization); features is the paper's
# filter count, or (first, last) of an n_f sweep in steps of 32 that ends at the last.
S4: dict[int, tuple[str, str, int | tuple[int, int], str, int, str]] = {
    1: ("googlenet", "inception4c", 512, "maxpool_mean", 2, "rgb"),
    2: ("densenet", "classifier", 10, "identity", 2, "rgb"),
    3: ("densenet_ex4", "classifier", 10, "identity", 2, "rgb"),
    4: ("densenet", "classifier", 10, "identity", 0, "rgb"),
    5: ("densenet_ex4", "classifier", 10, "identity", 0, "rgb"),
    6: ("densenet", "dense3", (32, 342), "maxpool_mean", 0, "rgb"),
    7: ("googlenet", "inception4c", (32, 512), "maxpool_mean", 0, "rgb"),
    8: ("densenet", "dense3", 80, "maxpool_mean", 0, "rgb"),
    9: ("densenet", "dense3", 80, "mean", 0, "rgb"),
    10: ("densenet", "dense3", 80, "center", 0, "rgb"),
    11: ("densenet", "dense3", (32, 342), "maxpool_mean", 2, "rgb"),
    12: ("googlenet", "inception4c", (32, 512), "maxpool_mean", 2, "rgb"),
    13: ("densenet", "dense3", 80, "maxpool_mean", 2, "rgb"),
    14: ("densenet", "dense3", 80, "mean", 2, "rgb"),
    15: ("densenet", "dense3", 80, "center", 2, "rgb"),
    16: ("densenet", "dense3", 342, "maxpool_mean", 2, "rgb"),
    17: ("densenet", "dense3", 342, "maxpool_mean", 2, "fft"),
    18: ("densenet", "dense3", 342, "maxpool_mean", 2, "ffte"),
    19: ("googlenet", "inception4c", 512, "maxpool_mean", 2, "rgb"),
    20: ("googlenet", "inception4c", 512, "maxpool_mean", 2, "fft"),
    21: ("googlenet", "inception4c", 512, "maxpool_mean", 2, "ffte"),
    22: ("srnet", "block8", 64, "maxpool_mean", 2, "geometry_fixed"),
    23: ("srnet", "block8", 64, "maxpool_mean", 2, "geometry_free"),
    24: ("srnet", "block8", 64, "maxpool_mean", 0, "geometry_fixed"),
    25: ("srnet", "block8", 64, "maxpool_mean", 0, "geometry_free"),
}
CRITICAL = {2, 3, 4, 5}  # Sec. 3.5: Algorithm 1's critical spaces, 290 sampled + 10 canonical
ALIASES = {
    "gn4c_simple": 1, "dncl_k2": 2, "dn4cl_k2": 3, "dncl_k0": 4, "dn4cl_k0": 5,
    "dnde_nf_k0": 6, "gn4c_nf_k0": 7, "dnde80_maxpool_k0": 8, "dnde80_mean_k0": 9,
    "dnde80_center_k0": 10, "dnde_nf_k2": 11, "gn4c_nf_k2": 12, "dnde80_maxpool_k2": 13,
    "dnde80_mean_k2": 14, "dnde80_center_k2": 15, "dnde_rgb": 16, "dnde_fft": 17,
    "dnde_ffte": 18, "gn4c_rgb": 19, "gn4c_fft": 20, "gn4c_ffte": 21, "srnet_mask1_k2": 22,
    "srnet_maskfree_k2": 23, "srnet_mask1_k0": 24, "srnet_maskfree_k0": 25,
}
# the zoo model that plays each network in each tier (Sec. 3.1)
MODELS = {
    ("googlenet", "paper"): "googlenet", ("googlenet", "offline"): "googlenet_patterns",
    ("densenet", "paper"): "densenet_cifar", ("densenet", "offline"): "densenet_patterns",
    ("densenet_ex4", "paper"): "densenet_cifar_ex4",
    ("densenet_ex4", "offline"): "densenet_patterns_ex4",
    ("srnet", "paper"): "srnet", ("srnet", "offline"): "srnet_geometry",
}
PARAM_NAMES = {"rgb": ("RGB",), "fft": ("FFT",), "ffte": ("FFT-E",),
               "geometry_fixed": ("mask = 1",), "geometry_free": ("mask in [-1, 1]",)}
PAPER_CHANNELS = {"inception4c": 512, "classifier": 10, "dense3": 342, "block8": 64}
# (targets, FV Adam steps, FV L-BFGS steps, re-optimization steps) per profile and network:
# paper from Sec. 3.2, 3.4, 3.5, 3.7; quick as documented in conf/profile/quick.yaml
SIZES = {
    "paper": {"densenet": (300, 800, 300, 500), "densenet_ex4": (300, 800, 300, 500),
              "googlenet": (300, 3000, 500, 500), "srnet": (64, 800, 300, 500)},
    "quick": {"densenet": (32, 300, 300, 50), "densenet_ex4": (32, 300, 300, 50),
              "googlenet": (16, 200, 200, 50), "srnet": (16, 200, 200, 50)},
}
COMBOS = [(tier, profile) for tier in ("offline", "paper") for profile in ("quick", "paper")]


def scaled(n: int, layer: str, model: str) -> int:
    """The paper's count ``n`` on ``model``: the same fraction of a layer with fewer channels."""
    channels = get_spec(model).layers[layer]
    return n if channels == PAPER_CHANNELS[layer] else round(channels * n / PAPER_CHANNELS[layer])


def paper_points(first: int, last: int) -> list[int]:
    """n_f from ``first`` in steps of 32, and ``last`` (Sec. 3.6)."""
    return sorted(set(range(first, last + 1, 32)) | {last})


def job_config(cfg: Any) -> dict[str, Any]:
    """The resolved config of the job (without Hydra's run-time node)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                  resolve=True)


@pytest.mark.parametrize("i", sorted(S4))
def test_experiment_matches_its_s4_row(i: int) -> None:
    network, layer, feats, agg, k, param = S4[i]
    alias = next(a for a, j in ALIASES.items() if j == i)
    for tier, profile in COMBOS:
        args = [f"tier={tier}", f"profile={profile}"]
        cfg = compose([f"experiment=exp{i:02d}", *args], with_hydra=True)
        model = MODELS[(network, tier)]
        assert cfg.name == f"exp{i:02d}" and cfg.network == network
        sweep = config_sweep(cfg, [])
        if isinstance(feats, tuple):
            assert list(sweep) == ["features.n"]
            points = [int(p) for p in sweep["features.n"].split(",")]
            full = [scaled(p, layer, model) for p in paper_points(*feats)]
            if profile == "paper":
                assert points == full
            else:  # a few points across the range, the whole layer last
                assert 3 <= len(points) <= 4 and points == sorted(set(points))
                assert full[0] <= points[0] and points[-1] == full[-1]
            cfgs = []
            for n in points:
                one = OmegaConf.create(job_config(cfg))
                one.features.n = n
                cfgs.append((one, n))
        else:
            assert sweep == {}
            cfgs = [(cfg, scaled(feats, layer, model))]
        for c, n_f in cfgs:
            exp = Experiment.from_config(c)
            s = exp.setting
            assert (s.model_name, s.layer, exp.n_f) == (model, layer, n_f)
            assert (s.aggregation, s.k, s.param["name"]) == (agg, k, param)
            targets, adam, lbfgs, reopt = SIZES[profile][network]
            assert exp.n_random + exp.n_canonical == targets
            assert (exp.fv.adam_steps, exp.fv.lbfgs_steps, exp.reopt.adam_steps) == (
                adam, lbfgs, reopt)
            assert exp.reopt.lbfgs_steps == 0  # re-optimization is FV without L-BFGS
            assert exp.critical.search == (i in CRITICAL)
            assert exp.n_canonical == (10 if i in CRITICAL else targets // 2)
        # the row of the paper's table the config holds (paper.reference, the README) agrees
        assert (cfg.s4.k, cfg.s4.alias) == (k, alias)
        assert cfg.s4.network.lower().replace("ex4", "_ex4") == network
        assert cfg.s4.param in PARAM_NAMES[param]
        # the alias is the same experiment, under the same name
        same = compose([f"experiment={alias}", *args], with_hydra=True)
        assert job_config(same) == job_config(cfg)
        assert config_sweep(same, []) == sweep


@pytest.mark.parametrize("tier", ["offline", "paper"])
def test_quick_sweeps_share_runs_with_other_experiments(tier: str) -> None:
    """A quick sweep's points include the n_f of other experiments with the same network,
    aggregation, k and parametrization: the stage cache serves those runs once."""
    def n_f(name: str) -> int:
        return Experiment.from_config(compose([f"experiment={name}", f"tier={tier}"])).n_f

    def points(name: str) -> set[int]:
        sweep = config_sweep(compose([f"experiment={name}", f"tier={tier}"], with_hydra=True), [])
        return {int(p) for p in sweep["features.n"].split(",")}

    assert n_f("exp08") in points("exp06")                            # k = 0
    assert {n_f("exp13"), n_f("exp16")} <= points("exp11")            # k = 2
    assert n_f("exp01") in points("exp12") and n_f("exp19") == n_f("exp01")


def test_every_experiment_file_is_known() -> None:
    names = set(choices("experiment"))
    robust = {"dnde_robust", "dnde_robust_tv", "gn4c_robust", "gn4c_robust_tv"}  # issue 15
    assert {f"exp{i:02d}" for i in S4} | set(ALIASES) | {"dnde_simple"} | robust == names


def test_param_options_reach_the_parametrization() -> None:
    cfg = compose(["experiment=exp18"])
    assert dict(cfg.param) == {"name": "ffte", "init_std": 0.01, "decay_power": 1.0}
    cfg = compose(["experiment=exp18", "param.decay_power=1.5"])
    assert Experiment.from_config(cfg).setting.param["decay_power"] == 1.5


# ---- end to end, tiny -------------------------------------------------------------------

TINY = ["model.weights=random", "fv.adam_steps=3", "fv.lbfgs_steps=3", "reopt.steps=2",
        "progress=false", "figures=false"]  # the PNGs are most of a tiny run's time


@pytest.fixture(scope="module")
def stage_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One stage cache for the module's runs (experiments 1 and 19 share their stages)."""
    return tmp_path_factory.mktemp("stages")


@pytest.mark.parametrize("i", sorted(S4))
def test_tiny_run(i: int, tmp_path: Path, stage_cache: Path,
                  capsys: pytest.CaptureFixture) -> None:
    network, layer, feats, agg, k, param = S4[i]
    name = f"exp{i:02d}"
    args = ["run", f"experiment={name}", *TINY, f"stage_cache={stage_cache}",
            "sampling.n_total=4"]
    if i in CRITICAL:  # two of the ten canonical targets, to keep the run tiny
        args.append("sampling.canonical=2")
    if isinstance(feats, tuple):  # the experiment's own sweep, shrunk to two points
        args += ["features.points.small.quick='3,5'", f"hydra.sweep.dir={tmp_path}"]
        runs = {tmp_path / "0": 3, tmp_path / "1": 5}
    else:
        n_f = scaled(feats, layer, MODELS[(network, "offline")])
        if n_f > 100 or network == "srnet":  # cheap Jacobians: a few of the layer's channels
            args.append("features.n=4")
            n_f = 4
        args.append(f"hydra.run.dir={tmp_path}")
        runs = {tmp_path: n_f}
    assert main(args) == 0
    if isinstance(feats, tuple):
        assert f"{name}: a sweep over features.n = 3, 5" in capsys.readouterr().out
    for out, n_f in runs.items():
        df = pd.read_parquet(out / "results.parquet")
        row = df.iloc[0]
        assert (row.experiment, row.model, row.layer) == (name, MODELS[(network, "offline")],
                                                         layer)
        assert (row.n_f, row.aggregation, row.k, row.param) == (n_f, agg, k, param)
        assert df.experiment.nunique() == 1 and df.angle_pred.between(0, 90).all()
        assert not list(out.glob("*.png"))  # figures=false
        if i in CRITICAL:  # R^10 and the critical spaces Algorithm 1 found, if any
            assert (df.critical_dim.max(), df["sample"].nunique()) == (10, 4)


def test_a_swept_key_on_the_command_line_runs_alone(tmp_path: Path,
                                                    stage_cache: Path) -> None:
    out = tmp_path / "one"
    assert main(["run", "experiment=dnde_nf_k0", "features.n=3", "sampling.n_total=4", *TINY,
                 f"stage_cache={stage_cache}", f"hydra.run.dir={out}"]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert (df.experiment.iloc[0], df.n_f.iloc[0], df.k.iloc[0]) == ("exp06", 3, 0)


@pytest.mark.parametrize(("args", "expect"), [
    (["-m", "experiment=exp06,exp11"], "experiment exp06 sweeps features.n itself"),
    (["-m", "experiment=exp01,exp07"], "experiment exp07 sweeps features.n itself"),
    (["-m", "experiment=exp12", "tier=offline,paper"], "inside a sweep over tier"),
    (["experiment=exp06", "features.points.small.quick='3,500'"],
     "features.n=500 is larger than the 69 channels"),
])
def test_sweep_errors_are_one_line(args: list[str], expect: str,
                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "model.weights=random", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1


def test_the_readme_table_is_the_configs() -> None:
    """The README's table of the 25 experiments is generated from their configs' rows."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert s4_table() in readme


def test_make_reproduce_runs_every_experiment_of_the_configs() -> None:
    """The Makefile takes the experiments, the robust ones and the comparisons from conf/."""
    make = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "$(wildcard ifv/conf/experiment/exp*.yaml)" in make
    assert "$(wildcard ifv/conf/experiment/*_robust*.yaml)" in make
    assert "$(wildcard ifv/conf/comparison/*.yaml)" in make



def test_keys_of_empty_dicts_are_set_from_the_command_line() -> None:
    """model.train.*, model.args.* and compare.b_train.* add their key (the README's forms)."""
    cfg = compose(["model.train.epochs=3", "model.args.width=8", "compare.b_train.seed=1"])
    assert (cfg.model.train.epochs, cfg.model.args.width, cfg.compare.b_train.seed) == (3, 8, 1)

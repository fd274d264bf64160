"""scale=paper: the paper-sized stand-ins, the sweeps' points by layer width, the paper
profile's batches, training on the CPU, and the GPU check's requirements."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ifv.errors import UserError
from ifv.faces.cli import config_sweep, main
from ifv.faces.config import compose
from ifv.math.objective import tap
from ifv.run.setting import Experiment
from ifv.zoo import get_spec, load
from ifv.zoo.registry import NETWORKS, model_for, widths

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("network", "small", "paper"), [
    ("densenet", "densenet_patterns", "densenet_patterns_bc100"),
    ("densenet_ex4", "densenet_patterns_ex4", "densenet_patterns_bc100_ex4"),
    ("googlenet", "googlenet_patterns", "googlenet_patterns_224"),
    ("srnet", "srnet_geometry", "srnet_geometry")])
def test_scale_picks_the_offline_stand_in(network: str, small: str, paper: str) -> None:
    assert model_for(network, "offline") == small
    assert model_for(network, "offline", "paper") == paper
    assert model_for(network, "paper", "paper") == model_for(network, "paper") \
        == NETWORKS[network]["paper"]
    assert widths("offline", "small") == "small"
    assert widths("offline", "paper") == widths("paper", "small") == "paper"
    with pytest.raises(UserError, match="unknown scale 'big'; valid: small, paper"):
        model_for(network, "offline", "big")


@pytest.mark.parametrize(("model", "layer", "channels", "size", "spatial"), [
    ("densenet_patterns_bc100", "dense3", 342, 32, 8),
    ("googlenet_patterns_224", "inception4c", 512, 224, 14)])
def test_paper_sized_stand_ins_have_the_papers_widths(model: str, layer: str, channels: int,
                                                      size: int, spatial: int) -> None:
    spec = get_spec(model)
    assert spec.layers[layer] == channels and spec.input_size == (size, size)
    assert spec.tier == "offline" and "activation" not in spec.arch_kwargs  # ReLU
    small = get_spec(model_for("densenet" if "dense" in model else "googlenet", "offline"))
    assert spec.recipe == small.recipe  # the small ones' recipes
    with torch.no_grad():
        a = tap(load(spec, weights="random"), layer, torch.rand(1, 3, size, size))
    assert a.shape == (1, channels, spatial, spatial)


def test_sweeps_take_the_papers_points_on_paper_sized_stand_ins() -> None:
    for exp, last in (("exp11", "342"), ("exp07", "512")):
        cfg = compose([f"experiment={exp}", "scale=paper", "profile=paper"], with_hydra=True)
        points = config_sweep(cfg, [])["features.n"].split(",")
        assert points[0] == "32" and points[-1] == last
    cfg = compose(["experiment=exp11", "scale=paper"], with_hydra=True)
    assert config_sweep(cfg, [])["features.n"] == "80,160,342"
    assert compose(["experiment=exp09", "scale=paper"]).features.n == 80
    assert compose(["experiment=exp09"]).features.n == 16


def test_the_paper_profile_takes_its_batches_from_the_profile() -> None:
    exp = Experiment.from_config(compose(["experiment=exp01", "profile=paper", "scale=paper"]))
    assert exp.setting.spec.name == "googlenet_patterns_224"
    assert (exp.fv.adam_steps, exp.fv.lbfgs_steps, exp.n_random + exp.n_canonical) == \
        (3000, 500, 300)  # the paper's step and sample counts stay as they are
    assert (exp.fv.batch_size, exp.jacobian_batch, exp.reopt.batch_size) == (100, 50, 150)
    assert exp.jacobian_max_bytes == 16 << 30 and exp.jacobian_method == "auto"
    quick = Experiment.from_config(compose([]))
    assert (quick.fv.batch_size, quick.jacobian_batch, quick.reopt.batch_size) == (32, 32, 64)


def test_train_a_paper_sized_stand_in_on_the_cpu(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    tiny = ["model.train.n_train=4", "model.train.n_test=4", "model.train.epochs=1",
            "model.train.batch_size=4", f"model.cache_dir={tmp_path}", "progress=false"]
    assert main(["train", "model=googlenet_patterns_224", "device=cpu", *tiny]) == 0
    assert "on cpu (4 training images)" in capsys.readouterr().out
    assert len(list((tmp_path / "models").glob("googlenet_patterns_224-*.pt"))) == 1
    if not torch.cuda.is_available():
        assert main(["train", "model=googlenet_patterns_224", "device=cuda", *tiny]) == 2
        assert "valid here: auto, cpu" in capsys.readouterr().err


def test_the_gpu_checks_requirements_leave_the_nodes_torch() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "requirements.py"),
                          str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                         check=True).stdout.split()
    names = {r.split("=")[0].split(">")[0].split("<")[0].lower() for r in out}
    assert "torch" not in names and "torchvision" not in names
    assert {"hydra-core", "filelock", "pytest", "pandas"} <= names

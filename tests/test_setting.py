"""ifv.run.setting: one validation for every face, one model-provisioning policy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ifv
from ifv.errors import UserError
from ifv.faces.cli import main
from ifv.run.setting import Setting
from ifv.zoo import train as train_module
from ifv.zoo.registry import ModelSpec
from ifv.zoo.train import save_checkpoint


@pytest.mark.parametrize(("kwargs", "expect"), [
    ({"k": math.inf}, "k must be a finite number >= 0, got inf"),
    ({"k": math.nan}, "k must be a finite number >= 0, got nan"),
    ({"k": -0.5}, "k must be a finite number >= 0"),
    ({"k": True}, "k must be a finite number >= 0, got True"),
    ({"aggregation": "median"}, "unknown aggregation 'median'; valid: maxpool_mean, mean"),
    ({"param": "jpeg"}, "unknown param 'jpeg'; valid: rgb, fft, ffte"),
    ({"param": {"name": "ffte", "decay_power": -1}}, "param.decay_power must be a finite"),
    ({"param": {"name": "rgb", "colour": 1}}, "invalid options for param rgb"),
    ({"features": 0}, "features must be a positive number, a list of indices or all"),
    ({"features": "some"}, "features must be a positive number"),
    ({"features": [0, "a"]}, "features must be a positive number"),
    ({"features": 70}, "features=70 is larger than the 69 channels"),
    ({"features": [3, 69]}, "feature indices [69] out of range"),
    ({"layer": "nope"}, "has no layer 'nope'; valid: conv0"),
    ({"model": "nope"}, "unknown model 'nope'; valid: densenet_patterns"),
    ({"size": (64, 64)}, "densenet_patterns takes 32x32 inputs, got size=(64, 64)"),
    ({"weights": "/no/such.pt"}, "no weights file /no/such.pt"),
    ({"features": [0, 1.5]}, "features must be a positive number, a list of indices or all"),
    ({"features": [True, 2]}, "features must be a positive number, a list of indices or all"),
    ({"features": [4, 2, 4, 2]}, "features: feature indices [2, 4] repeated; select each "
     "channel of densenet_patterns.dense3 at most once"),
    ({"features": []}, "features must select at least one channel"),
    ({"param": "geometry_fixed"}, "param=geometry_fixed makes 5-channel inputs, but "
     "model=densenet_patterns takes 3-channel ones; valid param for densenet_patterns: rgb, "
     "fft, ffte"),
    ({"model": "srnet_geometry", "layer": "block8", "param": "ffte"},
     "param=ffte makes 3-channel inputs, but model=srnet_geometry takes 5-channel ones"),
    ({"layer": "nope", "keys": {"layer": "compare.b_layer"}},
     "compare.b_layer: model 'densenet_patterns' has no layer 'nope'"),
    ({"features": 99, "keys": {"features": "compare.b_features"}},
     "compare.b_features=99 is larger than the 69 channels"),
    ({"model": "nope", "keys": {"model": "compare.b_model"}}, "unknown compare.b_model 'nope'"),
    ({"weights": "/no/such.pt", "keys": {"weights": "compare.b_weights"}},
     "no weights file /no/such.pt (compare.b_weights of densenet_patterns)"),
])
def test_every_bad_value_is_one_clear_user_error(kwargs: dict[str, Any], expect: str) -> None:
    with pytest.raises(UserError) as err:
        Setting.make(**kwargs)
    assert expect in str(err.value) and "\n" not in str(err.value)


def test_the_api_and_the_cli_refuse_the_same_values(capsys: pytest.CaptureFixture) -> None:
    images = torch.rand(1, 3, 32, 32)
    for api, cli in (({"k": math.inf}, "k=1e400"), ({"aggregation": "median"},
                                                    "aggregation.name=median")):
        with pytest.raises(UserError) as err:
            ifv.invert(images, weights="random", **api)
        assert main(["invert", "x.png", "model.weights=random", cli]) == 2
        assert str(err.value) in capsys.readouterr().err


def test_the_selection_resolves_against_the_layer() -> None:
    s = Setting.make(features="all")
    assert s.features(69) == list(range(69))
    assert Setting.make(features=[5, 1]).features(69) == [5, 1]
    assert Setting.make(features=np.array([5, 1])).features(69) == [5, 1]
    assert Setting.make(features=torch.tensor([5, 1])).features(69) == [5, 1]
    assert Setting.make("srnet_geometry", "block8", 4, param="geometry_free").param == {
        "name": "geometry_free"}
    assert Setting.make(features=3).features(69) == [0, 1, 2]
    assert Setting.make(param={"name": "ffte", "decay_power": 1.5}).parametrization().n_p > 0


def _fake_train(calls: list[str]) -> Any:
    """``ifv.zoo.train.train`` without the training: a freshly initialized checkpoint."""
    def train(spec: ModelSpec, cache_dir: str | Path | None = None, progress: bool = True,
              **_: Any) -> dict[str, Any]:
        calls.append(spec.name)
        return save_checkpoint(spec, spec.build(), {"train_seconds": 0.0}, cache_dir)

    return train


def test_a_missing_stand_in_is_trained_once_wherever_it_is_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    calls: list[str] = []
    monkeypatch.setattr(train_module, "train", _fake_train(calls))
    monkeypatch.setenv("IFV_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    gn = {"model": "googlenet_patterns", "layer": "inception4c", "features": 4}
    images = ifv.visualize(np.eye(4)[:1], **gn, progress=False,
                           settings=ifv.FVSettings(adam_steps=1, lbfgs_steps=0))
    assert calls == ["googlenet_patterns"]
    assert "googlenet_patterns is not in the model cache: training it" in capsys.readouterr().out
    res = ifv.invert(images, **gn, progress=False)
    assert res.x_pred.shape == (1, 4) and calls == ["googlenet_patterns"]  # cached now
    torch.save(images, tmp_path / "r.pt")
    assert main(["invert", "r.pt", "model=googlenet_patterns", "layer=inception4c",
                 "features.n=4", "progress=false"]) == 0
    assert calls == ["googlenet_patterns"]
    assert main(["run", "features.n=2", "sampling.n_total=2", "fv.adam_steps=1",
                 "fv.lbfgs_steps=0", "reopt.steps=1", "progress=false", "figures=false",
                 f"hydra.run.dir={tmp_path / 'run'}"]) == 0
    assert calls == ["googlenet_patterns", "densenet_patterns"]  # ifv run: the same policy

"""`ifv train` on tiny recipes: the loss falls, the record is written, runs repeat exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ifv.errors import UserError
from ifv.zoo import get_spec
from ifv.zoo.registry import read_state_dict, record_of
from ifv.zoo.train import train

TINY = {"n_train": 64, "n_test": 16, "epochs": 3, "batch_size": 16}
TINY_LR = {"densenet_patterns": 0.1, "densenet_patterns_ex4": 0.1, "googlenet_patterns": 0.02}


@pytest.mark.parametrize("name", list(TINY_LR))
def test_short_training_lowers_the_loss(name: str, tmp_path: Path) -> None:
    spec = get_spec(name).with_recipe(**TINY, lr=TINY_LR[name])
    rec = train(spec, tmp_path, progress=False, device="cpu")
    first, last = rec["epoch_losses"][0], rec["epoch_losses"][-1]
    # zero-initialized classifier weights: uniform softmax up to the small default biases
    assert rec["first_loss"] == pytest.approx(math.log(10), abs=0.05)
    assert last < first - 0.05, rec["epoch_losses"]
    assert rec["softmax_share"] < 1e-5  # 1^T W stays 0 under cross-entropy
    path = Path(rec["checkpoint"])
    assert path == spec.checkpoint(tmp_path) and path.with_suffix(".json").is_file()
    assert record_of(path)["recipe"]["n_train"] == 64
    if spec.recipe.exclude_classes:
        assert {"dead_share_4", "dead_angle_4", "dead_grad_share_4"} <= set(rec)


def test_training_twice_gives_the_same_metrics(tmp_path: Path) -> None:
    spec = get_spec("densenet_patterns").with_recipe(n_train=32, n_test=16, epochs=2,
                                                     batch_size=16, seed=3)
    a = train(spec, tmp_path / "a", progress=False, device="cpu")
    b = train(spec, tmp_path / "b", progress=False, device="cpu")
    for key in ("train_seconds", "checkpoint"):
        a.pop(key), b.pop(key)
    assert a == b and a["data_seeds"] == {"train": 7, "test": 8}
    sa = read_state_dict(spec.checkpoint(tmp_path / "a"))
    sb = read_state_dict(spec.checkpoint(tmp_path / "b"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _stop_after_an_epoch(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make training stop (KeyboardInterrupt) once it has saved an epoch; returns the saver
    it replaced."""
    import ifv.zoo.train as train_module

    saved = train_module.save_progress

    def stop(*args: object, **kwargs: object) -> None:
        saved(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_progress", stop)
    return saved


def test_a_stopped_training_resumes_after_its_last_epoch(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A training stopped after an epoch resumes there and ends with the weights and
    metrics of an uninterrupted one; the progress file goes once the checkpoint is there."""
    import ifv.zoo.train as train_module

    spec = get_spec("densenet_patterns").with_recipe(n_train=32, n_test=16, epochs=3,
                                                     batch_size=16, seed=3)
    whole = train(spec, tmp_path / "a", progress=False, device="cpu")
    saved = _stop_after_an_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "b", progress=False, device="cpu")
    partial = spec.checkpoint(tmp_path / "b").with_suffix(".partial.pt")
    assert partial.is_file() and not spec.checkpoint(tmp_path / "b").exists()
    monkeypatch.setattr(train_module, "save_progress", saved)
    resumed = train(spec, tmp_path / "b", progress=False, device="cpu")
    assert "resuming after epoch 1 of 3" in capsys.readouterr().out
    assert not partial.exists()
    for key in ("train_seconds", "checkpoint"):
        whole.pop(key), resumed.pop(key)
    assert resumed == whole
    sa = read_state_dict(spec.checkpoint(tmp_path / "a"))
    sb = read_state_dict(spec.checkpoint(tmp_path / "b"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_resume_on_other_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           fake_cifar: Callable) -> None:
    """A training stopped on data A does not resume on data B: one line, the progress file
    kept as it was, no checkpoint; on A it resumes."""
    import ifv.zoo.train as train_module

    fake_cifar(tmp_path / "A", n=8, seed=0)
    fake_cifar(tmp_path / "B", n=8, seed=1)
    spec = get_spec("resnet20_cifar").with_recipe(n_train=16, n_test=8, epochs=2,
                                                  batch_size=8)
    _stop_after_an_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path, progress=False, device="cpu", data_root=tmp_path / "A")
    partial = spec.checkpoint(tmp_path).with_suffix(".partial.pt")
    before = partial.read_bytes()
    with pytest.raises(UserError) as err:
        train(spec, tmp_path, progress=False, device="cpu", data_root=tmp_path / "B")
    assert str(err.value) == (f"{partial} holds epochs of a training on other data than "
                              "model.data.root gives now (or of an older ifv); rerun with the "
                              "data it began on, or delete it to train from the start")
    assert partial.read_bytes() == before and not spec.checkpoint(tmp_path).exists()
    lines: list[str] = []
    rec = train(spec, tmp_path, progress=False, device="cpu", data_root=tmp_path / "A",
                log=lines.append)
    assert lines[0].startswith("train resnet20_cifar: resuming after epoch 1 of 2")
    assert rec["data_sha256"] == train_module.data_identity(
        *train_module.dataset(spec, tmp_path / "A"))


def test_the_estimate_is_logged_without_a_progress_bar(tmp_path: Path) -> None:
    spec = get_spec("densenet_patterns").with_recipe(n_train=32, n_test=16, epochs=1,
                                                     batch_size=16)
    lines: list[str] = []
    train(spec, tmp_path, progress=False, device="cpu", log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("train densenet_patterns: about 1 min on "
                                                   "cpu (1 epochs, 2 steps at ")

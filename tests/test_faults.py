"""Nothing lost: runs killed and resumed, damaged cache entries, two processes on one cache,
NaN-producing targets. Faults are injected for real: SIGKILL through ``IFV_FAULT``
(``ifv.run.store``), truncated and bit-flipped files, concurrent processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ifv.faces.cli import main

# three FV batches, three Jacobian parts, six re-optimization batches
TINY = ["model.weights=random", "features.n=4", "sampling.n_total=6", "fv.adam_steps=10",
        "fv.lbfgs_steps=5", "fv.batch_size=2", "reopt.steps=3", "reopt.batch_size=4",
        "progress=false", "figures=false"]


def _ifv(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """``ifv`` in a process of its own (``fault``: IFV_FAULT, a SIGKILL point)."""
    env = {k: v for k, v in os.environ.items() if k != "IFV_FAULT"}
    if fault:
        env["IFV_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "ifv.faces.cli", *args], env=env, text=True,
                          capture_output=True, timeout=300)


def _frame(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "results.parquet")
    return df.drop(columns=[c for c in df if c.startswith("t_")])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("whole")
    assert main(["run", *TINY, f"stage_cache={root / 'stages'}",
                 f"hydra.run.dir={root / 'run'}"]) == 0
    return _frame(root / "run")


@pytest.mark.parametrize(("fault", "parts"), [
    ("realizations.part:2", "realizations"),  # inside FV: after its second batch
    ("realizations:1", None),                 # between stages: FV done, Jacobians not begun
    ("jacobian.part:1", "jacobian"),          # inside the Jacobian stage
    ("reopt.part:3", "reopt"),                # inside re-optimization
])
def test_a_killed_run_resumes_to_the_uninterrupted_result(
        fault: str, parts: str | None, tmp_path: Path, uninterrupted: pd.DataFrame,
        capsys: pytest.CaptureFixture) -> None:
    stages = tmp_path / "stages"
    killed = _ifv(["run", *TINY, f"stage_cache={stages}", f"hydra.run.dir={tmp_path / 'a'}"],
                  fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "a" / "results.parquet").exists()  # no partial output
    if parts is not None:  # the finished batches were kept
        count = int(fault.rsplit(":", 1)[1])
        assert len(list((stages / parts).glob("*.parts/*.pt"))) == count
    assert main(["run", *TINY, f"stage_cache={stages}", f"hydra.run.dir={tmp_path / 'b'}"]) == 0
    printed = capsys.readouterr().out
    if fault == "realizations:1":
        assert "realizations: cached" in printed
    pd.testing.assert_frame_equal(_frame(tmp_path / "b"), uninterrupted)
    assert not list(stages.rglob("*.parts/*.pt"))  # finished entries keep no parts


def _entry(stages: Path, stage: str) -> Path:
    (path,) = (stages / stage).glob("*.pt")
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("stage", ["realizations", "jacobian", "reopt"])
def test_a_damaged_entry_is_moved_aside_and_recomputed(
        damage: str, stage: str, tmp_path: Path, uninterrupted: pd.DataFrame,
        capsys: pytest.CaptureFixture) -> None:
    stages = tmp_path / "stages"
    args = ["run", *TINY, f"stage_cache={stages}"]
    assert main([*args, f"hydra.run.dir={tmp_path / 'a'}"]) == 0
    path = _entry(stages, stage)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main([*args, f"hydra.run.dir={tmp_path / 'b'}"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ": damaged cache entry" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{stage}: damaged cache entry {path}")
    (moved,) = (stages / "damaged" / stage).iterdir()
    assert moved.read_bytes() == bytes(data)  # kept for inspection, not deleted
    assert path.is_file() and path.read_bytes() != bytes(data)  # recomputed
    pd.testing.assert_frame_equal(_frame(tmp_path / "b"), uninterrupted)


def test_an_entry_in_another_entrys_place_is_moved_aside_and_recomputed(
        tmp_path: Path, uninterrupted: pd.DataFrame, capsys: pytest.CaptureFixture) -> None:
    """A well-formed realizations entry copied over the reopt entry is not read as one."""
    stages = tmp_path / "stages"
    args = ["run", *TINY, f"stage_cache={stages}"]
    assert main([*args, f"hydra.run.dir={tmp_path / 'a'}"]) == 0
    path = _entry(stages, "reopt")
    path.write_bytes(_entry(stages, "realizations").read_bytes())
    capsys.readouterr()
    assert main([*args, f"hydra.run.dir={tmp_path / 'b'}"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ": damaged cache entry" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"reopt: damaged cache entry {path} (the "
                                                   "entry of realizations/")
    assert len(list((stages / "damaged" / "reopt").iterdir())) == 1
    pd.testing.assert_frame_equal(_frame(tmp_path / "b"), uninterrupted)


def test_two_processes_on_one_cache_compute_a_stage_once(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    slow = [a for a in TINY if not a.startswith("fv.adam_steps")] + ["fv.adam_steps=150"]
    env = {k: v for k, v in os.environ.items() if k != "IFV_FAULT"}
    procs = [subprocess.Popen([sys.executable, "-m", "ifv.faces.cli", "run", *slow,
                               f"stage_cache={stages}", f"hydra.run.dir={tmp_path / str(i)}"],
                              env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cached = ["realizations: cached" in out for out, _ in outs]
    assert sorted(cached) == [False, True]  # one computed, the other waited and read it
    a, b = (_frame(tmp_path / str(i)) for i in range(2))
    pd.testing.assert_frame_equal(a, b)


def test_a_nan_producing_target_is_flagged_and_the_run_goes_on(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """With k = 0.5, S_x = x^T y (x^T y / ||y||)^k is NaN where x^T y < 0: FV of such a
    target turns NaN."""
    out = tmp_path / "run"
    assert main(["run", *TINY, "k=0.5", "sampling.n_total=8", f"stage_cache={tmp_path}",
                 f"hydra.run.dir={out}"]) == 0
    printed = capsys.readouterr().out
    df = pd.read_parquet(out / "results.parquet")
    bad = df[~df.finite]
    assert 0 < len(bad) < len(df)
    assert bad.angle_pred.isna().all() and bad.rel_residual.isna().all()
    assert np.isfinite(df[df.finite].angle_pred).all()
    assert f"{len(bad)} of 8 samples have non-finite FV or Jacobian values" in printed
    assert "left out of the medians" in printed
    med = float(printed.split("predicted ")[1].split()[0])
    assert med == pytest.approx(round(float(np.median(df[df.finite].angle_pred)), 1))


def test_a_retrained_zoo_model_is_not_read_stale(tmp_path: Path, fake_cifar: Callable,
                                                 capsys: pytest.CaptureFixture) -> None:
    """A zoo model retrained on other data keeps its checkpoint's name, not its stages: the
    rerun on the old cache equals a run on a fresh one."""
    fake_cifar(tmp_path / "A", n=8, seed=0)
    fake_cifar(tmp_path / "B", n=8, seed=1)
    models = f"model.cache_dir={tmp_path / 'models'}"
    recipe = [f"model.train.{k}={v}" for k, v in
              {"n_train": 16, "n_test": 8, "epochs": 1, "batch_size": 8}.items()]
    train = ["train", "model=resnet20_cifar", models, "progress=false", *recipe]
    run = ["run", "model=resnet20_cifar", "layer=layer3", models, *recipe,
           *(a for a in TINY if a != "model.weights=random")]
    assert main([*train, f"model.data.root={tmp_path / 'A'}"]) == 0
    assert main([*run, f"stage_cache={tmp_path / 's'}", f"hydra.run.dir={tmp_path / 'a'}"]) == 0
    assert main([*train, f"model.data.root={tmp_path / 'B'}"]) == 0
    capsys.readouterr()
    assert main([*run, f"stage_cache={tmp_path / 's'}", f"hydra.run.dir={tmp_path / 'b'}"]) == 0
    assert ": cached" not in capsys.readouterr().out
    assert main([*run, f"stage_cache={tmp_path / 's2'}", f"hydra.run.dir={tmp_path / 'c'}"]) == 0
    pd.testing.assert_frame_equal(_frame(tmp_path / "b"), _frame(tmp_path / "c"))
    assert not _frame(tmp_path / "a").angle_pred.equals(_frame(tmp_path / "b").angle_pred)


@pytest.mark.parametrize("link", [".hydra/config.yaml", ".hydra/overrides.yaml", "cli.log",
                                  ".hydra", "0/.hydra/hydra.yaml", "multirun.yaml"])
def test_a_link_in_a_run_folder_is_never_written_through(link: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Every file Hydra writes into a run's (or a sweep's) folder is checked as the run's
    outputs are: a link among them is refused in one line and its target left as it was."""
    target = tmp_path / "target"
    target.write_text("keep")
    folder = tmp_path / "out"
    (folder / link).parent.mkdir(parents=True)
    (folder / link).symlink_to(target)
    sweep = link.startswith("0/") or link == "multirun.yaml"
    where = [f"hydra.sweep.dir={folder}", "-m", "seed=0,1"] if sweep else \
        [f"hydra.run.dir={folder}"]
    code = main(["run", *TINY, *where, f"stage_cache={tmp_path / 'stages'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "is a symbolic link" in err, err
    assert target.read_text() == "keep" and not (tmp_path / "stages").exists()
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == sorted(
        {link, *(str(p) for p in Path(link).parents if str(p) != ".")})


def test_a_run_that_fails_before_its_work_leaves_no_folder(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    """A job refused inside Hydra (after its folder was made) removes the folder it made;
    one the user had made before is left."""
    from ifv.errors import UserError
    from ifv.run import pipeline

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise UserError("refused late")

    monkeypatch.setattr(pipeline, "run", refuse)
    for folder, kept in ((tmp_path / "new", False), (tmp_path, True)):
        with pytest.raises(SystemExit) as exit_:
            main(["run", *TINY, f"hydra.run.dir={folder}"])
        assert exit_.value.code == 2 and folder.exists() == kept
        assert capsys.readouterr().err.strip() == "ifv: error: refused late"

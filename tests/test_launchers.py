"""Sweeps through Hydra's launcher plugins: joblib (local, parallel) and submitit (its local
executor stands in for SLURM, whose config is checked by composition)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ifv.faces.cli import main
from ifv.faces.config import compose

# ifv.faces.cli silences this one for users (conf/hydra/launcher/joblib.yaml); pytest resets filters
pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*'hydra/launcher/joblib' is validated against:UserWarning")

TINY = ["model.weights=random", "features.n=4", "sampling.n_total=4", "fv.adam_steps=3",
        "fv.lbfgs_steps=3", "reopt.steps=2", "progress=false"]


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"],
])
def test_two_job_sweep(launcher: list[str], tmp_path: Path) -> None:
    assert main(["run", "-m", "k=0,2", *TINY, *launcher, f"hydra.sweep.dir={tmp_path}"]) == 0
    ks = sorted(pd.read_parquet(tmp_path / d / "results.parquet").k.iloc[0] for d in "01")
    assert ks == [0.0, 2.0]


def test_joblib_defaults() -> None:
    cfg = compose(["hydra/launcher=joblib"], with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == -1


def test_slurm_extends_submitit() -> None:
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], with_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.partition) == (1, "gpu")
    assert launcher.timeout_min > 60 and launcher.signal_delay_s == 120  # the plugin's field
    assert compose(["hydra/launcher=slurm"], with_hydra=True).hydra.launcher.partition is None


def test_unknown_launcher_is_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "model.weights=random", "hydra/launcher=nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown hydra/launcher 'nope'; valid: basic, joblib" in err
    assert len(err.splitlines()) == 1

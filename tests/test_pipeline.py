"""End to end: `ifv run` on a tiny configuration, the results contract, the stage cache."""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic

from ifv.faces.cli import main
from ifv.run.pipeline import outputs, summary
from ifv.run.results import CRITICAL, RESULTS, markdown

TINY = ["model.weights=random", "features.n=4", "sampling.n_total=4", "fv.adam_steps=3",
        "fv.lbfgs_steps=3", "reopt.steps=2", "progress=false"]


def test_tiny_run_writes_the_contract(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["run", *TINY, f"hydra.run.dir={out}"]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert list(df.columns) == list(RESULTS)  # the schema, in its order, and nothing else
    assert (df.n_channels == 69).all() and (df.n_f == 4).all()
    assert len(df) == 4 and df.canonical.sum() == 2
    assert df.angle_pred.between(0, 90).all() and df.angle_response.between(0, 90).all()
    assert (df.critical_dim == 4).all() and np.allclose(df.crit_fraction, 1.0)
    assert all(len(a) == 4 and abs(sum(a) - 1) < 1e-9 for a in df.alpha)
    crit = pd.read_parquet(out / "critical.parquet")
    assert list(crit.columns) == list(CRITICAL)
    assert len(crit) == 1 and crit.best.all() and len(crit.complement[0]) == 0
    for png in ("angle_ssim.png", "alpha.png", "realizations.png", "ssim_kde.png"):
        assert (out / png).stat().st_size > 1000
    # what the run wrote is what `ifv run` checks before any work (ifv.run.pipeline.outputs)
    assert {p.name for p in out.glob("*.p*")} | {"images.npz"} <= set(outputs())
    with np.load(out / "images.npz") as im:
        assert im["before"].shape == (4, 3, 32, 32) and im["targets"].shape == (4, 4)
        for o in ("target", "pred", "response", "random"):
            after = im[f"after_{o}"].astype(np.float32)
            assert after.shape == (4, 3, 32, 32) and 0 <= after.min() and after.max() <= 1
    printed = capsys.readouterr().out
    assert "median angle to target" in printed

    # the same config again is served from the stage cache, with the same numbers
    out2 = tmp_path / "again"
    assert main(["run", *TINY, f"hydra.run.dir={out2}"]) == 0
    assert "realizations: cached" in capsys.readouterr().out
    again = pd.read_parquet(out2 / "results.parquet")
    pd.testing.assert_frame_equal(df.drop(columns=[c for c in df if c.startswith("t_")]),
                                  again.drop(columns=[c for c in again if c.startswith("t_")]))


@pytest.mark.parametrize(("args", "expect"), [
    (["experiment=nope"],
     "unknown experiment 'nope'; valid: dn4cl_k0, dn4cl_k2, dncl_k0, dncl_k2, dnde80_center_k0,"),
    (["model=nope"], "unknown model 'nope'; valid: auto, densenet22_cifar, densenet_cifar"),
    (["layer=nope"], "has no layer 'nope'; valid: conv0"),
    (["features.n=1000"], "features.n=1000 is larger than the 69 channels"),
    (["k=="], "malformed override"),
    (["nosuchkey=3"], "invalid configuration"),
    (["aggregation=median"], "unknown aggregation 'median'; valid: center"),
    (["tier=nope"], "unknown tier 'nope'; valid: offline, paper"),
    (["network=nope"], "unknown network 'nope'; valid: densenet"),
    (["sampling.canonical=most"], "sampling.canonical must be half, all or a number"),
    (["k=1e400"], "k must be a finite number >= 0, got inf"),
    (["k=-1"], "k must be a finite number >= 0"),
    (["k=abc"], "invalid value for k"),
    (["seed=abc"], "invalid value for seed"),
    (["seed=-1"], "seed must be an integer >= 0"),
    (["fv.adam_lr=nan"], "fv.adam_lr must be a finite number > 0, got nan"),
    (["fv.adam_lr=0"], "fv.adam_lr must be a finite number > 0"),
    (["fv.adam_steps=-1"], "fv.adam_steps must be an integer >= 0"),
    (["fv.adam_steps=1.5"], "invalid value for fv.adam_steps"),
    (["fv.batch_size=0"], "fv.batch_size must be an integer >= 1"),
    (["reopt.lr=inf"], "reopt.lr must be a finite number > 0"),
    (["sampling.n_total=0"], "sampling.n_total must be an integer >= 1"),
    (["critical.rho=2"], "critical.rho must be in (0, 1)"),
    (["critical.order=zigzag"], "unknown critical.order 'zigzag'"),
    (["critical.n_jacobians=1"], "critical.n_jacobians must be an integer >= 2"),
    (["jacobian.method=fast"], "unknown jacobian.method 'fast'; valid: auto, loop, batched, vmap"),
    (["device=tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda, cuda:N"),
    (["tf32=maybe"], "invalid value for tf32"),
    (["scale=huge"], "unknown scale 'huge'; valid: small, paper"),
    (["jacobian.batch_size=0"], "jacobian.batch_size must be an integer >= 1"),
    (["param.init_std=x"], "param.init_std must be a finite number >= 0, got 'x'"),
    (["+param.colour=1"], "invalid options for param rgb"),
    (["features.indices=[0,999]"], "feature indices [999] out of range"),
    (["features.n=0"], "features.n must be a positive number"),
    (["progress=maybe"], "invalid value for progress"),
    (["model.nope=1"], "no key 'model.nope'; valid: model.name, model.weights"),
    (["model.weights=/no/such/file.pt"], "no weights file /no/such/file.pt"),
    (["features=64"], "unknown features '64'; valid: all"),
    (["figures=maybe"], "invalid value for figures"),
    (["model.download=maybe"], "invalid value for model.download"),
    (["model.train.epochs=x"], "model.train.epochs must be of the kind of its default 3"),
    (["model.train.nope=1"], "unknown training option(s) ['nope']"),
    (["model.data.download=maybe"], "invalid value for model.data.download"),
    (["features.indices=[a]"], "invalid value for features.indices"),
    (["fv.history=0"], "fv.history must be an integer >= 1"),
    (["fv.tol=-1"], "fv.tol must be a finite number >= 0"),
    (["reopt.steps=-1"], "reopt.steps must be an integer >= 0"),
    (["reopt.batch_size=0"], "reopt.batch_size must be an integer >= 1"),
    (["reopt.stable_ssim=nan"], "reopt.stable_ssim must be a finite number"),
    (["jacobian.max_bytes=0"], "jacobian.max_bytes must be an integer >= 1"),
    (["critical.search=maybe"], "invalid value for critical.search"),
    (["stage_cache=/proc/ifv"], "cannot write stage_cache /proc/ifv"),
    (["hydra.run.dir=/proc/ifv"], "cannot write hydra.run.dir /proc/ifv"),
    (["-m", "k=0,2", "hydra.sweep.dir=/proc/ifv"], "cannot write hydra.sweep.dir /proc/ifv"),
    (["features.indices=[0,0,1]"], "features.indices: feature indices [0] repeated; select "
     "each channel of densenet_patterns.dense3 at most once"),
    (["features.indices=[1.5]"], "invalid value for features.indices[0]"),
    (["features.indices=[]"], "features.indices must select at least one channel"),
    (["experiment=srnet_mask1_k2", "param=fft"], "param=fft makes 3-channel inputs, but "
     "model=srnet_geometry takes 5-channel ones; valid param for srnet_geometry: "
     "geometry_fixed, geometry_free"),
    (["param=geometry_free"], "param=geometry_free makes 5-channel inputs, but "
     "model=densenet_patterns takes 3-channel ones; valid param for densenet_patterns: rgb, "
     "fft, ffte"),
    (["-m", "k=0,2", "param=geometry_fixed"], "param=geometry_fixed makes 5-channel inputs"),
    (["hydra.run.dir=/dev/null"], "cannot write hydra.run.dir /dev/null: /dev/null is not a "
     "folder"),
])
def test_user_errors_are_one_line(args: list[str], expect: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One line, exit 2, before any work: Hydra made no run folder (.hydra/, cli.log)."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "model.weights=random", "progress=false", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", ["link", "folder", "fifo"])
def test_an_output_that_is_no_regular_file_is_refused_before_any_work(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """results.parquet (a table) and alpha.png (a figure) of the run folder: a link, a
    folder or a named pipe there is refused in one line, and left as it was."""
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "target").write_text("keep")
    name = "alpha.png" if kind == "folder" else "results.parquet"
    if kind == "link":
        (out / name).symlink_to(tmp_path / "target")
    elif kind == "folder":
        (out / name).mkdir()
    else:
        os.mkfifo(out / name)
    assert main(["run", *TINY, f"hydra.run.dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    what = {"link": "a symbolic link", "folder": "a folder", "fifo": "a named pipe"}[kind]
    assert err == (f"ifv: error: hydra.run.dir file {out / name} is {what}, not a regular "
                   "file; ifv writes only regular files (it would replace it): choose another "
                   "path")
    assert [p.name for p in out.iterdir()] == [name]  # no .hydra/, no cli.log
    assert (tmp_path / "target").read_text() == "keep"
    test = {"link": Path.is_symlink, "folder": Path.is_dir, "fifo": Path.is_fifo}[kind]
    assert test(out / name)


def test_list_and_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "densenet_patterns" in out and "dense3 (69)" in out and "dnde_simple" in out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "ifv run" in out and "\n  layers model=NAME " in out
    for cmd in ("layers", "train", "invert", "compare"):
        assert main([cmd, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: ifv {cmd} ")
    assert main(["frobnicate"]) == 2
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ifv {version('ifv')}\n"


@pytest.mark.parametrize("args", [["list"], ["--help"], ["--version"]])
def test_a_closed_pipe_ends_quietly(args: list[str]) -> None:
    """`ifv list | head -3`: the reader goes away; ifv exits 0 with nothing on stderr."""
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has gone before ifv writes
    proc = subprocess.run([sys.executable, "-m", "ifv.faces.cli", *args], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.returncode == 0 and proc.stderr == ""


def test_sweep_runs_every_point(tmp_path: Path) -> None:
    assert main(["run", "-m", "k=0,2", *TINY, f"hydra.sweep.dir={tmp_path}"]) == 0
    ks = sorted(pd.read_parquet(tmp_path / d / "results.parquet").k.iloc[0] for d in "01")
    assert ks == [0.0, 2.0]


def test_sweep_without_m_runs_every_point(tmp_path: Path) -> None:
    assert main(["run", "k=0,2", *TINY, "figures=false", f"hydra.sweep.dir={tmp_path}"]) == 0
    assert sorted(pd.read_parquet(tmp_path / d / "results.parquet").k.iloc[0]
                  for d in "01") == [0.0, 2.0]


def test_a_bad_point_of_a_sweep_stops_it_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "-m", "k=0,-2", *TINY, f"hydra.sweep.dir={tmp_path}"]) == 2
    assert "k must be a finite number >= 0, got -2" in capsys.readouterr().err
    assert not tmp_path.exists() or not list(tmp_path.rglob("results.parquet"))


def test_the_schema_document_is_current() -> None:
    doc = Path(__file__).parents[1] / "docs" / "results.md"
    assert doc.read_text() == markdown(), "regenerate: python -m ifv.run.results > docs/results.md"
    for column in RESULTS:
        assert f"| `{column}` |" in doc.read_text()


def test_an_unwritable_model_cache_fails_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """densenet_patterns is missing from /proc/ifv: it would be trained, and cannot be."""
    assert main(["run", "model.cache_dir=/proc/ifv", "progress=false",
                 f"hydra.run.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("ifv: error: cannot write the model cache /proc/ifv/models: "
                   "No such file or directory; choose a folder that can be written")
    assert not list(tmp_path.iterdir())


def test_the_summary_counts_the_samples_fv_never_moved() -> None:
    """A realization whose FV gradient was exactly 0 (the target's features off at the
    start) is counted in the summary, and only then."""
    df = synthetic.run_frame("exp01", n=6)
    assert "never moved" not in summary(df)
    df.loc[df.index[:2], "grad_norm"] = 0.0
    assert "FV never moved: 2 (zero gradient at the start" in summary(df)

"""Tests for paper.collect (issue 6, part 3): run directories -> results/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synthetic

from paper.collect import main
from paper.runs import Results

T0 = 1_700_000_000.0  # a fixed time stamp; the duplicate run is one day newer


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """outputs/: exp01 twice (same configuration), exp02 with critical spaces, a corrupt file;
    multirun/: an exp06 sweep under a ``k=2`` folder with a failed job."""
    out = tmp_path / "outputs"
    old = synthetic.run_frame("exp01", n=12, n_f=16, spaces={16: 30.0})
    new = synthetic.run_frame("exp01", n=12, n_f=16, spaces={16: 8.0})
    synthetic.write_run(out / "exp01/2026-01-01_10-00-00", old, imgs=synthetic.images(16),
                        mtime=T0)
    synthetic.write_run(out / "exp01/2026-01-02_10-00-00", new,
                        imgs=synthetic.images(16, seed=1), mtime=T0 + 86400)
    crit = synthetic.run_frame("exp02", n=10, spaces={10: 60.0, 9: 5.0})
    synthetic.write_run(out / "exp02/2026-01-01_11-00-00", crit)
    bad = out / "exp03/2026-01-01_12-00-00"
    synthetic.write_run(bad, None)
    (bad / "results.parquet").write_bytes(b"PAR1 this is not parquet")
    sweep = tmp_path / "multirun/exp06/2026-01-03_09-00-00/k=2"
    for job, n_f in enumerate((8, 16)):
        df = synthetic.run_frame("exp06", n=10, n_f=n_f, k=0.0)
        synthetic.write_run(sweep / str(job), df, imgs=synthetic.images(n_f), mtime=T0 + job)
    synthetic.write_run(sweep / "2", None)  # the failed job
    return tmp_path


def _collect(tree: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Results]:
    rc = main([str(tree / "outputs"), str(tree / "multirun"), "--out", str(tree / "results")])
    return rc, capsys.readouterr().out, Results(tree / "results")


def test_collect_tables_and_dedupe(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, res = _collect(tree, capsys)
    assert rc == 0
    assert res.experiments == ["exp01", "exp02", "exp06"]
    exp01 = res.frame("exp01")
    assert len(exp01) == 12  # the older duplicate is dropped, not appended
    assert set(exp01["run"]) == {str(tree / "outputs/exp01/2026-01-02_10-00-00")}
    assert exp01["angle_pred"].median() == pytest.approx(8.0)  # the newer run's values
    dup = [ln for ln in out.splitlines() if ln.startswith("duplicate")]
    assert len(dup) == 1 and "2026-01-01_10-00-00" in dup[0] and "kept" in dup[0]
    # Supp. S4 experiment 2: its two spaces give two rows per sample
    exp02 = res.frame("exp02")
    assert len(exp02) == 20 and set(exp02["experiment"]) == {"exp02"}
    assert exp02.loc[exp02["best_space"], "critical_dim"].unique().tolist() == [9]
    crit = res.critical("exp02")
    assert sorted(crit["critical_dim"]) == [9, 10]
    assert {"run", "n_f", "k", "param"} <= set(crit.columns)
    # summary table: one line per experiment with runs and rows
    table = {ln.split()[0]: ln.split() for ln in out.splitlines()
             if ln.split() and ln.split()[0].startswith("exp")}
    assert table["exp01"][1:3] == ["1", "12"]
    assert table["exp06"][1:3] == ["2", "20"]


def test_sweep_failed_job_and_hive_paths(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, res = _collect(tree, capsys)
    assert rc == 0
    exp06 = res.frame("exp06")
    assert sorted(exp06["n_f"].unique()) == [8, 16]
    # the k=2 folder must neither add a column nor overwrite the k of the rows (k = 0)
    expected = set(synthetic.run_frame("exp06").columns) | {"run"}
    assert set(exp06.columns) == expected
    assert exp06["k"].dtype == np.float64 and (exp06["k"] == 0.0).all()
    skipped = [ln for ln in out.splitlines() if ln.startswith("skipped")]
    assert any(ln.endswith("no results.parquet (failed or unfinished job)")
               and str(Path("k=2") / "2") in ln for ln in skipped)
    assert any("exp03" in ln and "unreadable results" in ln for ln in skipped)
    assert len(skipped) == 2
    # one image set per configuration of the sweep, the main one is the largest n_f
    assert res.image_keys("exp06") == ["rgb-n16-k0", "rgb-n8-k0"]
    assert res.images("exp06")["targets"].shape[1] == 16
    assert res.images("exp06", "rgb-n8-k0")["targets"].shape[1] == 8
    # single-configuration experiments keep their images in <exp>.npz only
    assert res.image_keys("exp01") == []
    newer = synthetic.images(16, seed=1)["before"]
    np.testing.assert_array_equal(res.images("exp01")["before"], newer)
    # atomic writes leave no temporary files behind
    assert not [p for p in (tree / "results").rglob("*") if p.name.endswith(".tmp")]


def test_recollect_removes_stale_image_sets(tree: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _collect(tree, capsys)
    stale = tree / "results/exp06/rgb-n8-k0.npz"
    assert stale.is_file()
    job = tree / "multirun/exp06/2026-01-03_09-00-00/k=2/0"
    (job / "results.parquet").unlink()  # n_f = 8 is now a failed job
    _, out, res = _collect(tree, capsys)
    assert not stale.exists() and res.image_keys("exp06") == []
    assert sorted(res.frame("exp06")["n_f"].unique()) == [16]
    assert sum(ln.startswith("skipped") for ln in out.splitlines()) == 3


def test_missing_dir_is_a_one_line_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().count("\n") == 0 and "no such directory" in err and "nowhere" in err
    assert not (tmp_path / "results").exists()


def test_empty_dir_and_a_run_without_the_schema_columns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "outputs").mkdir()
    assert main([str(tmp_path / "outputs"), "--out", str(tmp_path / "r")]) == 0
    assert "no results.parquet" in capsys.readouterr().out
    df = synthetic.run_frame("exp02", n=8, spaces={10: 50.0, 9: 4.0})
    synthetic.write_run(tmp_path / "outputs/old", df.drop(columns="best_space"),
                        critical=synthetic.critical_frame(df))
    synthetic.write_run(tmp_path / "outputs/new", df)
    assert main([str(tmp_path / "outputs"), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "missing columns ['best_space']" in out
    got = pd.read_parquet(tmp_path / "r/exp02.parquet")
    assert got.groupby("critical_dim")["best_space"].all().to_dict() == {9: True, 10: False}


def test_non_finite_samples_are_kept_in_the_table_and_left_out_of_the_results(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = synthetic.run_frame("exp13", n=6)
    df.loc[df["sample"].isin([1, 4]), "finite"] = False
    df.loc[~df["finite"], "angle_pred"] = np.nan
    synthetic.write_run(tmp_path / "outputs/r", df)
    assert main([str(tmp_path / "outputs"), "--out", str(tmp_path / "r")]) == 0
    assert "2 rows flagged non-finite" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "r/exp13.parquet")) == 6  # nothing dropped on disk
    kept = Results(tmp_path / "r").frame("exp13")
    assert sorted(kept["sample"]) == [0, 2, 3, 5] and kept["angle_pred"].notna().all()


@pytest.mark.parametrize("kind", ["out_file", "link"])
def test_an_output_that_is_no_regular_file_is_refused(
        kind: str, tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--out a file, or a collected table's path a link: one line, exit 2, and what it
    pointed at is left as it was."""
    target = tree / "target"
    target.write_text("keep")
    if kind == "out_file":
        out, expect = target, f"cannot write --out {target}: {target} is not a folder"
    else:
        out = tree / "results"
        out.mkdir()
        (out / "exp01.parquet").symlink_to(target)
        expect = f"output file {out / 'exp01.parquet'} is a symbolic link, not a regular file"
    rc = main([str(tree / "outputs"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"collect: error: {expect}") and err.count("\n") == 1
    assert target.read_text() == "keep"
    assert kind == "out_file" or (out / "exp01.parquet").is_symlink()

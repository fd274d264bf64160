"""Gather the run directories of ``ifv run`` into one table per experiment (issue 6, part 3).

    python -m paper.collect [DIR ...] [--out results]

Finds every ``results.parquet`` below the DIRs (default: ``outputs`` and ``multirun``) and
writes, per experiment, the files described in ``paper.runs``; the newest run of
each comparison of ``ifv compare`` (a folder with summary.json) goes to ``compare/``. Every
parquet file is read by itself, without hive partition discovery, so the ``k=2``-like
folders of Hydra sweeps never add or overwrite columns. Where the same configuration
(experiment, model, layer, n_f, aggregation, k, param, seed and sample count) ran
several times, only the newest run (mtime of its results.parquet) is kept, and a line says
so. A run directory without results.parquet (a failed or unfinished job) and an unreadable
file are reported with one line each and skipped. All writes are atomic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ifv.errors import UserError
from ifv.files import atomic_write, check_writable
from ifv.run.results import CONFIG
from paper.runs import COMPARE, image_key

DEFAULT_DIRS = ("outputs", "multirun")
REQUIRED = (*CONFIG, "sample", "finite", "critical_dim", "angle_pred", "best_space")


@dataclass
class Run:
    """One run directory with its tables."""

    path: Path
    mtime: float
    frame: pd.DataFrame
    critical: pd.DataFrame | None
    images: Path | None

    @property
    def experiment(self) -> str:
        return str(self.frame["experiment"].iloc[0])

    def config(self) -> tuple[object, ...]:
        first = self.frame.iloc[0]
        return (*(first[c] for c in CONFIG), int(self.frame["sample"].nunique()))

    def describe(self) -> str:
        f = self.frame.iloc[0]
        return (f"{f['experiment']} {f['model']}.{f['layer']} n_f={f['n_f']} "
                f"{f['aggregation']} k={float(f['k']):g} {f['param']} seed={f['seed']} "
                f"n={self.frame['sample'].nunique()}")


def read_parquet(path: Path) -> pd.DataFrame:
    """One parquet file, no partition columns guessed from its path."""
    return pq.read_table(path, partitioning=None).to_pandas()


def find_runs(roots: Sequence[Path], log: Callable[[str], None]) -> list[Run]:
    """Every readable run below ``roots``; skipped directories and files get one line."""
    results = sorted({p for r in roots for p in r.rglob("results.parquet")})
    have = {p.parent for p in results}
    for hydra in sorted({h.parent for r in roots for h in r.rglob(".hydra")}):
        if hydra not in have:
            log(f"skipped {hydra}: no results.parquet (failed or unfinished job)")
    runs = []
    for path in results:
        try:
            frame = read_parquet(path)
            missing = [c for c in REQUIRED if c not in frame.columns]
            if missing or frame.empty:
                raise ValueError(f"missing columns {missing}" if missing else "no rows")
        except Exception as e:  # any unreadable file is skipped, never fatal
            log(f"skipped {path}: unreadable results ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})")
            continue
        bad = int((~frame["finite"]).sum())
        if bad:
            log(f"{path}: {bad} rows flagged non-finite (finite=false), left out of the "
                "figures and the report")
        critical = None
        crit_path = path.parent / "critical.parquet"
        if crit_path.is_file():
            try:
                critical = read_parquet(crit_path)
            except Exception as e:  # as above
                log(f"skipped {crit_path}: unreadable ({type(e).__name__})")
        images = path.parent / "images.npz"
        runs.append(Run(path.parent, path.stat().st_mtime, frame, critical,
                        images if images.is_file() else None))
    return runs


def newest_only(runs: list[Run], log: Callable[[str], None]) -> list[Run]:
    """One run per configuration: the newest; the others are named in a line each."""
    by_config: dict[tuple[object, ...], list[Run]] = {}
    for run in runs:
        by_config.setdefault(run.config(), []).append(run)
    kept = []
    for group in by_config.values():
        group.sort(key=lambda r: (r.mtime, str(r.path)), reverse=True)
        kept.append(group[0])
        for old in group[1:]:
            log(f"duplicate {group[0].describe()}: kept {group[0].path}, dropped older {old.path}")
    return sorted(kept, key=lambda r: (r.experiment, r.mtime, str(r.path)))


def _valid_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return "before" in z.files
    except Exception:  # a corrupt archive is reported by the caller
        return False


def _critical_table(runs: list[Run]) -> pd.DataFrame | None:
    frames = []
    for run in runs:
        if run.critical is None:
            continue
        c = run.critical.copy()
        first = run.frame.iloc[0]
        c["experiment"] = run.experiment
        for col in ("model", "n_f", "k", "param"):
            c[col] = first[col]
        c["run"] = str(run.path)
        frames.append(c)
    return pd.concat(frames, ignore_index=True) if frames else None


def write_experiment(exp: str, runs: list[Run], out: Path,
                     log: Callable[[str], None]) -> tuple[int, int]:
    """Write the files of one experiment; returns (rows, image sets)."""
    frames = [r.frame.assign(run=str(r.path)) for r in runs]
    df = pd.concat(frames, ignore_index=True)
    atomic_write(out / f"{exp}.parquet", lambda p: df.to_parquet(p, index=False))
    crit = _critical_table(runs)
    if crit is not None:
        atomic_write(out / f"{exp}.critical.parquet", lambda p: crit.to_parquet(p, index=False))

    images: dict[str, Run] = {}
    for run in runs:  # ascending mtime: the newest run of a configuration wins
        if run.images is None:
            continue
        if not _valid_npz(run.images):
            log(f"skipped {run.images}: unreadable images")
            continue
        f = run.frame.iloc[0]
        images[image_key(str(f["param"]), int(f["n_f"]), float(f["k"]))] = run
    folder = out / exp
    if images:
        main = max(images.values(), key=lambda r: (int(r.frame["n_f"].iloc[0]), r.mtime))
        src = main.images
        atomic_write(out / f"{exp}.npz", lambda p: shutil.copyfile(src, p))
    written = set()
    if len(images) > 1:
        for key, run in images.items():
            src_run = run.images
            atomic_write(folder / f"{key}.npz", lambda p, s=src_run: shutil.copyfile(s, p))
            written.add(f"{key}.npz")
    if folder.is_dir():  # image sets of configurations no longer collected
        for stale in folder.glob("*.npz"):
            if stale.name not in written:
                stale.unlink()
    return len(df), len(images)


def comparison_name(summary_path: Path) -> str:
    """The comparison a summary.json belongs to: its ``settings.name``, else the folder
    above the run's (``outputs/compare/NAME/TIME``)."""
    try:
        name = json.loads(summary_path.read_text(encoding="utf-8"))["settings"].get("name")
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"unreadable summary ({e})") from e
    return str(name) if name else summary_path.parent.parent.name


def collect_comparisons(dirs: Sequence[Path], out: Path,
                        log: Callable[[str], None] = print) -> list[str]:
    """The newest ``ifv compare`` run of each name below ``dirs`` (a folder with
    summary.json and compare.parquet) into ``out/compare/`` (``paper.runs``);
    returns the names collected."""
    newest: dict[str, tuple[float, Path]] = {}
    for summary in sorted({p for d in dirs for p in d.rglob("summary.json")}):
        if not (summary.parent / "compare.parquet").is_file():
            continue
        try:
            name = comparison_name(summary)
        except ValueError as e:
            log(f"skipped {summary}: {e}")
            continue
        mtime = summary.stat().st_mtime
        if name in newest:
            log(f"comparison {name}: kept the newest of several runs")
        if name not in newest or mtime > newest[name][0]:
            newest[name] = (mtime, summary.parent)
    folder = out / COMPARE
    for name, (_, run) in sorted(newest.items()):
        files = [("summary.json", f"{name}.json"), ("compare.parquet", f"{name}.parquet"),
                 ("correspondence.png", f"{name}.correspondence.png"),
                 ("pairs.png", f"{name}.pairs.png")]
        for src, dst in files:
            if (run / src).is_file():
                atomic_write(folder / dst, lambda p, s=run / src: shutil.copyfile(s, p))
    return sorted(newest)


def collect(dirs: Sequence[Path], out: Path, log: Callable[[str], None] = print,
            ) -> pd.DataFrame:
    """Collect every run below ``dirs`` into ``out``; returns the summary table (the
    comparisons are collected by ``collect_comparisons``)."""
    runs = newest_only(find_runs(dirs, log), log)
    by_exp: dict[str, list[Run]] = {}
    for run in runs:
        by_exp.setdefault(run.experiment, []).append(run)
    rows = []
    for exp in sorted(by_exp):
        n_rows, n_images = write_experiment(exp, by_exp[exp], out, log)
        n_f = sorted({int(r.frame["n_f"].iloc[0]) for r in by_exp[exp]})
        rows.append({"experiment": exp, "runs": len(by_exp[exp]), "rows": n_rows,
                     "n_f": ",".join(map(str, n_f)), "image sets": n_images})
    return pd.DataFrame(rows, columns=["experiment", "runs", "rows", "n_f",
                                       "image sets"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit code 2 for a missing directory or an output that cannot be
    written."""
    ap = argparse.ArgumentParser(prog="python -m paper.collect",
                                 description="Collect ifv run directories into results/.")
    ap.add_argument("dirs", nargs="*", metavar="DIR",
                    help="folders to search (default: outputs multirun, those that exist)")
    ap.add_argument("--out", default="results", help="output folder (default: results)")
    args = ap.parse_args(argv)
    if args.dirs:
        dirs = [Path(d) for d in args.dirs]
        for d in dirs:
            if not d.is_dir():
                print(f"collect: error: no such directory: {d}", file=sys.stderr)
                return 2
    else:
        dirs = [Path(d) for d in DEFAULT_DIRS if Path(d).is_dir()]
        if not dirs:
            print(f"collect: error: none of the default directories exists: "
                  f"{' '.join(DEFAULT_DIRS)}", file=sys.stderr)
            return 2
    try:  # the folder first; a target that is no regular file is refused by atomic_write
        check_writable(args.out, "--out")
        table = collect(dirs, Path(args.out))
        names = collect_comparisons(dirs, Path(args.out))
    except UserError as exc:
        print(f"collect: error: {exc}", file=sys.stderr)
        return 2
    if names:
        print(f"comparisons: {', '.join(names)} -> {args.out}/{COMPARE}/")
    if table.empty:
        print(f"no results.parquet found under {' '.join(map(str, dirs))}")
        return 0
    print(table.to_string(index=False))
    print(f"{int(table['rows'].sum())} rows of {int(table['runs'].sum())} runs -> {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reading ``results/`` as written by ``paper.collect``.

Layout, per experiment id of Supp. S4 (``exp01`` ... ``exp25``):

- ``<exp>.parquet``: the rows of all its runs (one per sample and critical space, the columns
  of ``results.parquet``) plus ``run``, the run directory they came from;
- ``<exp>.critical.parquet``: the critical spaces of those runs (``critical.parquet`` plus
  ``run``, ``model``, ``n_f``, ``k``, ``param``);
- ``<exp>.npz``: the images (``images.npz``) of the experiment's main configuration (the one
  with the most features, the newest run among equals);
- ``<exp>/<param>-n<n_f>-k<k>.npz``: the images of every configuration, only where an
  experiment has several (sweeps over n_f, Supp. S4 experiments 6, 7, 11, 12).

Experiments beyond Supp. S4 (e.g. ``dnde_robust``) are collected the same way, under their
name. Comparisons of ``ifv compare``, the newest run of each name: ``compare/<name>.json``
(its summary.json), ``compare/<name>.parquet`` (compare.parquet) and
``compare/<name>.correspondence.png`` / ``compare/<name>.pairs.png`` (its figures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

PathLike = str | os.PathLike[str]
COMPARE = "compare"  # the folder of the collected comparisons


class NotRun(LookupError):
    """An experiment the computation needs is absent from ``results/``."""


def image_key(param: str, n_f: int, k: float) -> str:
    """File stem of a configuration's images, e.g. ``rgb-n64-k2``."""
    return f"{param}-n{int(n_f)}-k{float(k):g}"


class Results:
    """The collected tables of one ``results/`` folder, read lazily and cached."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        self._frames: dict[str, pd.DataFrame] = {}

    @property
    def experiments(self) -> list[str]:
        """Ids with a results table, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name.removesuffix(".parquet") for p in self.root.glob("*.parquet")
                      if not p.name.endswith(".critical.parquet"))

    def has(self, exp: str) -> bool:
        return (self.root / f"{exp}.parquet").is_file()

    def frame(self, exp: str) -> pd.DataFrame:
        """The rows of ``exp`` (samples flagged non-finite left out, as the pipeline's
        medians leave them out); raises ``NotRun`` if it was not collected."""
        if exp not in self._frames:
            path = self.root / f"{exp}.parquet"
            if not path.is_file():
                raise NotRun(exp)
            df = pd.read_parquet(path)
            self._frames[exp] = df[df["finite"]].reset_index(drop=True)
        return self._frames[exp]

    def best(self, exp: str) -> pd.DataFrame:
        """The rows of each run's chosen critical space (Sec. 3.5): one row per sample."""
        df = self.frame(exp)
        if "best_space" in df.columns:
            df = df[df["best_space"].astype(bool)]
        return df.reset_index(drop=True)

    def critical(self, exp: str) -> pd.DataFrame:
        """The critical spaces of ``exp``; raises ``NotRun`` if absent."""
        path = self.root / f"{exp}.critical.parquet"
        if not path.is_file():
            raise NotRun(exp)
        return pd.read_parquet(path)

    def image_keys(self, exp: str) -> list[str]:
        """Configurations with stored images (see ``image_key``)."""
        folder = self.root / exp
        return sorted(p.stem for p in folder.glob("*.npz")) if folder.is_dir() else []

    def images(self, exp: str, key: str | None = None) -> dict[str, np.ndarray] | None:
        """``images.npz`` of the main configuration, or of configuration ``key``; None if
        there are none."""
        path = self.root / f"{exp}.npz" if key is None else self.root / exp / f"{key}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}

    # --- comparisons (``ifv compare``), collected into ``compare/`` -----------------------

    @property
    def comparison_names(self) -> list[str]:
        """Names of the collected comparisons (``compare/<name>.json``), sorted."""
        folder = self.root / COMPARE
        return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []

    def comparison(self, name: str) -> dict:
        """summary.json of comparison ``name``; raises ``NotRun`` if it was not collected."""
        path = self.root / COMPARE / f"{name}.json"
        if not path.is_file():
            raise NotRun(name)
        return json.loads(path.read_text(encoding="utf-8"))

    def comparison_figure(self, name: str, figure: str) -> Path | None:
        """A figure of ``ifv compare`` (``correspondence`` or ``pairs``) of comparison
        ``name``, or None."""
        path = self.root / COMPARE / f"{name}.{figure}.png"
        return path if path.is_file() else None

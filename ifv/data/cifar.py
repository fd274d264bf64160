"""CIFAR-10 (Krizhevsky 2009), read by torchvision's loader from a local folder (paper tier).

Nothing is downloaded unless asked (``model.data.download=true``). The extracted python
version is expected at ``<root>/cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10

from ifv.errors import UserError

FOLDER = CIFAR10.base_folder
FILES = tuple(f for f, _ in CIFAR10.train_list + CIFAR10.test_list) + (CIFAR10.meta["filename"],)


class LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR10 that accepts any readable copy of the extracted files.

    torchvision checks each extracted file against the MD5 of the official release; here the
    files only have to exist (the archive itself is still MD5-checked when downloaded), so a
    copy re-pickled elsewhere, or a small one a test writes, reads through the same code.
    """

    def _check_integrity(self) -> bool:
        base = Path(self.root) / self.base_folder
        return all((base / f).is_file() for f in FILES)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def load_cifar10(root: str | Path, train: bool, download: bool = False,
                 exclude: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR-10 split.

    Classes in ``exclude`` are dropped. Raises ``UserError`` with what to place where when
    the files are missing or unreadable, or when a download fails.
    """
    root = Path(root).expanduser()
    where = root / FOLDER
    if not download and not all((where / f).is_file() for f in FILES):
        missing = [f for f in FILES if not (where / f).is_file()]
        what = "" if len(missing) == len(FILES) else f" (missing {', '.join(missing)})"
        raise UserError(f"no CIFAR-10 at {where}{what}; place the extracted python version "
                        f"({CIFAR10.url}) there, set model.data.root, or pass "
                        "model.data.download=true")
    if download and not all((where / f).is_file() for f in FILES):
        try:
            LocalCIFAR10(str(root), train=train, download=True)
        except Exception as exc:  # noqa: BLE001 - URLError, a bad archive: one user error
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UserError(f"cannot download CIFAR-10 into {root} ({exc.__class__.__name__}: "
                            f"{msg}); place the extracted python version ({CIFAR10.url}) at "
                            f"{where}") from None
    try:
        ds = LocalCIFAR10(str(root), train=train, download=False)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the same user error
        raise UserError(f"cannot read CIFAR-10 at {where}: {exc.__class__.__name__}; replace "
                        f"the files with the python version ({CIFAR10.url})") from None
    x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    if exclude:
        keep = ~torch.isin(y, torch.tensor(exclude, dtype=torch.int64))
        x, y = x[keep], y[keep]
    return x, y

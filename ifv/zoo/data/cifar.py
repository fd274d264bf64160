"""CIFAR-10 (Krizhevsky 2009) from where users have it, without unpickling arbitrary objects.

``model.data.root`` is either

- a folder or zip file in the ImageFolder layout (``train/<class>/*.jpg``,
  ``test/<class>/*.jpg``, the ten classes by name; ``ifv.zoo.data.imagefolder``), or
- a folder holding torchvision's python version, ``cifar-10-batches-py/`` (``data_batch_1``
  .. ``data_batch_5``, ``test_batch``, ``batches.meta``), downloaded there on request
  (``model.data.download=true``; the archive's MD5 is checked).

The python version is a set of pickles. They are read by ``SafeUnpickler``, which admits
only what the format holds (numpy arrays, lists, strings, numbers), so a file placed in
``model.data.root`` cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from ifv.errors import UserError
from ifv.zoo.data.imagefolder import is_image_folder, read_image_folder

FOLDER = CIFAR10.base_folder
TRAIN = tuple(f for f, _ in CIFAR10.train_list)
TEST = tuple(f for f, _ in CIFAR10.test_list)
FILES = TRAIN + TEST + (CIFAR10.meta["filename"],)
URL, ARCHIVE, ARCHIVE_MD5 = CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")

# What a numpy array's pickle calls (numpy 1 and 2 module names, protocols 2 to 5).
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and plain containers: any other global a
    pickle names (``os.system``, a class) is refused with ``pickle.UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def safe_load(data: bytes) -> Any:
    """Unpickle ``data`` with ``SafeUnpickler`` (byte strings decoded as latin-1, as the
    python version of CIFAR-10, written by Python 2, needs)."""
    return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()


def _batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One batch file: (n, 3072) uint8 rows and their labels."""
    try:
        obj = safe_load(path.read_bytes())
        data = np.asarray(obj["data"], dtype=np.uint8).reshape(-1, 3072)
        labels = [int(v) for v in obj.get("labels", obj.get("fine_labels", []))]
    except Exception as exc:  # noqa: BLE001 - a refused or damaged pickle is one user error
        raise UserError(f"cannot read CIFAR-10 at {path}: {exc.__class__.__name__}: "
                        f"{str(exc)[:80]}; replace the files with the python version "
                        f"({URL})") from None
    if len(labels) != len(data):
        raise UserError(f"cannot read CIFAR-10 at {path}: {len(data)} images but "
                        f"{len(labels)} labels")
    return data, labels


def _download(root: Path) -> None:
    try:
        download_and_extract_archive(URL, str(root), filename=ARCHIVE, md5=ARCHIVE_MD5)
    except Exception as exc:  # noqa: BLE001 - URLError, a bad archive: one user error
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"cannot download CIFAR-10 into {root} ({exc.__class__.__name__}: "
                        f"{msg}); place the extracted python version ({URL}) at "
                        f"{root / FOLDER}") from None


def load_cifar10(root: str | Path, train: bool, download: bool = False,
                 exclude: tuple[int, ...] = (), progress: bool = False
                 ) -> tuple[Tensor, Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR-10 split, from an
    ImageFolder tree (folder or zip) or the python version at ``root``.

    Classes in ``exclude`` are dropped. Raises ``UserError`` with what to place where when
    the files are missing or unreadable, or when a download fails.
    """
    root = Path(root).expanduser()
    if is_image_folder(root):
        x, y, _ = read_image_folder(root, "train" if train else "test", classes=list(CLASSES),
                                    progress=progress)
        if tuple(x.shape[1:]) != (3, 32, 32):
            raise UserError(f"the images of {root} are {tuple(x.shape[2:])}, not CIFAR-10's "
                            "32x32")
    elif root.is_file():
        raise UserError(f"model.data.root {root} is a file but no zip (truncated, or another "
                        "format); give a folder or zip in the ImageFolder layout "
                        "(train/<class>/*.jpg, test/<class>/*.jpg), or a folder that holds "
                        f"the python version ({FOLDER}/)")
    else:
        where = root / FOLDER
        missing = [f for f in FILES if not (where / f).is_file()]
        if missing and download:
            _download(root)
            missing = [f for f in FILES if not (where / f).is_file()]
        if missing:
            what = "" if len(missing) == len(FILES) else f" (missing {', '.join(missing)})"
            raise UserError(f"no CIFAR-10 at {where}{what}; set model.data.root to a folder "
                            f"or zip in the ImageFolder layout (train/<class>/*.jpg, "
                            f"test/<class>/*.jpg), place the extracted python version "
                            f"({URL}) there, or pass model.data.download=true")
        parts = [_batch(where / f) for f in (TRAIN if train else TEST)]
        x = torch.from_numpy(np.concatenate([d for d, _ in parts]).reshape(-1, 3, 32, 32))
        y = torch.tensor([label for _, labels in parts for label in labels], dtype=torch.int64)
    if exclude:
        keep = ~torch.isin(y, torch.tensor(exclude, dtype=torch.int64))
        x, y = x[keep], y[keep]
    return x, y

"""Data a user places: CIFAR-10's pickled batches are read without running their code
(``ifv.zoo.data.cifar.SafeUnpickler``), and ImageFolder trees, folders or zips, are decoded
with Pillow (``ifv.zoo.data.imagefolder``)."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ifv.errors import UserError
from ifv.zoo import get_spec
from ifv.zoo.data.cifar import CLASSES, load_cifar10
from ifv.zoo.data.imagefolder import is_image_folder, read_image_folder
from ifv.zoo.train import dataset


class _Payload:
    """Unpickled, it touches ``marker`` through ``how``: the code a hostile batch file runs."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        if self.how == "eval":
            return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)
        return subprocess.call, (["touch", str(self.marker)],)


def _plant(root: Path, marker: Path, how: str, where: str = "data") -> Path:
    """Replace data_batch_1 by a pickle of CIFAR-10's layout with the payload in it."""
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    labels: object = list(range(10))
    data: object = np.zeros((10, 3072), dtype=np.uint8)
    if where == "data":
        data = _Payload(marker, how)
    elif where == "labels":
        labels = [_Payload(marker, how)]
    obj = _Payload(marker, how) if where == "whole" else {"data": data, "labels": labels}
    batch.write_bytes(pickle.dumps(obj, protocol=2))
    return batch


def test_cifar_batches_are_read(tmp_path: Path, fake_cifar: Callable) -> None:
    """The restricted unpickler reads what the format holds, pixel for pixel."""
    batches = fake_cifar(tmp_path, n=12)
    x, y = load_cifar10(tmp_path, train=True)
    assert x.shape == (60, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x[12], torch.from_numpy(batches["data_batch_2"][0].reshape(3, 32, 32)))
    assert y.tolist()[:12] == [i % 10 for i in range(12)]
    x_te, _ = load_cifar10(tmp_path, train=False, exclude=(4,))
    assert len(x_te) == 11


@pytest.mark.parametrize("where", ["data", "labels", "whole"])
@pytest.mark.parametrize("how", ["system", "eval", "call"])
def test_a_hostile_cifar_batch_never_runs(how: str, where: str, tmp_path: Path,
                                          fake_cifar: Callable) -> None:
    """A batch file whose unpickling would run code (os.system, eval, subprocess.call) is
    refused in one line naming the file, by load_cifar10 and by ifv train's data set; the
    payload never runs."""
    fake_cifar(tmp_path, n=10)
    marker = tmp_path / "MARKER"
    batch = _plant(tmp_path, marker, how, where)
    with pytest.raises(UserError) as err:
        load_cifar10(tmp_path, train=True)
    text = str(err.value)
    assert text.startswith(f"cannot read CIFAR-10 at {batch}: UnpicklingError: refused to "
                           "load ") and "\n" not in text
    spec = get_spec("densenet_cifar").with_recipe(n_train=20, n_test=10)
    with pytest.raises(UserError, match="cannot read CIFAR-10 at .*data_batch_1"):
        dataset(spec, data_root=tmp_path)
    assert not marker.exists()
    # the payload does run where pickle is trusted: the test would see it
    pickle.loads(batch.read_bytes())
    assert marker.exists()


def _image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _tree(root: Path, classes: list[str], size: int = 8, per_class: int = 2,
          fmt: str = "png") -> dict[str, np.ndarray]:
    """train/ and test/ with ``per_class`` images of each class: class i is grey level
    20 (i + 1), image j has its first pixel at 10 j; returns the arrays by member path."""
    made = {}
    for split in ("train", "test"):
        for i, c in enumerate(classes):
            for j in range(per_class):
                rgb = np.full((size, size, 3), 20 * (i + 1), dtype=np.uint8)
                rgb[0, 0] = 10 * j
                rel = f"{split}/{c}/{j}.{fmt}"
                _image(root / rel, rgb)
                made[rel] = rgb
    return made


def _zip(folder: Path, dest: Path, top: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f"{top}{f.relative_to(folder)}")
    return dest


@pytest.mark.parametrize("form", ["folder", "zip", "zip_top"])
def test_image_folder_reads_png_trees(form: str, tmp_path: Path) -> None:
    made = _tree(tmp_path / "tree", ["cat", "ant", "bee"])
    root = {"folder": tmp_path / "tree",
            "zip": _zip(tmp_path / "tree", tmp_path / "t.zip"),
            "zip_top": _zip(tmp_path / "tree", tmp_path / "t.zip", top="data/")}[form]
    assert is_image_folder(root)
    x, y, names = read_image_folder(root, "test")
    assert names == ["ant", "bee", "cat"]  # sorted, label i is names[i]
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(x[5], torch.from_numpy(made["test/cat/1.png"]).permute(2, 0, 1))
    assert int(x[4, 0, 0, 0]) == 0 and int(x[5, 0, 0, 0]) == 10  # order within a class


def test_image_folder_reads_jpeg_and_mixed_formats(tmp_path: Path) -> None:
    _tree(tmp_path, ["a", "b"], size=16, fmt="jpg")
    _image(tmp_path / "train" / "b" / "extra.png", np.full((16, 16, 3), 200, np.uint8))
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    x, y, names = read_image_folder(tmp_path, "train", classes=["a", "b"])
    assert x.shape == (5, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 1] and names == ["a", "b"]
    assert abs(float(x[0, :, 4:, 4:].float().mean()) - 20) < 3  # JPEG: near, not exact
    assert int(x[4, 0, 5, 5]) == 200  # the PNG, last of class b (sorted by name): exact


def test_cifar_from_an_image_folder_zip(tmp_path: Path) -> None:
    """model.data.root as an ImageFolder zip of the ten classes by name: CIFAR-10's labels."""
    _tree(tmp_path / "tree", list(CLASSES), size=32, per_class=1)
    root = _zip(tmp_path / "tree", tmp_path / "cifar.zip", top="cifar10/")
    x, y = load_cifar10(root, train=True, exclude=(4,))
    assert x.shape == (9, 3, 32, 32) and 4 not in y.tolist()
    assert y.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert int(x[3, 0, 5, 5]) == 20 * (CLASSES.index("cat") + 1)


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_a_data_root_file_that_is_no_zip_is_one_line(kind: str, tmp_path: Path) -> None:
    root = tmp_path / "x.zip"
    if kind == "text":
        root.write_text("not a zip")
    else:
        _tree(tmp_path / "tree", list(CLASSES), size=32, per_class=1)
        whole = _zip(tmp_path / "tree", tmp_path / "whole.zip").read_bytes()
        root.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError) as err:
        load_cifar10(root, train=True)
    assert str(err.value).startswith(f"model.data.root {root} is a file but no zip (truncated, "
                                     "or another format); give a folder or zip")


def test_image_folder_errors_are_one_line(tmp_path: Path) -> None:
    _tree(tmp_path / "t", ["a", "b"])
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: read_image_folder(tmp_path / "t", "val"), "no val/ folder in"),
        (lambda: read_image_folder(tmp_path / "t", "train", classes=["a", "c"]),
         "has classes ['a', 'b'], expected ['a', 'c']"),
        (lambda: read_image_folder(tmp_path / "none", "train"), "no data at"),
    ]
    for call, expect in cases:
        with pytest.raises(UserError) as err:
            call()
        assert expect in str(err.value) and "\n" not in str(err.value)
    _image(tmp_path / "t" / "train" / "a" / "big.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(UserError, match="differ in size"):
        read_image_folder(tmp_path / "t", "train")
    (tmp_path / "t" / "train" / "a" / "big.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot decode image .*big.png"):
        read_image_folder(tmp_path / "t", "train")

"""Images in the ImageFolder layout, from a folder or a zip file: ``SPLIT/CLASS/*.EXT``.

The layout torchvision's ``datasets.ImageFolder`` reads, and the one ImageNet and many
copies of CIFAR-10 come in: one folder per split (``train``, ``test``), one subfolder per
class, classes in sorted order. A zip file holds the same tree (optionally under one top
folder). Images are decoded with Pillow as RGB; nothing is unpickled.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from ifv.errors import UserError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def is_image_folder(root: str | Path) -> bool:
    """Whether ``root`` is a zip file, or a folder with a ``train`` or ``test`` subfolder."""
    root = Path(root).expanduser()
    if root.is_file():
        return zipfile.is_zipfile(root)
    return (root / "train").is_dir() or (root / "test").is_dir()


def _members(root: Path, split: str) -> tuple[list[tuple[str, str]], zipfile.ZipFile | None]:
    """(class, member) pairs of a split, sorted, and the open zip (None for a folder)."""
    if root.is_dir():
        base = root / split
        if not base.is_dir():
            raise UserError(f"no {split}/ folder in {root}; the ImageFolder layout is "
                            f"{root}/{split}/<class>/<image>")
        pairs = [(d.name, str(f)) for d in sorted(base.iterdir()) if d.is_dir()
                 for f in sorted(d.iterdir()) if f.suffix.lower() in EXTENSIONS]
        return pairs, None
    try:
        archive = zipfile.ZipFile(root)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot open {root} as a zip file ({exc.__class__.__name__})") from None
    pairs = []
    for name in archive.namelist():
        parts = PurePosixPath(name).parts
        if (len(parts) >= 3 and parts[-3] == split and not name.endswith("/")
                and PurePosixPath(name).suffix.lower() in EXTENSIONS):
            pairs.append((parts[-2], name))
    return sorted(pairs), archive


def _decode(data: bytes | str, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"cannot decode image {where} ({exc.__class__.__name__})") from None


def _images(pairs: list[tuple[str, str]], archive: zipfile.ZipFile | None, root: Path,
            progress: bool, desc: str) -> Iterator[np.ndarray]:
    for _, member in tqdm(pairs, desc=desc, disable=not progress, unit="image", leave=False):
        where = f"{root}:{member}" if archive is not None else member
        yield _decode(archive.read(member) if archive is not None else member, where)


def read_image_folder(root: str | Path, split: str, *, classes: list[str] | None = None,
                      progress: bool = False) -> tuple[Tensor, Tensor, list[str]]:
    """One split of an ImageFolder tree (folder or zip): images (N, 3, H, W) uint8, labels
    (N,) int64 and the class names (sorted; label i is ``classes[i]``).

    ``classes``: the class names expected (e.g. CIFAR-10's); a tree whose classes differ is
    refused. All images must have one size. Raises ``UserError`` with what is wrong.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"no data at {root}; give a folder or zip in the ImageFolder layout "
                        f"({split}/<class>/<image>)")
    pairs, archive = _members(root, split)
    try:
        found = sorted({c for c, _ in pairs})
        if not pairs:
            raise UserError(f"no images under {split}/<class>/ in {root}; valid extensions: "
                            f"{', '.join(EXTENSIONS)}")
        if classes is not None and found != sorted(classes):
            raise UserError(f"{root} ({split}/) has classes {found}, expected {sorted(classes)}")
        names = list(classes) if classes is not None else found
        index = {c: i for i, c in enumerate(names)}
        arrays = list(_images(pairs, archive, root, progress, f"read {split}"))
    finally:
        if archive is not None:
            archive.close()
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(f"the images of {root} ({split}/) differ in size: "
                        f"{sorted(shapes)[:3]}; resize them to one size first")
    x = torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))
    y = torch.tensor([index[c] for c, _ in pairs], dtype=torch.int64)
    return x, y, names

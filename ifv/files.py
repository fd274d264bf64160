"""Files: atomic writes of regular files only, checks of output paths before any work,
content keys, tensors read without unpickling, and where the caches live.

Nothing half-written is ever left behind, and nothing that is not a regular file (a folder,
a link, a device) is ever replaced."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pickletools
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ifv.errors import UserError


def canonical_json(obj: Any) -> str:
    """Deterministic JSON of a config (sorted keys, no whitespace)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any, length: int = 16) -> str:
    """A short hash of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.
    A ``path`` that exists and is not a regular file (a folder, a link, a device) is refused
    with ``UserError`` before anything is written: the rename would replace it."""
    path = Path(path)
    refuse_special(path, "output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have made
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def refuse_special(path: str | Path, what: str) -> None:
    """Raise ``UserError`` where ``path`` exists and is not a regular file (a folder, a
    symbolic link, a device, ...): ifv writes a file by renaming a new one onto its path,
    which would replace such a target instead of writing into it."""
    path = Path(path).expanduser()
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # absent, or a parent is no folder: check_writable reports that
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise UserError(f"{what} {path} is {kind}, not a regular file; ifv writes only "
                        "regular files (it would replace it): choose another path")


def check_file(path: str | Path, what: str) -> None:
    """Raise ``UserError`` unless ``path`` can be written as a regular file: it is absent or
    one, and its folder can be written (``check_writable``); checked before any work."""
    path = Path(path).expanduser()
    refuse_special(path, what)
    check_writable(path.parent, f"the folder of {what}")


def check_outputs(folder: str | Path, names: Iterable[str], what: str) -> None:
    """``check_writable(folder)`` and ``refuse_special`` for each output file ``names``
    within it (a name may lie in a subfolder, e.g. ``.hydra/config.yaml``, which must then
    be a folder, not a link to one): a face's outputs, checked before any work."""
    check_writable(folder, what)
    root = Path(folder).expanduser()
    for name in names:
        for sub in list(Path(name).parents)[-2::-1]:  # its subfolders, outermost first
            _refuse_no_folder(root / sub, f"{what} folder")
        refuse_special(root / name, f"{what} file")


def _refuse_no_folder(path: Path, what: str) -> None:
    """Raise ``UserError`` where ``path`` exists and is no folder, or a link to one."""
    kind = ("a symbolic link" if path.is_symlink() else
            "a file" if path.exists() and not path.is_dir() else None)
    if kind:
        raise UserError(f"{what} {path} is {kind}, not a folder; ifv writes only into "
                        "folders it can see: choose another path")


def check_writable(path: str | Path, what: str) -> None:
    """Raise ``UserError`` unless files can be made in ``path`` (a folder, or one that can be
    made): checked before any work, by writing a temporary file in it or in its nearest
    existing ancestor. Makes no folder, so that a run that fails later leaves none behind."""
    folder = Path(path).expanduser()
    probe = folder
    while not (probe.exists() or probe.is_symlink()) and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what} {folder}: {exc.strerror or exc}; choose a "
                        "folder that can be written") from None


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str)))


class Refused(ValueError):
    """A file ``load_tensors`` does not read; the message says why in a few words."""


def load_tensors(path: str | Path) -> Any:
    """The content of a torch.save file on the CPU, loaded with ``weights_only=True``:
    tensors, numbers and plain containers. Anything else (a pickled object, a damaged
    file) raises ``Refused`` with a reason that never suggests turning ``weights_only`` off."""
    try:
        with warnings.catch_warnings():  # torch's notes on what it refuses: the reason says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or names_objects(path):  # a class or function it names
            raise Refused("it holds Python objects other than tensors, which ifv does not "
                          "unpickle") from None
        raise Refused("not a readable torch.save file (damaged, or another format)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is one reason
        first = (str(exc).strip().splitlines() or [""])[0]
        why = "" if not first or "weights_only" in first else f": {first[:120]}"
        raise Refused(f"not a readable torch.save file ({exc.__class__.__name__}{why})"
                      ) from None


_OBJECT_OPS = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE"}


def names_objects(path: str | Path) -> bool:
    """Whether the file at ``path`` is a pickle (a plain one, not torch.save's zip) that
    builds Python objects (a class, a function call), read opcode by opcode without running
    any."""
    try:
        with open(path, "rb") as f:
            return any(op.name in _OBJECT_OPS for op, _, _ in pickletools.genops(f))
    except Exception:  # noqa: BLE001 - not a pickle (or a damaged one): it names nothing
        return False


def default_cache_dir() -> Path:
    """$IFV_CACHE, else $XDG_CACHE_HOME/ifv, else ~/.cache/ifv."""
    if os.environ.get("IFV_CACHE"):
        return Path(os.environ["IFV_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ifv"

"""Atomic file writes, content keys and the stage cache: nothing half-written is ever left
behind, nothing damaged is ever read, nothing finished is computed twice."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from ifv.device import to as to_device
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
    within it: a face's outputs, checked before any work."""
    check_writable(folder, what)
    for name in names:
        refuse_special(Path(folder).expanduser() / name, f"{what} file")


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
    file) raises ``Refused`` with a reason that never suggests ``weights_only=False``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # torch's refusal of a class or function the file names
            raise Refused("it holds Python objects other than tensors, which ifv does not "
                          "unpickle") from None
        raise Refused("not a readable torch.save file (damaged, or another format)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is one reason
        first = (str(exc).strip().splitlines() or [""])[0]
        why = "" if not first or "weights_only" in first else f": {first[:120]}"
        raise Refused(f"not a readable torch.save file ({exc.__class__.__name__}{why})"
                      ) from None


def default_cache_dir() -> Path:
    """$IFV_CACHE, else $XDG_CACHE_HOME/ifv, else ~/.cache/ifv."""
    if os.environ.get("IFV_CACHE"):
        return Path(os.environ["IFV_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ifv"


# A stage entry is torch.save's bytes, then their SHA-256 and this tag: a truncated or
# altered file fails the check when read.
_TAG = b"ifv-stage-entry-1"
_DIGEST = 32


class Damaged(ValueError):
    """A cache entry that fails its checksum or cannot be read."""


def pack(obj: Any) -> bytes:
    """``obj`` (tensors, numbers, dicts) as the bytes of a checked entry; tensors are saved
    from the host, so an entry made on a GPU reads on any machine."""
    buf = io.BytesIO()
    torch.save(to_device(obj, "cpu"), buf)
    payload = buf.getvalue()
    return payload + hashlib.sha256(payload).digest() + _TAG


def unpack(data: bytes) -> Any:
    """The object of a checked entry; raises ``Damaged`` unless its checksum holds."""
    if len(data) < _DIGEST + len(_TAG) or not data.endswith(_TAG):
        raise Damaged("truncated or not an ifv cache entry")
    payload, digest = data[:-len(_TAG) - _DIGEST], data[-len(_TAG) - _DIGEST:-len(_TAG)]
    if hashlib.sha256(payload).digest() != digest:
        raise Damaged("checksum mismatch")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a checked but unreadable entry is damaged too
        raise Damaged(f"unreadable ({exc.__class__.__name__})") from None


def _fault(stage: str) -> None:
    """Fault injection for the tests: ``IFV_FAULT=STAGE:N`` kills this process (SIGKILL)
    right after its N-th write of a ``STAGE`` entry (``realizations``, ``reopt.part``, ...)."""
    spec = os.environ.get("IFV_FAULT", "")
    name, _, count = spec.partition(":")
    if name != stage:
        return
    _WRITES[stage] = _WRITES.get(stage, 0) + 1
    if _WRITES[stage] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_WRITES: dict[str, int] = {}


class StageCache:
    """Stage outputs (dicts of tensors) as checked files under ``root/STAGE/``, named by a
    hash of exactly the configuration each stage depends on and the stage's version.

    An entry in the making keeps its finished batches beside it (``NAME.parts/``), so a
    killed run loses at most the batch in progress. A damaged entry is reported in one line,
    moved to ``root/damaged/`` and recomputed. A lock per entry (``NAME.lock``, filelock's
    ``FileLock``, an flock on Unix) lets one process compute it while another waits and then
    reads it.
    """

    def __init__(self, root: str | Path | None, log: Callable[[str], None] = print) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir() / "stages"
        self.log = log

    def path(self, stage: str, version: int, key: dict[str, Any]) -> Path:
        return self.root / stage / f"{content_key({'v': version, **key})}.pt"

    def read(self, path: Path, stage: str) -> Any | None:
        """The entry at ``path``, or None where there is none or it is damaged (then moved
        aside, with one line)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return unpack(data)
        except Damaged as why:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            dest = self.root / "damaged" / path.relative_to(self.root).parent / (
                f"{path.name}.{stamp}.{os.getpid()}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            self.log(f"{stage}: damaged cache entry {path} ({why}): moved to {dest}; "
                     "recomputing it")
            return None

    def write(self, path: Path, stage: str, obj: Any) -> None:
        atomic_write(path, lambda p: p.write_bytes(pack(obj)))
        _fault(stage)

    def get_or_compute(self, stage: str, version: int, key: dict[str, Any],
                       compute: Callable[[Parts], dict[str, Any]]) -> dict[str, Any]:
        """The entry of ``stage`` for ``key``; else ``compute(parts)``'s, written first.
        ``compute`` stores and finds its finished batches in ``parts``."""
        path = self.path(stage, version, key)
        out = self.read(path, stage)
        if out is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock"):
                out = self.read(path, stage)  # another process may have made it meanwhile
                if out is None:
                    parts = Parts(self, path, stage)
                    out = compute(parts)
                    self.write(path, stage, out)
                    parts.clear()
                    return out
        self.log(f"{stage}: cached ({path})")
        Parts(self, path, stage).clear()  # left by a process killed after writing the entry
        return out


class Parts:
    """The finished batches of an entry in the making, keyed by their sample range."""

    def __init__(self, cache: StageCache, entry: Path, stage: str) -> None:
        self.cache = cache
        self.folder = entry.with_suffix(".parts")
        self.stage = f"{stage}.part"

    def _path(self, start: int, stop: int) -> Path:
        return self.folder / f"{start}-{stop}.pt"

    def load(self, start: int, stop: int) -> dict[str, Any] | None:
        return self.cache.read(self._path(start, stop), self.stage)

    def save(self, start: int, stop: int, out: dict[str, Any]) -> None:
        self.cache.write(self._path(start, stop), self.stage, out)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

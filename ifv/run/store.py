"""The stage cache: checked entries keyed by the configuration a stage depends on, kept in
parts while in the making, locked while computed. Nothing damaged is ever read, nothing
finished is computed twice, and an entry copied or moved to another stage's or key's place
is never read there: each records what it is the entry of."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from ifv.device import to as to_device
from ifv.files import atomic_write, content_key, default_cache_dir

# A stage entry is torch.save's bytes of {"entry": what it is the entry of, "value": the
# stage's output}, then their SHA-256 and this tag: a truncated or altered file fails the
# check when read, and so does one in another entry's place.
_TAG = b"ifv-stage-entry-2"
_DIGEST = 32


class Damaged(ValueError):
    """A cache entry that fails its checksum or cannot be read."""


def pack(obj: Any, entry: str) -> bytes:
    """``obj`` (tensors, numbers, dicts) as the bytes of a checked entry of ``entry`` (its
    stage and key: its path in the cache, e.g. ``jacobian/KEY.pt``); tensors are saved from
    the host, so an entry made on a GPU reads on any machine."""
    buf = io.BytesIO()
    torch.save({"entry": entry, "value": to_device(obj, "cpu")}, buf)
    payload = buf.getvalue()
    return payload + hashlib.sha256(payload).digest() + _TAG


def unpack(data: bytes, entry: str) -> Any:
    """The object of a checked entry of ``entry``; raises ``Damaged`` unless its checksum
    holds and it is the entry of ``entry``."""
    if len(data) < _DIGEST + len(_TAG) or not data.endswith(_TAG):
        raise Damaged("truncated or not an ifv cache entry")
    payload, digest = data[:-len(_TAG) - _DIGEST], data[-len(_TAG) - _DIGEST:-len(_TAG)]
    if hashlib.sha256(payload).digest() != digest:
        raise Damaged("checksum mismatch")
    try:
        held = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a checked but unreadable entry is damaged too
        raise Damaged(f"unreadable ({exc.__class__.__name__})") from None
    own = held.get("entry") if isinstance(held, dict) else None
    if own != entry or "value" not in held:
        raise Damaged(f"the entry of {own or 'nothing it records'}, not of {entry}")
    return held["value"]


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

    def entry(self, path: Path) -> str:
        """What the file at ``path`` is the entry of: its stage and key, as its place in the
        cache (``STAGE/KEY.pt``, a part ``STAGE/KEY.parts/START-STOP.pt``)."""
        return path.relative_to(self.root).as_posix()

    def read(self, path: Path, stage: str) -> Any | None:
        """The entry at ``path``, or None where there is none or it is damaged (then moved
        aside, with one line)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return unpack(data, self.entry(path))
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
        atomic_write(path, lambda p: p.write_bytes(pack(obj, self.entry(path))))
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

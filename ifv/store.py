"""Atomic file writes, content keys and the stage cache: nothing half-written is ever left
behind."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def canonical_json(obj: Any) -> str:
    """Deterministic JSON of a config (sorted keys, no whitespace)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any, length: int = 16) -> str:
    """A short hash of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
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


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str)))


def default_cache_dir() -> Path:
    """$IFV_CACHE, else $XDG_CACHE_HOME/ifv, else ~/.cache/ifv."""
    if os.environ.get("IFV_CACHE"):
        return Path(os.environ["IFV_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ifv"


class StageCache:
    """Stage outputs (dicts of tensors) as .pt files under ``root/STAGE/``, named by a hash
    of exactly the configuration each stage depends on and the stage's version."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir() / "stages"

    def get_or_compute(self, stage: str, version: int, key: dict[str, Any],
                       compute: Callable[[], dict[str, Any]], log: Callable[[str], None],
                       ) -> dict[str, Any]:
        """The cached output of ``stage`` for ``key``, else ``compute()``'s, written first."""
        path = self.root / stage / f"{content_key({'v': version, **key})}.pt"
        if path.exists():
            log(f"{stage}: cached ({path})")
            return torch.load(path, weights_only=True)
        out = compute()
        atomic_write(path, lambda p: torch.save(out, p))
        return out

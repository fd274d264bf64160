"""Atomic writes: complete files with the usual permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ifv.errors import UserError
from ifv.store import atomic_write, check_writable, content_key


def test_atomic_write_gives_the_permissions_open_would(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a" / "f.txt", lambda p: p.write_text("x"))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert path.read_text() == "x"
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path: Path) -> None:
    def fail(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "f.txt", fail)
    assert list(tmp_path.iterdir()) == []


def test_content_key_ignores_key_order() -> None:
    assert content_key({"a": 1, "b": [2, 3]}) == content_key({"b": [2, 3], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})


def test_a_checked_entry_refuses_truncation_and_flipped_bits() -> None:
    import torch

    from ifv.store import Damaged, pack, unpack

    obj = {"v": torch.arange(1000, dtype=torch.float64), "n": 3}
    data = pack(obj)
    got = unpack(data)
    assert torch.equal(got["v"], obj["v"]) and got["n"] == 3
    with pytest.raises(Damaged, match="truncated"):
        unpack(data[:-5])
    for i in (10, len(data) // 2, len(data) - 40):  # header, tensor data, digest
        flipped = bytearray(data)
        flipped[i] ^= 1
        with pytest.raises(Damaged, match="checksum"):
            unpack(bytes(flipped))


def test_check_writable_makes_no_folder(tmp_path: Path) -> None:
    """The check before a run leaves nothing behind; a file in the way is one clear error."""
    target = tmp_path / "outputs" / "run" / "time"
    check_writable(target, "hydra.run.dir")
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write stage_cache .*is not a folder"):
        check_writable(tmp_path / "file" / "sub", "stage_cache")

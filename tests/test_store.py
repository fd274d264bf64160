"""Atomic writes: complete files with the usual permissions, nothing left behind on failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ifv.errors import UserError
from ifv.files import atomic_write, check_file, check_outputs, check_writable, content_key


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

    from ifv.run.store import Damaged, pack, unpack

    obj = {"v": torch.arange(1000, dtype=torch.float64), "n": 3}
    data = pack(obj, "jacobian/k.pt")
    got = unpack(data, "jacobian/k.pt")
    assert torch.equal(got["v"], obj["v"]) and got["n"] == 3
    with pytest.raises(Damaged, match="the entry of jacobian/k.pt, not of reopt/k.pt"):
        unpack(data, "reopt/k.pt")
    with pytest.raises(Damaged, match="truncated"):
        unpack(data[:-5], "jacobian/k.pt")
    for i in (10, len(data) // 2, len(data) - 40):  # header, tensor data, digest
        flipped = bytearray(data)
        flipped[i] ^= 1
        with pytest.raises(Damaged, match="checksum"):
            unpack(bytes(flipped), "jacobian/k.pt")


def test_check_writable_makes_no_folder(tmp_path: Path) -> None:
    """The check before a run leaves nothing behind; a file in the way is one clear error."""
    target = tmp_path / "outputs" / "run" / "time"
    check_writable(target, "hydra.run.dir")
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write stage_cache .*is not a folder"):
        check_writable(tmp_path / "file" / "sub", "stage_cache")


def _specials(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Targets that exist and are no regular file, with how they are named."""
    (tmp / "target").write_text("keep")
    (tmp / "link").symlink_to(tmp / "target")
    (tmp / "dangling").symlink_to(tmp / "nowhere")
    (tmp / "folder").mkdir()
    os.mkfifo(tmp / "fifo")
    return {"link": (tmp / "link", "a symbolic link"),
            "dangling": (tmp / "dangling", "a symbolic link"),
            "folder": (tmp / "folder", "a folder"), "fifo": (tmp / "fifo", "a named pipe"),
            "device": (Path("/dev/null"), "a character device"),
            "stdout": (Path("/dev/stdout"), "a symbolic link")}


@pytest.mark.parametrize("kind", ["link", "dangling", "folder", "fifo", "device", "stdout"])
def test_atomic_write_refuses_what_is_no_regular_file(kind: str, tmp_path: Path) -> None:
    """Writing through a link or onto a folder or a device is refused in one line; the
    target is left as it was and no temporary file is left behind."""
    path, what = _specials(tmp_path)[kind]
    before = sorted(p.name for p in tmp_path.iterdir())
    written: list[Path] = []
    with pytest.raises(UserError) as err:
        atomic_write(path, lambda p: (written.append(p), p.write_text("new")))
    assert str(err.value) == (f"output file {path} is {what}, not a regular file; ifv writes "
                              "only regular files (it would replace it): choose another path")
    assert not written  # refused before anything was written
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "target").read_text() == "keep" and (tmp_path / "link").is_symlink()
    assert (tmp_path / "folder").is_dir() and stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    with pytest.raises(UserError, match=f"invert.out {path} is {what}"):
        check_file(path, "invert.out")
    with pytest.raises(UserError, match=f"compare.out file {path} is {what}"):
        check_outputs(path.parent, [path.name], "compare.out")


def test_check_file_and_check_outputs_accept_regular_and_absent_files(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("old")
    check_file(tmp_path / "old.json", "invert.out")
    check_file(tmp_path / "new" / "x.json", "invert.out")
    check_outputs(tmp_path / "run", ["results.parquet"], "hydra.run.dir")
    check_outputs(tmp_path, ["old.json", "absent.png"], "compare.out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # nothing made
    atomic_write(tmp_path / "old.json", lambda p: p.write_text("new"))  # a file is replaced
    assert (tmp_path / "old.json").read_text() == "new"
    with pytest.raises(UserError, match="cannot write the folder of invert.out"):
        check_file(tmp_path / "old.json" / "x.json", "invert.out")


class _Payload:
    """Unpickled, it writes a marker file: the code a malicious file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return os.system, (f"touch {self.marker}",)


def test_load_tensors_never_runs_a_pickle(tmp_path: Path) -> None:
    import torch

    from ifv.files import Refused, load_tensors

    marker = tmp_path / "MARKER"
    torch.save({"w": torch.ones(2), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(Refused) as err:
        load_tensors(tmp_path / "evil.pt")
    assert str(err.value) == ("it holds Python objects other than tensors, which ifv does not "
                              "unpickle")
    assert not marker.exists()
    torch.save({"w": torch.ones(2), "n": [1, 2]}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.ones(2))

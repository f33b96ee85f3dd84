"""atoll.durable: a write is whole or absent, with the mode asked for."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from atoll import durable


def test_write_atomic_replaces_the_file_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "key"
    target.parent.mkdir()
    target.write_text("old")
    durable.write_atomic(target, "new", mode=0o600)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["key"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        durable.write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_replace_moves_a_finished_file(tmp_path: Path) -> None:
    staged = tmp_path / "image.partial"
    staged.write_bytes(b"disk")
    target = tmp_path / "image"
    durable.replace(staged, target)
    assert target.read_bytes() == b"disk"
    assert not staged.exists()


def test_a_secret_is_never_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary file is 0600 while the key's bytes go into it, whatever the umask."""
    seen: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    old = os.umask(0)
    try:
        durable.write_atomic(tmp_path / "ca.key", b"secret", mode=0o600)
    finally:
        os.umask(old)
    assert seen == [0o600]
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_exclusive_never_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "node.key"
    durable.write_atomic(target, b"first", mode=0o600, exclusive=True)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        durable.write_atomic(target, b"second", mode=0o600, exclusive=True)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]


def test_copy_streams_a_file_into_place(tmp_path: Path) -> None:
    source = tmp_path / "vmlinuz"
    source.write_bytes(b"kernel" * 100_000)
    target = tmp_path / "esp" / "ostree" / "vmlinuz"
    durable.copy(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["vmlinuz"]


def test_a_failed_copy_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy cut short (a read error half way) removes its temporary file."""
    source, target = tmp_path / "new", tmp_path / "vmlinuz"
    source.write_bytes(b"new kernel")
    target.write_bytes(b"old")

    def cut_short(src: BinaryIO, dst: BinaryIO) -> None:
        dst.write(src.read(3))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shutil, "copyfileobj", cut_short)
    with pytest.raises(OSError, match="Input/output error"):
        durable.copy(source, target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "vmlinuz"]


def test_replace_renames_an_existing_file_across_directories(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    staged = tmp_path / "work" / "disk.raw"
    staged.write_bytes(b"disk")
    target = tmp_path / "disk.img"
    target.write_bytes(b"old")
    durable.replace(staged, target)
    assert target.read_bytes() == b"disk"
    assert list((tmp_path / "work").iterdir()) == []

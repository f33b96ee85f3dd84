"""atoll.durable: a write is whole or absent, with the mode asked for."""

from __future__ import annotations

import stat
from pathlib import Path

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

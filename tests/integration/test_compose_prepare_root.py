"""atoll's PID-1 step is a static program (no ELF interpreter to find on the physical root)."""

from __future__ import annotations

from pathlib import Path

from atoll.compose.prepare_root import build
from atoll.compose.slim import read_elf_links


def test_prepare_root_builds_static_and_reproducibly(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    build(first)
    build(second)
    links = read_elf_links(first.read_bytes())
    assert links is not None
    assert links.interpreter is None and links.needed == ()
    assert first.read_bytes() == second.read_bytes()

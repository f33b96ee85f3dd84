"""The root filesystem cache (atoll.compose.rootfs): an entry is whole or absent.

mmdebstrap is replaced by a stand-in that writes the tarball it is given (and
fails when asked): what is tested is what the cache holds afterwards.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from atoll.compose import rootfs
from atoll.compose.plan import RootfsPlan
from atoll.errors import ToolError
from atoll.progress import PlainReporter

PLAN = RootfsPlan(
    suite="bookworm",
    architecture="amd64",
    variant="apt",
    sources=("deb http://deb.debian.org/debian bookworm main",),
    include=("busybox",),
    exclude=(),
    dpkg_options=(),
    local_packages=(),
    index_fingerprint="f" * 16,
)


def _mmdebstrap(fail: bool) -> Callable[..., None]:
    def run(argv: Sequence[object], **_: object) -> None:
        tarball = Path(str(argv[-2]))  # mmdebstrap ... SUITE TARGET MIRROR
        assert tarball.name.endswith(".tar.partial")
        tarball.write_bytes(b"half" if fail else b"rootfs")
        if fail:
            raise ToolError("mmdebstrap failed", argv=["mmdebstrap"], returncode=1)

    return run


def _build(cache: Path, *, reuse: bool = True) -> tuple[Path, bool]:
    reporter = PlainReporter(io.StringIO())
    return rootfs.build_rootfs(PLAN, cache, reporter, source_date_epoch=0, reuse=reuse)


def test_a_complete_build_is_renamed_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rootfs, "run", _mmdebstrap(fail=False))
    tarball, cached = _build(tmp_path)
    assert (tarball.read_bytes(), cached) == (b"rootfs", False)
    assert [p.name for p in (tmp_path / "rootfs").iterdir()] == [tarball.name]
    assert _build(tmp_path) == (tarball, True)


def test_a_failed_build_leaves_the_cache_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rootfs, "run", _mmdebstrap(fail=False))
    tarball, _ = _build(tmp_path)
    monkeypatch.setattr(rootfs, "run", _mmdebstrap(fail=True))
    with pytest.raises(ToolError):
        _build(tmp_path, reuse=False)
    assert tarball.read_bytes() == b"rootfs"
    assert [p.name for p in (tmp_path / "rootfs").iterdir()] == [tarball.name]
    assert list((tmp_path / "tmp").iterdir()) == []

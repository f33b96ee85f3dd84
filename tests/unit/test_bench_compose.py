"""The compose benchmark's explanations: Debian's installed set and where the bytes are."""

from __future__ import annotations

import pytest

from atoll.bench.baseline import installed_packages
from atoll.bench.compose import largest_parts
from atoll.tools.ostree import TreeEntry


def _file(path: str, size: int, kind: str = "-") -> TreeEntry:
    return TreeEntry(kind=kind, mode=0o644, uid=0, gid=0, size=size, checksum="c", path=path)


STATUS = """Package: bash
Status: install ok installed
Version: 5.2

Package: removed-one
Status: deinstall ok config-files

Package: half
Status: install ok half-configured

Package: libc6
Architecture: amd64
Status: install ok installed
Description: GNU C Library
 Status: install ok installed (a description line, not a field)
"""


def test_installed_packages_are_those_dpkg_calls_installed() -> None:
    assert installed_packages(STATUS) == {"bash", "libc6"}
    assert installed_packages("") == frozenset()


@pytest.mark.parametrize(
    ("entries", "depth", "expected"),
    [
        (
            [
                _file("/usr/bin/containerd", 54_000_000),
                _file("/usr/lib/python3.13/a.py", 1_000_000),
                _file("/usr/lib/python3.13/b/c.py", 2_000_000),
                _file("/usr/bin", 4096, kind="d"),
                _file("/usr/bin/sh", 10_000_000, kind="l"),
            ],
            3,
            {"/usr/bin/containerd": 54.0, "/usr/lib/python3.13": 3.0},
        ),
        (
            [_file("/usr/bin/containerd", 3_000_000), _file("/usr/bin/ctr", 2_000_000)],
            2,
            {"/usr/bin": 5.0},
        ),
        ([], 3, {}),
    ],
)
def test_largest_parts_sum_regular_files_under_a_prefix(
    entries: list[TreeEntry], depth: int, expected: dict[str, float]
) -> None:
    assert largest_parts(entries, depth=depth) == expected


def test_largest_parts_keeps_the_largest_first() -> None:
    entries = [_file(f"/usr/lib/p{i}", i * 1_000_000) for i in range(1, 6)]
    assert list(largest_parts(entries, count=2)) == ["/usr/lib/p5", "/usr/lib/p4"]

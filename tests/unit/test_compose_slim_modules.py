"""Which kernel modules ``[kernel] modules_keep`` keeps, on kernels that compress them or not."""

from __future__ import annotations

import pytest

from atoll.compose.slim import _module_matches

KEEP = ("kernel/fs/fat", "kernel/drivers/net/veth.ko", "kernel/net/*/nf_*.ko")


@pytest.mark.parametrize(
    ("module", "kept"),
    [
        ("kernel/fs/fat/vfat.ko", True),  # a directory: everything below it
        ("kernel/fs/fat/vfat.ko.xz", True),
        ("kernel/fs/fatter/x.ko", False),  # not a prefix match of the name
        ("kernel/drivers/net/veth.ko", True),  # bookworm: plain
        ("kernel/drivers/net/veth.ko.xz", True),  # trixie: the same module compressed
        ("kernel/drivers/net/veth.ko.zst", True),
        ("kernel/drivers/net/veth2.ko.xz", False),
        ("kernel/net/ipv4/nf_reject.ko.xz", True),  # a glob matches the plain name too
        ("kernel/drivers/net/tun.ko.xz", False),
    ],
)
def test_a_kept_module_is_kept_whether_compressed_or_not(module: str, kept: bool) -> None:
    assert _module_matches(module, KEEP) is kept

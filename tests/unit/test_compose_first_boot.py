"""Compose does systemd's first-boot work in the tree (atoll.compose.slim.settle_first_boot),
and atoll disk carries its /etc stamp into each deployment."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.compose.slim import (
    DEV_NODES_DROPIN,
    STATIC_NODES,
    UPDATE_DONE_DROPIN,
    settle_first_boot,
    static_nodes_tmpfiles,
)
from atoll.disk.build import OS_NAME, _copy_update_stamps


@pytest.mark.parametrize(
    ("devname", "expected"),
    [
        ("", ""),
        ("# Device nodes to trigger on-demand module loading.\n", ""),
        ("fuse fuse c10:229\n", "c! /dev/fuse 0600 - - - 10:229\n"),
        # A node in a subdirectory: the directory first, as kmod writes it.
        ("tun net/tun c10:200\n", "d /dev/net 0755 - - -\nc! /dev/net/tun 0600 - - - 10:200\n"),
        (
            "loop loop-control c10:237\nbtrfs btrfs-control c10:234\n",
            "c! /dev/loop-control 0600 - - - 10:237\nc! /dev/btrfs-control 0600 - - - 10:234\n",
        ),
        ("blk foo b8:0\n", "b! /dev/foo 0600 - - - 8:0\n"),
        # Lines that are not three fields or have no type and numbers are skipped.
        ("odd line\nx y z9:1\nx y c10\n", ""),
    ],
)
def test_static_nodes_are_what_kmod_writes(devname: str, expected: str) -> None:
    assert static_nodes_tmpfiles(devname) == expected


def test_settle_first_boot_writes_nodes_stamps_and_the_order(tmp_path: Path) -> None:
    for directory in ("etc", "var", "usr/lib/systemd/system"):
        (tmp_path / directory).mkdir(parents=True)
    for unit in (
        "systemd-update-done.service",
        "systemd-tmpfiles-setup-dev.service",
        "systemd-tmpfiles-setup-dev-early.service",
    ):
        (tmp_path / "usr/lib/systemd/system" / unit).write_text("[Unit]\n")
    for kver in ("6.1.0-1", "6.1.0-2"):  # two kernels with the same node: one line
        moddir = tmp_path / "usr/lib/modules" / kver
        moddir.mkdir(parents=True)
        (moddir / "modules.devname").write_text("tun net/tun c10:200\n")
    aux = tmp_path / "var/cache/ldconfig/aux-cache"  # inodes and ctimes: never reproducible
    aux.parent.mkdir(parents=True)
    aux.write_bytes(b"\x00")
    settle_first_boot(tmp_path)  # no ldconfig, sysusers or journalctl in this tree: skipped
    assert not aux.exists()
    nodes = (tmp_path / STATIC_NODES).read_text()
    assert nodes == "d /dev/net 0755 - - -\nc! /dev/net/tun 0600 - - - 10:200\n"
    for stamp in ("etc/.updated", "var/.updated"):
        assert "TIMESTAMP_NSEC=000000000\n" in (tmp_path / stamp).read_text()
    assert "After=systemd-tmpfiles-setup.service" in (tmp_path / UPDATE_DONE_DROPIN).read_text()
    # The second pass over /dev runs exactly when systemd-sysusers does.
    sysusers = {"ConditionNeedsUpdate=|/etc", "ConditionCredential=|sysusers.extra"}
    assert sysusers <= set((tmp_path / DEV_NODES_DROPIN).read_text().splitlines())


def test_settle_first_boot_without_systemd_writes_no_drop_in(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    settle_first_boot(tmp_path)
    assert (tmp_path / "etc/.updated").exists()
    assert not (tmp_path / "var/.updated").exists()
    assert not (tmp_path / UPDATE_DONE_DROPIN).exists()
    assert not (tmp_path / DEV_NODES_DROPIN).exists()
    assert not (tmp_path / STATIC_NODES).exists()


def test_disk_copies_the_stamp_into_each_deployments_etc(tmp_path: Path) -> None:
    # ostree never copies /usr/etc/.updated into a deployment's /etc (tested on the
    # real thing in tests/vm: the first boot runs none of the units); atoll disk does.
    deploy = tmp_path / "ostree/deploy" / OS_NAME / "deploy"
    stamped, unstamped, kept = deploy / "aa.0", deploy / "bb.0", deploy / "cc.1"
    for deployment in (stamped, unstamped, kept):
        (deployment / "etc").mkdir(parents=True)
        (deployment / "usr/etc").mkdir(parents=True)
    (stamped / "usr/etc/.updated").write_text("TIMESTAMP_NSEC=000000000\n")
    (kept / "usr/etc/.updated").write_text("composed\n")
    (kept / "etc/.updated").write_text("written on the node\n")
    _copy_update_stamps(tmp_path)
    assert (stamped / "etc/.updated").read_text() == "TIMESTAMP_NSEC=000000000\n"
    assert not (unstamped / "etc/.updated").exists()
    assert (kept / "etc/.updated").read_text() == "written on the node\n"


def test_without_an_early_dev_pass_the_only_one_keeps_running(tmp_path: Path) -> None:
    # bookworm's systemd (252) has no -dev-early unit: -dev is its only pass over /dev.
    units = tmp_path / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "systemd-tmpfiles-setup-dev.service").write_text("[Unit]\n")
    (units / "systemd-update-done.service").write_text("[Unit]\n")
    settle_first_boot(tmp_path)
    assert not (tmp_path / DEV_NODES_DROPIN).exists()
    assert (tmp_path / UPDATE_DONE_DROPIN).exists()

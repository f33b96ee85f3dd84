"""Keep the node's EFI system partition in step with ostree's boot entries.

The entries' format and the ESP's layout are :mod:`atoll.wire.bootentry`'s
(``atoll disk`` writes the first ESP with the same code). This module is the
node's part: find and mount the ESP (:func:`mounted_esp`), mirror the
sysroot's entries onto it after every deploy (:func:`sync_node`, which the
agent runs after an upgrade or a rollback; it checks the ESP's free space
first and fails with :class:`atoll.wire.bootentry.EspFullError` naming the
ESP by its mount point, or by its device when the agent mounted it
privately), and mark the booted entry good
(:func:`bless`, what ``systemd-bless-boot`` does) once the node is healthy.
Standard library only: the agent calls this on the node.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from atoll import durable
from atoll.agent import command
from atoll.wire.bootentry import (
    ENTRIES_DIR,
    Action,
    EntryError,
    apply_plan,
    checked_sync,
    ostree_argument,
    parse_entry,
    plan_sync,
)

ESP_TYPE = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
# On the node: the physical root's /boot, where ostree writes (prepare-root
# binds the physical root at /sysroot).
NODE_BOOT_DIR = Path("/sysroot/boot")
# Seconds for the programs this module runs (atoll.agent.command): never endless.
BLKID_TIMEOUT = 30.0  # blkid -p of one partition
MOUNT_TIMEOUT = 60.0  # mount or umount of the ESP (umount writes back FAT's dirty blocks)


def bless(esp: Path, cmdline: str) -> str | None:
    """Mark the booted entry good: drop its boot counter (what systemd-bless-boot does).

    The booted entry is the one whose ``ostree=`` matches the kernel command
    line. Returns the new file name, or None when the entry had no counter.
    The agent calls this once the node is healthy; until then systemd-boot
    keeps counting down and, at ``+0``, falls back to the previous entry.
    """
    booted = ostree_argument(cmdline)
    if booted is None:
        raise EntryError("kernel command line has no ostree= argument")
    entries_dir = esp / ENTRIES_DIR
    for path in sorted(entries_dir.glob("*.conf")):
        entry = parse_entry(path.read_text(), path.name)
        if ostree_argument(entry.options) != booted:
            continue
        if entry.tries_left is None:
            return None
        blessed = entries_dir / f"{entry.id}.conf"
        # Renamed durably (the directory flushed, on FAT its table too): a bless
        # lost to a power cut would go on counting down.
        durable.replace(path, blessed)
        return blessed.name
    raise EntryError(f"{entries_dir}: no entry boots {booted}")


def find_esp_device(sys_block: Path = Path("/sys/class/block")) -> str:
    """The ESP's block device on the node, found by its GPT partition type.

    Each partition the kernel knows is probed with ``blkid -p`` (low-level,
    no cache): the cached ``blkid -t PART_ENTRY_TYPE=...`` lookup never
    matches, because the cache does not keep partition-table tags.
    """
    partitions = sorted(p.name for p in sys_block.iterdir() if (p / "partition").exists())
    for name in partitions:
        result = command.run(
            ["blkid", "-p", "-o", "value", "-s", "PART_ENTRY_TYPE", f"/dev/{name}"],
            timeout=BLKID_TIMEOUT,
            check=False,  # exit 2: nothing found on this partition
        )
        if result.stdout_text.strip().lower() == ESP_TYPE:
            return f"/dev/{name}"
    probed = ", ".join(partitions) or "no partitions"
    raise EntryError(f"no EFI system partition (GPT type {ESP_TYPE}) among {probed}")


def _vfat_mounts(mounts: Path = Path("/proc/self/mounts")) -> set[Path]:
    found = set()
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "vfat":
            found.add(Path(fields[1]))
    return found


@contextlib.contextmanager
def mounted_esp() -> Iterator[Path]:
    """The ESP mounted read-write: /efi, /boot or /boot/efi if mounted, else a private mount.

    Only a FAT mount counts: on atoll /boot is the physical root's /boot
    (ostree's entries, bound there by prepare-root), never the ESP. A private
    mount that cannot be unmounted raises :class:`atoll.agent.command.CommandError`
    and its mount point is left alone (removing it recursively would empty the ESP).
    """
    with named_esp() as (esp, _):
        yield esp


@contextlib.contextmanager
def named_esp() -> Iterator[tuple[Path, str]]:
    """:func:`mounted_esp` and how an error names it: ``ESP (/boot/efi)`` where the
    system mounts it, ``ESP (/dev/vda1)`` when the mount is the agent's own."""
    vfat = _vfat_mounts()
    for candidate in (Path("/efi"), Path("/boot"), Path("/boot/efi")):
        if candidate in vfat and (candidate / "loader").is_dir():
            yield candidate, f"ESP ({candidate})"
            return
    device = find_esp_device()
    mountpoint = tempfile.mkdtemp(prefix="atoll-esp-", dir="/run")
    try:
        command.run(["mount", "-t", "vfat", device, mountpoint], timeout=MOUNT_TIMEOUT)
        try:
            yield Path(mountpoint), f"ESP ({device})"
        finally:
            command.run(["umount", mountpoint], timeout=MOUNT_TIMEOUT)
    finally:
        with contextlib.suppress(OSError):  # rmdir only: never into a mounted ESP
            os.rmdir(mountpoint)


def sync_node(tries: int | None = None, boot_dir: Path = NODE_BOOT_DIR) -> list[Action]:
    """On the node, after ``ostree admin deploy``/``undeploy``: bring the ESP up to date,
    if it has room for the new kernel (:func:`atoll.wire.bootentry.checked_sync`)."""
    with named_esp() as (esp, name):
        return checked_sync(boot_dir, esp, name, tries)


def bless_node(ostree: str | None = None) -> str | None:
    """On the node: mark the entry that booted this system as good: the one the
    kernel command line names, or the one whose ``ostree=`` is ``ostree`` (the
    deployment a soft-reboot switched into, :mod:`atoll.agent.softreboot`)."""
    cmdline = f"ostree={ostree}" if ostree else Path("/proc/cmdline").read_text()
    with mounted_esp() as esp:
        return bless(esp, cmdline)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="atoll.agent.bootentries", description="sync ostree's boot entries to the ESP"
    )
    parser.add_argument("--tries", type=int, help="boot counting for the new default entry")
    parser.add_argument("--dry-run", action="store_true", help="print the plan only")
    parser.add_argument("--bless", action="store_true", help="mark the booted entry good")
    args = parser.parse_args(argv)
    try:
        if args.bless:
            blessed = bless_node()
            print(f"blessed {blessed}" if blessed else "booted entry has no boot counter")
            return 0
        with mounted_esp() as esp:
            actions = plan_sync(NODE_BOOT_DIR, esp, args.tries)
            if not args.dry_run:
                apply_plan(actions, NODE_BOOT_DIR, esp)
    except (EntryError, OSError, command.CommandError) as e:
        print(f"atoll bootentries: {e}", file=sys.stderr)
        return 1
    for action in actions:
        print(action.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

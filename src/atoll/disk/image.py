"""Read a built disk without mounting it (for ``atoll boot`` and the tests).

* :func:`partitions` parses ``sfdisk --json``;
* :func:`boot_entries` lists the deployments' BLS entries from the root
  partition with ``debugfs`` (newest first, as systemd-boot orders them);
* :func:`read_default_entry` gives direct-kernel mode (qemu ``-kernel``) what
  it needs: the default entry's kernel bytes and its command line, re-read
  before every boot since each deploy changes ``ostree=``;
* :func:`select_entry` makes systemd-boot boot a given entry (rollback tests)
  by writing ``default`` into the ESP's ``loader.conf`` with ``mcopy``.

qcow2 images are converted to a temporary raw file first (``qemu-img``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from atoll.disk.layout import ESP_TYPE, ROOT_LABEL
from atoll.errors import AtollError, InputError
from atoll.process import run
from atoll.tools import qemu
from atoll.wire import bootentry


class _SfdiskPartition(TypedDict, total=False):
    node: str
    start: int
    size: int
    type: str
    uuid: str
    name: str


@dataclass(frozen=True)
class DiskPartition:
    node: str
    start: int  # bytes
    size: int  # bytes
    type_uuid: str
    uuid: str
    name: str


@dataclass(frozen=True)
class DirectBoot:
    """What qemu ``-kernel``/``-append`` needs to boot the default deployment."""

    entry: bootentry.BootEntry
    kernel: bytes

    @property
    def options(self) -> str:
        return self.entry.options


def partitions(image: Path) -> list[DiskPartition]:
    result = run(["sfdisk", "--json", image])
    table = json.loads(result.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    raw: list[_SfdiskPartition] = table.get("partitions", [])
    return [
        DiskPartition(
            node=p.get("node", ""),
            start=int(p.get("start", 0)) * sector,
            size=int(p.get("size", 0)) * sector,
            type_uuid=p.get("type", "").upper(),
            uuid=p.get("uuid", "").lower(),
            name=p.get("name", ""),
        )
        for p in raw
    ]


def _find(image: Path, *, name: str | None = None, type_uuid: str | None = None) -> DiskPartition:
    for part in partitions(image):
        if (name and part.name == name) or (type_uuid and part.type_uuid == type_uuid):
            return part
    raise InputError(f"{image}: no partition {name or type_uuid} (not an atoll disk?)")


@contextlib.contextmanager
def raw_image(image: Path) -> Iterator[Path]:
    """``image`` itself when raw, else a temporary raw copy."""
    with open(image, "rb") as f:
        magic = f.read(4)
    if magic != b"QFI\xfb":
        yield image
        return
    with tempfile.TemporaryDirectory(prefix="atoll-raw-") as tmp:
        raw = Path(tmp) / "disk.raw"
        qemu.convert(image, raw, source_format="qcow2", target_format="raw")
        yield raw


def _debugfs(image: Path, offset: int, command: str) -> bytes:
    """Run one read-only debugfs ``command`` on the ext4 file system at ``offset``.

    ``-c`` (catastrophic mode) opens it read-only without its block and inode
    bitmaps: a node's disk is seldom cleanly unmounted (a power cut, a VM that
    was quit), and then the bitmaps' checksums may not match. debugfs exits 0
    even when it could not open the file system: its stderr says so, and that
    is an error here, never an empty listing.
    """
    result = run(["debugfs", "-c", "-R", command, f"{image}?offset={offset}"], check=False)
    problem = result.stderr.decode(errors="replace")
    if result.returncode != 0 or "Filesystem not open" in problem:
        tail = " ".join(problem.split())[-300:]
        raise AtollError(f"{image}: cannot read {ROOT_LABEL} at offset {offset}: {tail}")
    return result.stdout


def _read_file(image: Path, offset: int, path: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="atoll-debugfs-") as tmp:
        out = Path(tmp) / "file"
        # "dump" writes nothing for a missing path (debugfs exits 0 either way).
        _debugfs(image, offset, f'dump "{path}" "{out}"')
        if not out.exists():
            raise AtollError(f"{image}: {ROOT_LABEL}:{path}: no such file")
        return out.read_bytes()


def _entry_names(image: Path, offset: int) -> list[str]:
    listing = _debugfs(image, offset, "ls -p /boot/loader/entries").decode(errors="replace")
    names = []
    for line in listing.splitlines():
        fields = line.split("/")
        # "/inode/mode/uid/gid/name/size/"
        if len(fields) >= 7 and fields[5].endswith(".conf"):
            names.append(fields[5])
    return names


def boot_entries(image: Path) -> list[bootentry.BootEntry]:
    """The deployments' entries on the root partition, default first."""
    with raw_image(image) as raw:
        root = _find(raw, name=ROOT_LABEL)
        found = [
            bootentry.parse_entry(
                _read_file(raw, root.start, f"/boot/loader/entries/{name}").decode(), name
            )
            for name in _entry_names(raw, root.start)
        ]
    return sorted(found, key=bootentry.sort_key)


def read_default_entry(image: Path) -> DirectBoot:
    """The default (newest) deployment's kernel and command line."""
    with raw_image(image) as raw:
        root = _find(raw, name=ROOT_LABEL)
        names = _entry_names(raw, root.start)
        if not names:
            raise AtollError(f"{image}: {ROOT_LABEL}:/boot/loader/entries: no boot entry")
        entries = sorted(
            (
                bootentry.parse_entry(
                    _read_file(raw, root.start, f"/boot/loader/entries/{n}").decode(), n
                )
                for n in names
            ),
            key=bootentry.sort_key,
        )
        entry = entries[0]
        kernel = _read_file(raw, root.start, f"/boot{entry.linux}")
    return DirectBoot(entry=entry, kernel=kernel)


def esp_files(image: Path) -> list[str]:
    """Every file on the ESP (``mdir``-style paths), for checks and tests."""
    with raw_image(image) as raw:
        esp = _find(raw, type_uuid=ESP_TYPE)
        listing = run(
            ["mdir", "-/", "-b", "-i", f"{raw}@@{esp.start}", "::/"],
            env={"MTOOLS_SKIP_CHECK": "1"},
        ).stdout.decode(errors="replace")
    return sorted(line.removeprefix("::").strip() for line in listing.splitlines() if line.strip())


def read_esp_file(image: Path, path: str) -> bytes:
    with raw_image(image) as raw:
        esp = _find(raw, type_uuid=ESP_TYPE)
        result = run(
            ["mtype", "-i", f"{raw}@@{esp.start}", f"::{path}"], env={"MTOOLS_SKIP_CHECK": "1"}
        )
    return result.stdout


def select_entry(image: Path, entry_id: str) -> None:
    """Make systemd-boot boot ``entry_id`` (e.g. ``ostree-1-atoll``) on a raw image."""
    esp = _find(image, type_uuid=ESP_TYPE)
    ids = {e.id for e in boot_entries(image)}
    if entry_id not in ids:
        raise InputError(f"{image}: no boot entry {entry_id!r} (entries: {', '.join(sorted(ids))})")
    with tempfile.TemporaryDirectory(prefix="atoll-esp-") as tmp:
        conf = Path(tmp) / "loader.conf"
        # The glob matches the entry with or without a boot counter suffix.
        conf.write_text(bootentry.loader_conf(default=f"{entry_id}*"))
        run(
            [
                "mcopy",
                "-o",
                "-i",
                f"{image}@@{esp.start}",
                os.fspath(conf),
                "::/loader/loader.conf",
            ],
            env={"MTOOLS_SKIP_CHECK": "1"},
        )

"""Boot Loader Specification entries and the ESP's layout, as both sides write them.

ostree writes one Boot Loader Specification entry per deployment into the
sysroot's ``/boot/loader/entries`` (``ostree-<N>-<os>.conf``, N highest for the
default deployment) with ``sysroot.bootloader=none``, and the kernels under
``/boot/ostree/<os>-<bootcsum>/``. Those live on the ext4 root, which the
firmware cannot read. atoll boots UEFI machines with systemd-boot
(``EFI/BOOT/BOOTX64.EFI`` on the ESP, see ``docs/boot.md``), which reads entries
and kernels from the ESP only. So after every deploy :func:`sync` mirrors them;
``atoll disk`` does it for the first deployment (:mod:`atoll.disk.build`) and
reads the entries back (:mod:`atoll.disk.image`), the agent after every upgrade
or rollback (:mod:`atoll.agent.bootentries`, which also finds and mounts the
ESP on the node and blesses the booted entry). The ESP they write:

* ``/boot/ostree/...`` kernels are copied to the same relative path on the ESP
  (their directories are content-addressed: a file already there is kept);
* each entry is written to ``loader/entries/<id>.conf`` with its deployment
  pinned (:func:`pin_deployment`: ostree's bootlinks do not survive the next
  deploy) and the boot counter: with ``tries=N`` the *default* (newest) entry is named
  ``<id>+N.conf``; systemd-boot counts the attempts down, and
  ``systemd-bless-boot`` removes the counter once the boot is good, so a new
  deployment that never becomes good falls back to the previous one;
* entries and kernel directories that ostree no longer has are removed;
* ``loader/loader.conf`` (:func:`loader_conf`): no menu, no editor.

systemd-boot sorts entries without ``sort-key`` by id, highest version first,
and boots the first one: ``ostree-2-atoll`` (the newest deployment) before
``ostree-1-atoll`` (the previous, still selectable for rollback).

Plan, then apply: :func:`plan_sync` compares the entries with what the ESP
holds and returns the list of actions; :func:`apply_plan` performs them,
kernels before entries and removals last, so an interrupted sync never leaves
an entry pointing at a missing kernel. Because removals come last, a sync
needs room for everything it copies and writes beside what the ESP already
holds: :func:`checked_sync` compares that (:func:`space_needed`, whole
clusters) with the ESP's free space first and refuses with
:class:`EspFullError` naming the ESP, e.g. ``ESP (/boot/efi) has 0 bytes free,
the new kernel needs 14 MB`` (MB = 2**20 bytes, rounded up). Standard library
only (and :mod:`atoll.durable`, itself standard library only).
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from atoll import durable

ENTRIES_DIR = "loader/entries"
LOADER_CONF = "loader/loader.conf"
_BOOTLINK = re.compile(r"^/ostree/boot\.\d+(\.\d+)?/")
_COUNTER = re.compile(r"^(?P<id>.+?)(\+(?P<left>\d+)(-(?P<done>\d+))?)?$")
MB = 2**20


class EntryError(ValueError):
    """A boot entry that cannot be used; the message names the file and key."""


class EspFullError(EntryError):
    """The ESP has no room for what a sync must write; ``resource`` names it (``ESP (/efi)``)."""

    def __init__(self, message: str, *, resource: str) -> None:
        super().__init__(message)
        self.resource = resource


@dataclass(frozen=True)
class BootEntry:
    """One BLS type 1 entry, as ostree writes it."""

    id: str  # file name without ".conf" and without a boot counter
    title: str
    version: str
    linux: str  # path relative to the boot partition's root, starting with "/"
    options: str
    initrd: tuple[str, ...] = ()
    tries_left: int | None = None
    tries_done: int | None = None

    def render(self) -> str:
        lines = [f"title {self.title}", f"version {self.version}", f"linux {self.linux}"]
        lines += [f"initrd {path}" for path in self.initrd]
        lines.append(f"options {self.options}")
        return "\n".join(lines) + "\n"


def parse_entry(text: str, name: str) -> BootEntry:
    """Parse the entry file called ``name`` (e.g. ``ostree-1-atoll.conf``)."""
    stem = name.removesuffix(".conf")
    match = _COUNTER.match(stem)
    assert match is not None  # the pattern matches any non-empty string
    fields: dict[str, str] = {}
    initrd: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "initrd":
            initrd.append(value.strip())
        else:
            fields[key] = value.strip()
    for required in ("linux", "options"):
        if required not in fields:
            raise EntryError(f"{name}: missing key '{required}'")
    left, done = match.group("left"), match.group("done")
    return BootEntry(
        id=match.group("id"),
        title=fields.get("title", match.group("id")),
        version=fields.get("version", "0"),
        linux=fields["linux"],
        options=fields["options"],
        initrd=tuple(initrd),
        tries_left=int(left) if left is not None else None,
        tries_done=int(done) if done is not None else None,
    )


def sort_key(entry: BootEntry) -> tuple[int, tuple[int, ...], str]:
    """Newest first: entries out of tries last, then highest version, then id."""
    exhausted = 1 if entry.tries_left == 0 else 0
    numbers = tuple(-int(n) for n in re.findall(r"\d+", entry.version))
    return (exhausted, numbers, entry.id)


def read_entries(entries_dir: Path) -> list[BootEntry]:
    """Every entry in ``entries_dir``, default (newest) first."""
    if not entries_dir.is_dir():
        return []
    found = [
        parse_entry(path.read_text(), path.name)
        for path in entries_dir.iterdir()
        if path.name.endswith(".conf") and path.is_file()
    ]
    return sorted(found, key=sort_key)


class ActionKind(StrEnum):
    COPY = "copy"  # copy source (boot dir) -> target (ESP)
    WRITE = "write"  # write content -> target
    REMOVE = "remove"  # remove target (file or directory)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    target: str  # relative to the ESP root
    source: str = ""  # relative to the boot dir, for COPY
    content: str = ""  # for WRITE

    def describe(self) -> str:
        if self.kind is ActionKind.COPY:
            return f"copy /boot{self.source} -> ESP/{self.target}"
        return f"{self.kind.value} ESP/{self.target}"


def loader_conf(default: str | None = None, timeout: int = 0) -> str:
    """systemd-boot's ``loader.conf``: no menu unless a key is held, no editor."""
    lines = [f"timeout {timeout}", "editor no", "console-mode keep"]
    if default:
        lines.append(f"default {default}")
    return "\n".join(lines) + "\n"


def pin_deployment(entry: BootEntry, sysroot: Path) -> BootEntry:
    """The entry with ostree's bootlink (``/ostree/boot.N/...``) replaced by the deployment.

    ostree's entries name a deployment through ``/ostree/boot.N/OS/BOOTCSUM/SERIAL``
    (in ``init=`` and ``ostree=``), a symlink of the current boot version. A
    deploy switches the boot version and deletes the old bootlinks, so between
    that deploy and the next ESP sync an unchanged copy of the *old* entries on
    the ESP points at nothing and the node cannot boot (found by the power-cut
    test). The ESP's copy names the deployment directory itself
    (``/ostree/deploy/OS/deploy/CHECKSUM.SERIAL``), which lives as long as the
    deployment, whatever the boot version.
    """
    argument = ostree_argument(entry.options)
    if argument is None:
        return entry
    link = argument.removeprefix("ostree=")
    if not _BOOTLINK.match(link):
        return entry
    resolved = Path(os.path.realpath(sysroot / link.lstrip("/")))
    try:
        pinned = "/" + str(resolved.relative_to(sysroot.resolve()))
    except ValueError:
        raise EntryError(f"{entry.id}: ostree={link} leads out of {sysroot}") from None
    if not resolved.is_dir():
        raise EntryError(f"{entry.id}: ostree={link}: no deployment at {resolved}")
    words = []
    for word in entry.options.split():
        key, eq, value = word.partition("=")
        if eq and (value == link or value.startswith(link + "/")):
            words.append(f"{key}={pinned}{value[len(link) :]}")
        else:
            words.append(word)
    return replace(entry, options=" ".join(words))


def plan_sync(boot_dir: Path, esp: Path, tries: int | None = None) -> list[Action]:
    """What to do on ``esp`` so it boots the entries of ``boot_dir``, newest first.

    ``boot_dir`` is the sysroot's ``/boot``; the entries are copied with their
    deployment pinned (:func:`pin_deployment`).
    """
    sysroot = boot_dir.parent
    entries = [pin_deployment(e, sysroot) for e in read_entries(boot_dir / ENTRIES_DIR)]
    copies, wanted_files = _kernel_copies(entries, boot_dir, esp)
    writes, keep_names = _entry_writes(entries, esp, tries)
    if not (esp / LOADER_CONF).is_file():
        writes.append(Action(ActionKind.WRITE, LOADER_CONF, content=loader_conf()))
    return copies + writes + _removals(esp, keep_names, wanted_files)


def _kernel_copies(
    entries: Sequence[BootEntry], boot_dir: Path, esp: Path
) -> tuple[list[Action], set[str]]:
    """Kernels and initrds the ESP lacks (or holds in another size), and every one wanted."""
    copies: list[Action] = []
    wanted: set[str] = set()
    for entry in entries:
        for path in (entry.linux, *entry.initrd):
            rel = path.lstrip("/")
            if rel in wanted:
                continue
            wanted.add(rel)
            source = boot_dir / rel
            if not source.is_file():
                raise EntryError(f"{boot_dir / ENTRIES_DIR}/{entry.id}.conf: {path}: no such file")
            target = esp / rel
            if not target.is_file() or target.stat().st_size != source.stat().st_size:
                copies.append(Action(ActionKind.COPY, rel, source="/" + rel))
    return copies, wanted


def _entry_writes(
    entries: Sequence[BootEntry], esp: Path, tries: int | None
) -> tuple[list[Action], set[str]]:
    """Entries to (re)write, newest with the boot counter, and the entry files to keep."""
    on_esp = read_entries(esp / ENTRIES_DIR)
    existing = {e.id: e for e in on_esp}
    existing_names = _entry_file_names(esp / ENTRIES_DIR)
    writes: list[Action] = []
    keep: set[str] = set()
    for index, entry in enumerate(entries):
        current = existing.get(entry.id)
        if current is None or not _same_boot(current, entry):
            # The same boot under another name: ostree releases name their entry files
            # differently (bookworm's 2022.7 ostree-1-atoll.conf, trixie's 2025.2
            # ostree-1.conf), and the disk was made by the build machine's ostree.
            # Renaming would need room on a full ESP for nothing.
            current = next(
                (e for e in on_esp if _same_boot(e, entry) and existing_names[e.id] not in keep),
                None,
            )
        if current is not None and _same_boot(current, entry):
            keep.add(existing_names[current.id])
            continue
        counter = f"+{tries}" if tries is not None and index == 0 else ""
        name = f"{entry.id}{counter}.conf"
        keep.add(name)
        writes.append(Action(ActionKind.WRITE, f"{ENTRIES_DIR}/{name}", content=entry.render()))
    return writes, keep


def _removals(esp: Path, keep_names: set[str], wanted_files: set[str]) -> list[Action]:
    """Entry files and kernel directories on the ESP that no entry needs any more."""
    removals = [
        Action(ActionKind.REMOVE, f"{ENTRIES_DIR}/{name}")
        for name in sorted(_entry_file_names(esp / ENTRIES_DIR).values())
        if name not in keep_names
    ]
    ostree_dir = esp / "ostree"
    if ostree_dir.is_dir():
        wanted_dirs = {Path(rel).parts[1] for rel in wanted_files if rel.startswith("ostree/")}
        removals += [
            Action(ActionKind.REMOVE, f"ostree/{child.name}")
            for child in sorted(ostree_dir.iterdir())
            if child.name not in wanted_dirs
        ]
    return removals


def _same_boot(a: BootEntry, b: BootEntry) -> bool:
    return (a.title, a.version, a.linux, a.options, a.initrd) == (
        b.title,
        b.version,
        b.linux,
        b.options,
        b.initrd,
    )


def _entry_file_names(entries_dir: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    if entries_dir.is_dir():
        for path in entries_dir.iterdir():
            if path.name.endswith(".conf"):
                match = _COUNTER.match(path.name.removesuffix(".conf"))
                assert match is not None
                names[match.group("id")] = path.name
    return names


def apply_plan(actions: Sequence[Action], boot_dir: Path, esp: Path) -> None:
    """Perform ``actions`` (from :func:`plan_sync`) in order; each write is atomic
    (:mod:`atoll.durable`).

    Ends with sync(2): FAT has no journal and its renames live in directories,
    so only then does a power cut keep what was written (the agent marks an
    upgrade ``staged`` right after).
    """
    for action in actions:
        target = esp / action.target
        if action.kind is ActionKind.REMOVE:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            continue
        # FAT has no atomic rename over an existing file in every driver, but
        # Linux's vfat does rename(2) atomically enough for a single entry.
        if action.kind is ActionKind.COPY:
            durable.copy(boot_dir / action.source.lstrip("/"), target)
        else:
            durable.write_atomic(target, action.content)
    os.sync()


def sync(boot_dir: Path, esp: Path, tries: int | None = None) -> list[Action]:
    """Make ``esp`` boot the entries in ``boot_dir``; return what was done.

    :func:`apply_plan` ends with a sync(2), also when there was nothing to do
    (an earlier sync may have written everything and died before flushing).
    """
    actions = plan_sync(boot_dir, esp, tries)
    apply_plan(actions, boot_dir, esp)
    return actions


def ostree_argument(options: str) -> str | None:
    """The ``ostree=`` word of a kernel command line (which deployment boots)."""
    for arg in options.split():
        if arg.startswith("ostree="):
            return arg
    return None


def space_needed(actions: Sequence[Action], boot_dir: Path, cluster: int) -> int:
    """Bytes ``actions`` write onto the ESP, each file rounded up to whole clusters.

    Copies and writes only: removals come last (:func:`apply_plan`), so the
    space they free is no help while the new kernel is copied."""
    total = 0
    for action in actions:
        if action.kind is ActionKind.COPY:
            size = (boot_dir / action.source.lstrip("/")).stat().st_size
        elif action.kind is ActionKind.WRITE:
            size = len(action.content.encode())
        else:
            continue
        total += math.ceil(size / cluster) * cluster
    return total


def _free_text(free: int) -> str:
    return f"{free} bytes" if free < MB else f"{free // MB} MB"


def space_shortfall(resource: str, free: int, needed: int, *, kernel: bool) -> str | None:
    """Why ``needed`` bytes do not fit in ``free`` on ``resource``, or None when they do."""
    if needed <= free:
        return None
    what = "the new kernel needs" if kernel else "the new boot entries need"
    return f"{resource} has {_free_text(free)} free, {what} {math.ceil(needed / MB)} MB"


def check_space(
    actions: Sequence[Action],
    boot_dir: Path,
    esp: Path,
    resource: str,
    statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
) -> None:
    """Raise :class:`EspFullError` when the ESP cannot hold what ``actions`` write."""
    stat = statvfs(esp)
    cluster = stat.f_frsize or stat.f_bsize or 1
    needed = space_needed(actions, boot_dir, cluster)
    kernel = any(a.kind is ActionKind.COPY for a in actions)
    reason = space_shortfall(resource, stat.f_bavail * cluster, needed, kernel=kernel)
    if reason is not None:
        raise EspFullError(reason, resource=resource)


def checked_sync(
    boot_dir: Path,
    esp: Path,
    resource: str,
    tries: int | None = None,
    statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
) -> list[Action]:
    """:func:`sync` after :func:`check_space`; running out of space while writing
    anyway (FAT's directories take room too) is an :class:`EspFullError` as well."""
    actions = plan_sync(boot_dir, esp, tries)
    check_space(actions, boot_dir, esp, resource, statvfs)
    try:
        apply_plan(actions, boot_dir, esp)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise EspFullError(
            f"{resource} ran out of space during the boot entries sync: {e}", resource=resource
        ) from e
    return actions

"""Apply a manifest to an unpacked root filesystem.

Runs on the build machine against a directory, never inside the image: no
maintainer script or chroot is needed for any of it, which keeps it fast and
deterministic. In order:

1. the shared overlay (:mod:`atoll.overlay`, data only) and os-release;
2. groups and users, written straight into ``/etc/{passwd,group,shadow,gshadow}``
   with ids allocated deterministically (lowest free in Debian's ranges);
3. the manifest's ``[[files]]`` (mode and owner resolved against the image's
   own account databases);
4. sysctls into ``/usr/lib/sysctl.d/60-atoll.conf``;
5. the container runtime: containerd configured for crun, preloaded OCI
   archives copied to ``/usr/share/atoll/images`` with a list that
   ``atoll-preload.service`` imports at first boot (containerd's store lives
   in ``/var``, which an ostree commit cannot carry);
6. the agent (``atoll.agent``, standard library only) and what it imports
   (``atoll.wire``, ``atoll.durable``: :data:`AGENT_SOURCES`), byte-compiled
   with checked hashes so the result is reproducible, and the ops shell's
   toolbox archive (:mod:`atoll.compose.toolbox`) listed in ``toolbox.list``,
   which the agent imports the first time a shell needs it;
7. systemd units: atoll's own units enabled, then the manifest's enable,
   disable and mask, through ``systemctl --root``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import atoll
from atoll.durable import write_atomic
from atoll.errors import AtollError
from atoll.manifest.model import FileEntry, Group, Manifest, User
from atoll.process import StrPath, run
from atoll.wire.imagelist import DIRECTORY, PRELOAD_LIST, TOOLBOX_LIST, ListedImage, format_list

OVERLAY = Path(__file__).resolve().parent.parent / "overlay"
PACKAGE_ROOT = Path(atoll.__file__).resolve().parent
AGENT_PREFIX = "usr/lib/atoll/python"  # atoll-agent.service's PYTHONPATH
# What of the atoll package the image ships, relative to it: the agent and all
# it imports (tests/unit/test_boundaries.py keeps the agent to these).
AGENT_SOURCES = ("__init__.py", "durable.py", "agent", "wire")
IMAGES_DIR = DIRECTORY
# What an archive's copy may be named (imagelist's rule): anything else becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

CONTAINERD_CONFIG = """\
# Written by atoll compose: containerd runs containers with crun.
version = 2
# Snapshotters for filesystems and devices a node does not have: each probes
# (aufs loads a module) while containerd starts, on the path to ready.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "crun"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
  BinaryName = "/usr/bin/crun"

[plugins."io.containerd.runtime.v1.linux"]
  runtime = "crun"

[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
"""


def customize(root: Path, manifest: Manifest, toolbox: Path | None = None) -> None:
    """Apply ``manifest`` to the unpacked tree at ``root``; ``toolbox``: the ops
    shell's toolbox archive (built, or the site's), for an image with the agent."""
    copy_overlay(root, OVERLAY)
    write_os_release(root, manifest)
    for group in manifest.groups:
        add_group(root, group)
    for user in manifest.users:
        add_user(root, user)
    for entry in manifest.files:
        add_file(root, entry)
    write_sysctl(root, manifest.sysctl)
    if manifest.containers.runtime:
        configure_containers(root, manifest)
    if manifest.agent.include:
        install_agent(root)
        if toolbox is not None:
            install_toolbox(root, toolbox, manifest.agent.toolbox)
    apply_units(root, manifest)


def copy_overlay(root: Path, overlay: Path) -> None:
    for source in sorted(overlay.rglob("*")):
        relative = source.relative_to(overlay)
        if relative == Path("README.md") or "__pycache__" in relative.parts:
            continue
        target = root / relative
        if source.is_dir() and not source.is_symlink():
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
            continue
        shutil.copyfile(source, target)
        # Executable bits are kept; nothing else of the checkout's modes leaks in.
        target.chmod(0o755 if os.access(source, os.X_OK) else 0o644)
        os.chown(target, 0, 0, follow_symlinks=False)


def write_os_release(root: Path, manifest: Manifest) -> None:
    """Mark the image as atoll (``IMAGE_ID``/``IMAGE_VERSION``, as systemd defines them)."""
    path = root / "usr/lib/os-release"
    lines = [
        line
        for line in path.read_text().splitlines()
        if not line.startswith(("PRETTY_NAME=", "IMAGE_ID=", "IMAGE_VERSION=", "VARIANT"))
    ]
    name, version = manifest.image.name, manifest.image.version
    base = next((v for v in lines if v.startswith("VERSION=")), 'VERSION=""')
    debian = base.split("=", 1)[1].strip('"')
    lines = [
        f'PRETTY_NAME="atoll {name} {version} (Debian {debian})"',
        *lines,
        "VARIANT=atoll",
        "VARIANT_ID=atoll",
        "IMAGE_ID=atoll",
        f"IMAGE_VERSION={version}",
    ]
    write_atomic(path, "\n".join(lines) + "\n", mode=0o644)


def _read_db(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split(":") for line in path.read_text().splitlines() if line]


def _write_db(path: Path, rows: Iterable[list[str]], mode: int) -> None:
    write_atomic(path, "".join(":".join(row) + "\n" for row in rows), mode=mode)


def _allocate(used: set[int], system: bool) -> int:
    low, high = (100, 999) if system else (1000, 59999)
    for candidate in range(low, high + 1):
        if candidate not in used:
            return candidate
    raise AtollError(f"no free id in {low}-{high}")


def add_group(root: Path, group: Group) -> int:
    path = root / "etc/group"
    rows = _read_db(path)
    existing = {row[0]: int(row[2]) for row in rows}
    if group.name in existing:
        if group.gid is not None and existing[group.name] != group.gid:
            raise AtollError(
                f"[[groups]] {group.name}: gid {group.gid} requested, "
                f"but the image already has it as {existing[group.name]}"
            )
        return existing[group.name]
    used = set(existing.values())
    gid = group.gid if group.gid is not None else _allocate(used, group.system)
    if gid in used:
        raise AtollError(f"[[groups]] {group.name}: gid {gid} is already taken in the image")
    _write_db(path, [*rows, [group.name, "x", str(gid), ""]], 0o644)
    gshadow = root / "etc/gshadow"
    _write_db(gshadow, [*_read_db(gshadow), [group.name, "!", "", ""]], 0o640)
    return gid


def add_user(root: Path, user: User) -> None:
    passwd = root / "etc/passwd"
    rows = _read_db(passwd)
    if any(row[0] == user.name for row in rows):
        raise AtollError(f"[[users]] {user.name}: the image already has this user")
    group_name = user.group or user.name
    gid = add_group(root, Group(name=group_name, system=user.system))
    used = {int(row[2]) for row in rows}
    uid = user.uid if user.uid is not None else _allocate(used, user.system)
    if uid in used:
        raise AtollError(f"[[users]] {user.name}: uid {uid} is already taken in the image")
    home = user.home or ("/nonexistent" if user.system else f"/var/home/{user.name}")
    _write_db(passwd, [*rows, [user.name, "x", str(uid), str(gid), "", home, user.shell]], 0o644)
    shadow = root / "etc/shadow"
    # Locked password: nobody logs in with a password on atoll.
    _write_db(shadow, [*_read_db(shadow), [user.name, "!*", "", "", "", "", "", "", ""]], 0o640)
    for extra in user.groups:
        _add_member(root, extra, user.name)
    if home.startswith("/var/"):
        # /var is not part of the commit: systemd-tmpfiles creates the home at boot.
        tmpfiles = root / "usr/lib/tmpfiles.d/atoll-users.conf"
        tmpfiles.parent.mkdir(parents=True, exist_ok=True)
        with tmpfiles.open("a") as f:
            f.write(f"d {home} 0700 {user.name} {group_name} -\n")


def _add_member(root: Path, group: str, member: str) -> None:
    path = root / "etc/group"
    rows = _read_db(path)
    for row in rows:
        if row[0] == group:
            members = [m for m in row[3].split(",") if m]
            if member not in members:
                row[3] = ",".join([*members, member])
            _write_db(path, rows, 0o644)
            return
    raise AtollError(f"[[users]] {member}: supplementary group '{group}' does not exist")


def _lookup(root: Path, database: str, name: str, what: str) -> int:
    for row in _read_db(root / "etc" / database):
        if row[0] == name:
            return int(row[2])
    raise AtollError(f"[[files]]: {what} '{name}' does not exist in the image")


def add_file(root: Path, entry: FileEntry) -> None:
    target = root / str(entry.path).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    data = entry.source.read_bytes() if entry.source else (entry.content or "").encode()
    uid = _lookup(root, "passwd", entry.owner, "owner")
    gid = _lookup(root, "group", entry.group, "group")
    if target.is_symlink():
        target.unlink()
    write_atomic(target, data, mode=entry.mode)
    os.chown(target, uid, gid)
    target.chmod(entry.mode)


def write_sysctl(root: Path, sysctl: tuple[tuple[str, str], ...]) -> None:
    if not sysctl:
        return
    text = "# Written by atoll compose from the manifest's [sysctl].\n" + "".join(
        f"{key} = {value}\n" for key, value in sysctl
    )
    target = root / "usr/lib/sysctl.d/60-atoll.conf"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, text, mode=0o644)


def configure_containers(root: Path, manifest: Manifest) -> None:
    config = root / "etc/containerd/config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(config, CONTAINERD_CONFIG, mode=0o644)
    images = root / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    listed = []
    for number, image in enumerate(manifest.containers.preload):
        name = f"{number:02d}-{_UNSAFE.sub('_', image.archive.name)}"
        _copy_archive(image.archive, images / name)
        listed.append(ListedImage(name, image.reference))
    write_atomic(images / PRELOAD_LIST, format_list(listed), mode=0o644)


def install_toolbox(root: Path, archive: Path, reference: str) -> None:
    """The toolbox archive under a name of its content, and ``toolbox.list`` naming it."""
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    name = f"toolbox-{digest.hexdigest()[:16]}.oci.tar"
    images = root / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    _copy_archive(archive, images / name)
    listed = [ListedImage(name, reference)]
    write_atomic(images / TOOLBOX_LIST, format_list(listed), mode=0o644)


def _copy_archive(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    target.chmod(0o644)


def link_runc_to_crun(root: Path) -> None:
    """After slimming: if runc is gone, ``runc`` is crun (a drop-in replacement).

    containerd's CRI config names crun; anything that asks for ``runc`` by
    name (ctr, the runc shim's default) finds this link.
    """
    runc = root / "usr/bin/runc"
    if not any(p.exists() or p.is_symlink() for p in (runc, root / "usr/sbin/runc")):
        runc.symlink_to("crun")


def copy_agent_package(target: Path) -> None:
    """Copy :data:`AGENT_SOURCES` into ``target`` (a fresh ``atoll`` directory), no caches."""
    target.mkdir(parents=True)
    for name in AGENT_SOURCES:
        source = PACKAGE_ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copyfile(source, target / name)


def install_agent(root: Path, *, python: Sequence[StrPath] | None = None) -> None:
    """Copy the agent and what it imports (:data:`AGENT_SOURCES`), byte-compiled reproducibly.

    On the node ``python3 -m atoll.agent`` runs with ``PYTHONPATH`` at
    :data:`AGENT_PREFIX`, so ``atoll.wire`` and ``atoll.durable`` resolve there.
    The image's own python3 compiles it (run in the tree with ``chroot``), so
    the ``.pyc`` files are the node's version's (3.11 on bookworm, 3.13 on
    trixie) whatever python runs atoll; checked-hash pycs carry no timestamps.
    ``python``: another interpreter's argv instead (tests without an image tree).
    """
    target = root / AGENT_PREFIX / "atoll"
    if target.exists():
        shutil.rmtree(target)
    copy_agent_package(target)
    inside = f"/{AGENT_PREFIX}/atoll"
    compile_options = ["-m", "compileall", "-q", "--invalidation-mode=checked-hash", "-d", inside]
    if python is None:
        if not (root / "usr/bin/python3").exists():
            raise AtollError(f"{root}: the image has no /usr/bin/python3 to run the agent")
        run(["chroot", root, "/usr/bin/python3", *compile_options, inside])
    else:
        run([*python, *compile_options, target])
    for path in [target, *target.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)
        path.chmod(0o755 if path.is_dir() else 0o644)


def apply_units(root: Path, manifest: Manifest) -> None:
    systemctl = ["systemctl", f"--root={root}", "--no-reload", "--quiet"]
    own = sorted(
        path.name
        for path in (root / "usr/lib/systemd/system").glob("atoll-*")
        if path.is_file() and "[Install]" in path.read_text()
    )
    units = manifest.units
    enable = [*own, *units.enable]
    if enable:
        run([*systemctl, "enable", *enable])
    if units.disable:
        run([*systemctl, "disable", *units.disable])
    if units.mask:
        run([*systemctl, "mask", *units.mask])

"""Make a Debian root tree ostree-shaped (what MACHINE-FACTS step 2 found it takes).

ostree deploys a commit as a read-only ``/usr`` plus a three-way-merged
``/etc`` and a persistent, per-OS ``/var`` that deployment never writes. So:

* the kernel moves to ``/usr/lib/modules/$kver/vmlinuz`` (its config beside
  it, and ``initramfs.img`` when there is one), and ``/boot`` is left empty:
  ostree copies kernels into the real ``/boot`` at deploy time;
* ``/etc`` moves to ``/usr/etc`` (ostree's pristine copy for the merge), with
  an empty ``machine-id`` so every node gets its own at first boot;
* ``/var`` is emptied: each directory, link and file it had becomes a
  ``systemd-tmpfiles`` line (files are kept under ``/usr/share/factory/var``
  and copied at boot when missing), so a fresh ``/var`` is complete and an old
  one is never overwritten;
* ``/home /opt /srv /mnt /root /usr/local`` become links into ``/var``,
  ``/media`` into ``/run``; ``tmpfiles.d`` lines that name a path through one
  of these links are rewritten to where it points (systemd's ``home.conf``
  wants ``/home`` and ``/srv`` as directories, ``provision.conf`` ``/root``:
  on the links each boot logged "already exists and is not a directory");
* the ``/var`` lines leave out every path another ``tmpfiles.d`` file already
  creates (but files with content), so no line is a "Duplicate line" notice
  at boot;
* ``/dev /proc /sys /run /tmp`` are emptied (an ostree commit cannot hold
  device nodes; they are mount points anyway), ``/sysroot`` is created and
  ``/ostree`` points into it.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from atoll.errors import AtollError

TMPFILES = "usr/lib/tmpfiles.d/atoll-var.conf"
FACTORY = "usr/share/factory/var"
# Top-level directory -> where its content lives on a deployed system.
VAR_LINKS = {
    "home": "var/home",
    "opt": "var/opt",
    "srv": "var/srv",
    "mnt": "var/mnt",
    "root": "var/roothome",
    "media": "run/media",
}
USR_LOCAL = "var/usrlocal"  # /usr/local -> ../var/usrlocal
_EMPTIED = ("dev", "proc", "sys", "run", "tmp")
# Where systemd-tmpfiles reads its configuration, highest precedence first (a
# file in /etc replaces the /usr/lib file of the same name).
TMPFILES_DIRS = ("etc/tmpfiles.d", "usr/lib/tmpfiles.d")
# tmpfiles.d types that create what they name (systemd-tmpfiles(8)). Two such
# lines for one path that differ make systemd-tmpfiles ignore the later one
# with a "Duplicate line for path" notice at every boot.
_CREATING = frozenset("fFdDvqQpLcbCw")
# A configuration line: type (with modifiers), path, the rest as written.
_TMPFILES_LINE = re.compile(
    r"^(?P<lead>\s*)(?P<type>[^\s#]\S*)(?P<gap>\s+)(?P<path>\S+)(?P<rest>.*)$"
)


def find_kernel(root: Path) -> str:
    """The one kernel version installed in ``root``."""
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*"))
    if not kernels:
        kernels = sorted(p.parent.name for p in (root / "usr/lib/modules").glob("*/vmlinuz"))
    if len(kernels) != 1:
        raise AtollError(
            f"{root}: expected exactly one kernel, found {len(kernels)}: {', '.join(kernels)}"
        )
    return kernels[0]


def shape(root: Path) -> str:
    """Reshape ``root`` in place; return the kernel version."""
    kver = find_kernel(root)
    _move_kernel(root, kver)
    _links_into_var(root)
    _tmpfiles_follow_links(root)
    _var_to_tmpfiles(root)
    _move_etc(root)
    for name in _EMPTIED:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        path.mkdir(mode=0o1777 if name == "tmp" else 0o755)
        path.chmod(0o1777 if name == "tmp" else 0o755)
    (root / "sysroot").mkdir(mode=0o755, exist_ok=True)
    ostree = root / "ostree"
    if ostree.is_symlink() or ostree.exists():
        _remove(ostree)
    ostree.symlink_to("sysroot/ostree")
    return kver


def _move_kernel(root: Path, kver: str) -> None:
    moddir = root / "usr/lib/modules" / kver
    moddir.mkdir(parents=True, exist_ok=True)
    boot = root / "boot"
    moves = {
        f"vmlinuz-{kver}": "vmlinuz",
        f"config-{kver}": "config",
        f"initrd.img-{kver}": "initramfs.img",
    }
    for source, target in moves.items():
        if (boot / source).exists():
            shutil.move(boot / source, moddir / target)
    if boot.is_dir():
        shutil.rmtree(boot)
    boot.mkdir(mode=0o755)
    # Debian's convenience links at / point into the old /boot.
    for link in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        path = root / link
        if path.is_symlink():
            path.unlink()


def _links_into_var(root: Path) -> None:
    for name, target in VAR_LINKS.items():
        path = root / name
        if path.is_symlink():
            path.unlink()
        elif path.is_dir():
            # Debian leaves skeleton dotfiles in /root; nothing else belongs here.
            shutil.rmtree(path)
        path.symlink_to(target)
    local = root / "usr/local"
    if local.is_dir() and not local.is_symlink():
        shutil.rmtree(local)
    if not local.is_symlink():
        local.symlink_to(f"../{USR_LOCAL}")


def top_level_links() -> dict[str, str]:
    """Each link :func:`shape` makes at the top of the tree -> the absolute path it leads to."""
    links = {f"/{name}": f"/{target}" for name, target in VAR_LINKS.items()}
    links["/usr/local"] = f"/{USR_LOCAL}"
    return links


def follow_links(line: str, links: Mapping[str, str]) -> str:
    """A ``tmpfiles.d`` line with its path moved from a link in ``links`` to where it leads.

    systemd-tmpfiles does not follow the last component of a path: ``Q /home``
    or ``d /root`` on a link fails with "already exists and is not a
    directory". Through the link's target the line means what it meant on a
    tree where ``/home`` is a directory. Lines about the link itself (``L``
    makes it, ``r``/``R`` remove it) and anything else are returned unchanged.
    """
    match = _TMPFILES_LINE.match(line)
    if match is None:
        return line
    kind, path = match["type"], match["path"]
    for link, target in links.items():
        if path == link and kind[0] in "LrR":
            return line
        if path == link or path.startswith(link + "/"):
            moved = target + path[len(link) :]
            return f"{match['lead']}{kind}{match['gap']}{moved}{match['rest']}"
    return line


def created_paths(lines: Iterable[str]) -> set[str]:
    """The literal paths ``tmpfiles.d`` lines create (:data:`_CREATING` types)."""
    paths = set()
    for line in lines:
        match = _TMPFILES_LINE.match(line)
        if match and match["type"][0] in _CREATING:
            paths.add(match["path"])
    return paths


def _tmpfiles_configs(root: Path) -> dict[str, Path]:
    """The configuration files systemd-tmpfiles will read, by name (``/etc`` first).

    Links are left out: a mask (``-> /dev/null``) stands for no lines, and any
    other link would be read on the build machine, not in the tree.
    """
    configs: dict[str, Path] = {}
    for directory in reversed(TMPFILES_DIRS):
        for path in sorted((root / directory).glob("*.conf")):
            configs.pop(path.name, None)
            if path.is_file() and not path.is_symlink():
                configs[path.name] = path
    return configs


def _tmpfiles_follow_links(root: Path) -> None:
    links = top_level_links()
    for path in _tmpfiles_configs(root).values():
        lines = path.read_text().splitlines()
        moved = [follow_links(line, links) for line in lines]
        if moved != lines:
            note = "# atoll compose: paths through /home, /root... lead where those links do."
            path.write_text("\n".join([note, *moved]) + "\n")


_VarLine = tuple[str, str, Path | None]  # path, tmpfiles.d line, file to keep in the factory


def _link_target_lines() -> list[_VarLine]:
    """What the top-level links lead to, created on every node."""
    usr_local = [
        f"/{USR_LOCAL}",
        *(f"/{USR_LOCAL}/{d}" for d in ("bin", "etc", "lib", "sbin", "share")),
    ]
    paths = ["/var/home", "/var/opt", "/var/srv", "/var/mnt", "/var/roothome", *usr_local]
    return [
        (path, f"d {path} {'0700' if path == '/var/roothome' else '0755'} root root -", None)
        for path in paths
    ]


def _var_to_tmpfiles(root: Path) -> None:
    var = root / "var"
    elsewhere = set()
    for name, config in _tmpfiles_configs(root).items():
        if name != Path(TMPFILES).name:
            elsewhere |= created_paths(config.read_text().splitlines())
    lines = [
        "# Written by atoll compose: /var as the image shipped it, created at boot",
        "# when missing (ostree never deploys /var content). Paths another",
        "# tmpfiles.d file creates are left to it, unless they are files with content.",
    ]
    for path, line, kept in [*_link_target_lines(), *_var_lines(root)]:
        # A file with content stays ours (copied from the factory): the other
        # line could only create it empty.
        if path in elsewhere and (kept is None or kept.stat().st_size == 0):
            continue
        elsewhere.add(path)
        lines.append(line)
        if kept is not None:
            copy = root / FACTORY / kept.relative_to(var)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kept, copy, follow_symlinks=False)
    if var.is_dir():
        shutil.rmtree(var)
    var.mkdir(mode=0o755)
    target = root / TMPFILES
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    target.chmod(0o644)


def _var_lines(root: Path) -> list[_VarLine]:
    """A line for everything under ``/var``: directories, links, files (kept in the factory)."""
    var = root / "var"
    entries: list[_VarLine] = []
    if not var.is_dir():
        return entries
    for directory, subdirs, files in os.walk(var):
        subdirs.sort()
        for name in sorted(subdirs) + sorted(files):
            path = Path(directory, name)
            relative = "/" + path.relative_to(root).as_posix()
            info = path.lstat()
            owner = f"{info.st_uid} {info.st_gid}"
            mode = f"{stat.S_IMODE(info.st_mode):04o}"
            if stat.S_ISLNK(info.st_mode):
                entries.append((relative, f"L {relative} - - - - {os.readlink(path)}", None))
            elif stat.S_ISDIR(info.st_mode):
                entries.append((relative, f"d {relative} {mode} {owner} -", None))
            elif stat.S_ISREG(info.st_mode):
                factory = f"/{FACTORY}/{path.relative_to(var)}"
                entries.append((relative, f"C {relative} - - - - {factory}", path))
    return entries


def _move_etc(root: Path) -> None:
    etc, usr_etc = root / "etc", root / "usr/etc"
    if usr_etc.exists():
        raise AtollError(f"{usr_etc}: already exists; is this tree already ostree-shaped?")
    # Each node gets its own identity at first boot.
    (etc / "machine-id").write_text("")
    for name in ("hostname", "resolv.conf"):
        path = etc / name
        if path.is_symlink() or path.exists():
            path.unlink()
    fstab = etc / "fstab"
    fstab.write_text("# Mounts are set up by atoll's prepare-root and ostree-remount.\n")
    # ostree refuses a tree with both /etc and /usr/etc, even an empty /etc.
    shutil.move(etc, usr_etc)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)

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
  ``/media`` into ``/run``;
* ``/dev /proc /sys /run /tmp`` are emptied (an ostree commit cannot hold
  device nodes; they are mount points anyway), ``/sysroot`` is created and
  ``/ostree`` points into it.
"""

from __future__ import annotations

import os
import shutil
import stat
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
_EMPTIED = ("dev", "proc", "sys", "run", "tmp")


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
        local.symlink_to("../var/usrlocal")


def _var_to_tmpfiles(root: Path) -> None:
    var = root / "var"
    lines = [
        "# Written by atoll compose: /var as the image shipped it, created at boot",
        "# when missing (ostree never deploys /var content).",
        "d /var/home 0755 root root -",
        "d /var/opt 0755 root root -",
        "d /var/srv 0755 root root -",
        "d /var/mnt 0755 root root -",
        "d /var/roothome 0700 root root -",
        "d /var/usrlocal 0755 root root -",
        *(f"d /var/usrlocal/{d} 0755 root root -" for d in ("bin", "etc", "lib", "sbin", "share")),
    ]
    factory = root / FACTORY
    if var.is_dir():
        for directory, subdirs, files in os.walk(var):
            subdirs.sort()
            for name in sorted(subdirs) + sorted(files):
                path = Path(directory, name)
                relative = path.relative_to(root).as_posix()
                info = path.lstat()
                owner = f"{info.st_uid} {info.st_gid}"
                mode = f"{stat.S_IMODE(info.st_mode):04o}"
                if stat.S_ISLNK(info.st_mode):
                    lines.append(f"L /{relative} - - - - {os.readlink(path)}")
                elif stat.S_ISDIR(info.st_mode):
                    lines.append(f"d /{relative} {mode} {owner} -")
                elif stat.S_ISREG(info.st_mode):
                    kept = factory / path.relative_to(var)
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, kept, follow_symlinks=False)
                    lines.append(f"C /{relative} - - - - /{FACTORY}/{path.relative_to(var)}")
        shutil.rmtree(var)
    var.mkdir(mode=0o755)
    target = root / TMPFILES
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(lines) + "\n")
    target.chmod(0o644)


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

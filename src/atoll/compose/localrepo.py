"""A tiny local apt repository for the packages atoll makes itself.

Only one today: ``atoll-no-initramfs``, which provides ``linux-initramfs-tool``
so that Debian's kernel package installs without any initramfs generator
(atoll's kernel mounts its root with built-in drivers; see
:mod:`atoll.compose.prepare_root`). It contains no files.

The repository is a flat one (``deb [trusted=yes] copy:///path ./``). It is
``copy:`` and not ``file:``: mmdebstrap runs apt outside the chroot and dpkg
inside it, and apt hands dpkg ``file:`` packages by their path on the build
machine, which does not exist inside the chroot; ``copy:`` makes apt copy
them into the chroot's archive directory like downloaded ones. The package
is trusted because atoll built it a moment ago from constants in this file.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from atoll import durable
from atoll.compose.plan import NO_INITRAMFS_PACKAGE
from atoll.process import run

_VERSION = "1.0"
_CONTROL = f"""\
Package: {NO_INITRAMFS_PACKAGE}
Version: {_VERSION}
Architecture: all
Maintainer: atoll <atoll@localhost>
Provides: linux-initramfs-tool
Section: admin
Priority: optional
Description: boot without an initramfs (atoll)
 atoll kernels mount their root with built-in drivers, so no initramfs
 generator is installed. This empty package satisfies the kernel's
 dependency on one.
"""


def ensure_local_repo(directory: Path) -> str:
    """Build the repository in ``directory`` (idempotent); return its apt source line."""
    deb_name = f"{NO_INITRAMFS_PACKAGE}_{_VERSION}_all.deb"
    packages = directory / "Packages"
    if not (packages.exists() and (directory / deb_name).exists()):
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            tree = Path(tmp) / "pkg"
            (tree / "DEBIAN").mkdir(parents=True)
            (tree / "DEBIAN" / "control").write_text(_CONTROL)
            deb = Path(tmp) / deb_name
            # A fixed timestamp: the same bytes every time, on every machine.
            run(
                ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb],
                env={"SOURCE_DATE_EPOCH": "0"},
            )
            data = deb.read_bytes()
            stanza = (
                _CONTROL
                + f"Filename: ./{deb_name}\n"
                + f"Size: {len(data)}\n"
                + f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
            )
            # The package first, then the index that names it: Packages is the
            # last file written, and the check above looks for both.
            durable.replace(deb, directory / deb_name)
            durable.write_atomic(packages, stanza)
    return f"deb [trusted=yes] copy://{directory.resolve()} ./"

"""The conventional Debian host atoll is measured against, built the same way.

``--variant=important`` (what a Debian cloud or server install starts from)
plus ``openssh-server``, ``cloud-init``, ``initramfs-tools`` and the same
kernel package as the atoll image, from the same mirror and the same signed
index, by the same mmdebstrap with the same apt cache. Nothing is slimmed.
The tarball is cached by its inputs like an atoll root filesystem.

The boot benchmark turns it into a bootable disk (it has an initramfs, so a
plain ext4 root works); the compose benchmark counts its packages and bytes;
the ready benchmark (:mod:`atoll.bench.ready`) adds the packages a conventional
Kubernetes node installs from the same suite (``extra``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atoll import durable
from atoll.compose.rootfs import private_tmpdir
from atoll.errors import AtollError
from atoll.manifest.model import Distribution
from atoll.process import run
from atoll.progress import Reporter

BASELINE_PACKAGES = ("openssh-server", "cloud-init", "initramfs-tools")


@dataclass(frozen=True)
class BaselineRootfs:
    tarball: Path
    packages: int
    size: int  # bytes of regular files, hard links once
    names: frozenset[str]  # the installed packages


def build_baseline_rootfs(
    distribution: Distribution,
    kernel_package: str,
    index_fingerprint: str,
    cache: Path,
    reporter: Reporter,
    *,
    source_date_epoch: int,
    extra: Sequence[str] = (),
) -> BaselineRootfs:
    """The baseline's tarball, built once per inputs; ``extra`` packages on top
    (the ready benchmark's conventional Kubernetes node: containerd, CNI plugins)."""
    include = sorted({*BASELINE_PACKAGES, kernel_package, *extra})
    sources = [
        f"deb {distribution.mirror} {distribution.suite} {' '.join(distribution.components)}"
    ]
    if distribution.updates:
        sources += [
            f"deb {distribution.mirror} {distribution.suite}-updates main",
            f"deb {distribution.security_mirror} {distribution.suite}-security main",
        ]
    key = hashlib.sha256(
        json.dumps({"include": include, "sources": sources, "index": index_fingerprint}).encode()
    ).hexdigest()[:32]
    target = cache / "rootfs" / f"baseline-{key}.tar"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        apt_cache = cache / "apt" / f"{distribution.suite}-{distribution.architecture}"
        apt_cache.mkdir(parents=True, exist_ok=True)
        tmp = private_tmpdir(cache)
        partial = target.with_name(target.name + ".partial")
        reporter.info(f"building the conventional baseline: important + {', '.join(include)}")
        try:
            run(
                [
                    "mmdebstrap",
                    "--mode=unshare",
                    "--variant=important",
                    f"--architectures={distribution.architecture}",
                    "--format=tar",
                    f"--include={','.join(include)}",
                    '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
                    f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/",
                    "--skip=download/empty",
                    f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}",
                    distribution.suite,
                    partial,
                    *sources,
                ],
                env={"SOURCE_DATE_EPOCH": str(source_date_epoch), "TMPDIR": str(tmp)},
            )
            durable.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
    names, size = measure_tarball(target)
    return BaselineRootfs(tarball=target, packages=len(names), size=size, names=names)


def measure_tarball(tarball: Path) -> tuple[frozenset[str], int]:
    """Installed packages (from dpkg's status inside) and bytes of regular files."""
    size = 0
    names: frozenset[str] = frozenset()
    with tarfile.open(tarball) as tar:
        for member in tar:
            if member.isfile():  # hard links are LNKTYPE entries: counted once
                size += member.size
                if member.name.lstrip("./") == "var/lib/dpkg/status":
                    handle = tar.extractfile(member)
                    assert handle is not None
                    names = installed_packages(handle.read().decode())
    return names, size


def installed_packages(status: str) -> frozenset[str]:
    """The names dpkg's status file lists as installed."""
    names = set()
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(":", 1) for line in stanza.splitlines() if ":" in line and line[:1] != " "
        )
        if fields.get("Status", "").strip() == "install ok installed" and "Package" in fields:
            names.add(fields["Package"].strip())
    return frozenset(names)


def tree_disk(
    tree: Path, source: Path, work: Path, name: str, size: str
) -> tuple[Path, Path, Path]:
    """An ext4 disk (label ``baseline``) of an unpacked conventional host's ``tree`` and
    copies of its newest kernel and initrd, as ``work/<name>.img``, ``-vmlinuz``,
    ``-initrd``; ``source`` (the tarball) names the tree in errors."""
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise AtollError(f"{source}: /boot has no vmlinuz-* and initrd.img-*")
    kernel, initrd = work / f"{name}-vmlinuz", work / f"{name}-initrd"
    shutil.copyfile(kernels[-1], kernel)
    shutil.copyfile(initrds[-1], initrd)
    disk = work / f"{name}.img"
    disk.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-L", "baseline", "-d", tree, disk, size])
    return disk, kernel, initrd

"""The manifest as frozen dataclasses: what an atoll image is made of.

This is the contract between :mod:`atoll.manifest.load` (which parses and
validates TOML into these types) and the stages that consume a manifest
(:mod:`atoll.compose`). Everything here is already validated: consumers never
re-check types or re-resolve paths. Paths to files on the build machine are
absolute; paths inside the image are :class:`PurePosixPath` and absolute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

# Debian architecture -> the name used in ostree refs (atoll/x86_64/minimal).
REF_ARCH: dict[str, str] = {"amd64": "x86_64", "arm64": "aarch64"}


class InitStrategy(StrEnum):
    """How the kernel gets from the physical root to systemd in the deployment."""

    # atoll's static PID-1 step: no initramfs; root driver and fs built into the kernel.
    PREPARE_ROOT = "atoll-prepare-root"
    # A conventional initramfs (initramfs-tools); for baselines and odd kernels.
    INITRAMFS = "initramfs"


@dataclass(frozen=True)
class Image:
    name: str
    version: str
    description: str = ""


@dataclass(frozen=True)
class Distribution:
    suite: str = "bookworm"
    architecture: str = "amd64"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    components: tuple[str, ...] = ("main",)
    # Also use <suite>-updates and <suite>-security (stable releases).
    updates: bool = True


@dataclass(frozen=True)
class Packages:
    include: tuple[str, ...] = ()
    # Must never be installed; apt is pinned against them, so a dependency
    # that needs one fails the build instead of sneaking it in.
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Kernel:
    package: str = "linux-image-cloud-amd64"
    arguments: tuple[str, ...] = ()
    # Module directories to keep, as globs relative to /usr/lib/modules/<kver>/
    # (e.g. "kernel/fs/overlayfs"); empty keeps every module.
    modules_keep: tuple[str, ...] = ()


@dataclass(frozen=True)
class Init:
    strategy: InitStrategy = InitStrategy.PREPARE_ROOT


@dataclass(frozen=True)
class PreloadImage:
    """A container image from a local OCI archive, imported for containerd."""

    archive: Path
    reference: str  # e.g. "docker.io/library/busybox:1.36"


@dataclass(frozen=True)
class Containers:
    runtime: bool = True  # containerd + crun
    preload: tuple[PreloadImage, ...] = ()


@dataclass(frozen=True)
class FileEntry:
    """A file added to the image: from ``source`` on the build machine or inline."""

    path: PurePosixPath
    source: Path | None = None
    content: str | None = None
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"


@dataclass(frozen=True)
class Units:
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    name: str
    uid: int | None = None
    group: str | None = None  # primary group; defaults to a group of the user's name
    groups: tuple[str, ...] = ()
    shell: str = "/usr/sbin/nologin"
    home: str | None = None
    system: bool = True


@dataclass(frozen=True)
class Group:
    name: str
    gid: int | None = None
    system: bool = True


@dataclass(frozen=True)
class Strip:
    docs: bool = True
    man: bool = True
    locales: bool = True
    keep_locales: tuple[str, ...] = ("C.UTF-8",)
    package_manager: bool = True  # no apt, no dpkg in the final image
    # Packages installed to satisfy dependencies but not needed at run time
    # (maintainer-script tooling, e.g. perl via linux-base): their files are
    # removed after installation and the SBOM records them as removed.
    remove: tuple[str, ...] = ()
    # Single files no package split lets us drop (e.g. a legacy shim), as
    # absolute paths or globs inside the image.
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Agent:
    include: bool = True  # install atoll.agent (standard library only) into the image


@dataclass(frozen=True)
class Manifest:
    path: Path  # the file the user named, absolute
    sources: tuple[Path, ...]  # that file and everything it extends, child first
    image: Image
    distribution: Distribution = field(default_factory=Distribution)
    packages: Packages = field(default_factory=Packages)
    kernel: Kernel = field(default_factory=Kernel)
    init: Init = field(default_factory=Init)
    containers: Containers = field(default_factory=Containers)
    files: tuple[FileEntry, ...] = ()
    units: Units = field(default_factory=Units)
    users: tuple[User, ...] = ()
    groups: tuple[Group, ...] = ()
    sysctl: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    strip: Strip = field(default_factory=Strip)
    agent: Agent = field(default_factory=Agent)

    @property
    def ref(self) -> str:
        """The ostree ref this manifest commits to, e.g. ``atoll/x86_64/minimal``."""
        arch = REF_ARCH.get(self.distribution.architecture, self.distribution.architecture)
        return f"atoll/{arch}/{self.image.name}"

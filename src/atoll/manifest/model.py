"""The manifest as frozen dataclasses: what an atoll image is made of.

This is the contract between :mod:`atoll.manifest.load` (which parses and
validates TOML into these types) and the stages that consume a manifest
(:mod:`atoll.compose`). Everything here is already validated: consumers never
re-check types or re-resolve paths. Paths to files on the build machine are
absolute; paths inside the image are :class:`PurePosixPath` and absolute.

Defaults are not written here: each field's default is the schema's
(:data:`atoll.manifest.schema.DEFAULTS`), and a unit test checks that the
fields are the schema's keys, with its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from atoll.manifest.schema import DEFAULTS, InitStrategy

__all__ = [
    "REF_ARCH",
    "Agent",
    "Containers",
    "Distribution",
    "FileEntry",
    "Group",
    "Image",
    "Init",
    "InitStrategy",
    "Kernel",
    "Kubernetes",
    "Manifest",
    "Packages",
    "PreloadImage",
    "Strip",
    "Units",
    "User",
]

# Debian architecture -> the name used in ostree refs (atoll/x86_64/minimal).
REF_ARCH: dict[str, str] = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class Image:
    name: str
    version: str
    description: str = DEFAULTS["image.description"]


@dataclass(frozen=True)
class Distribution:
    suite: str = DEFAULTS["distribution.suite"]
    architecture: str = DEFAULTS["distribution.architecture"]
    mirror: str = DEFAULTS["distribution.mirror"]
    security_mirror: str = DEFAULTS["distribution.security_mirror"]
    components: tuple[str, ...] = DEFAULTS["distribution.components"]
    # Also use <suite>-updates and <suite>-security (stable releases).
    updates: bool = DEFAULTS["distribution.updates"]


@dataclass(frozen=True)
class Packages:
    include: tuple[str, ...] = DEFAULTS["packages.include"]
    # Must never be installed; apt is pinned against them, so a dependency
    # that needs one fails the build instead of sneaking it in.
    exclude: tuple[str, ...] = DEFAULTS["packages.exclude"]


@dataclass(frozen=True)
class Kernel:
    package: str = DEFAULTS["kernel.package"]
    arguments: tuple[str, ...] = DEFAULTS["kernel.arguments"]
    # Module directories to keep, as globs relative to /usr/lib/modules/<kver>/
    # (e.g. "kernel/fs/overlayfs"); empty keeps every module.
    modules_keep: tuple[str, ...] = DEFAULTS["kernel.modules_keep"]


@dataclass(frozen=True)
class Init:
    strategy: InitStrategy = DEFAULTS["init.strategy"]


@dataclass(frozen=True)
class PreloadImage:
    """A container image from a local OCI archive, imported for containerd."""

    archive: Path
    reference: str  # e.g. "docker.io/library/busybox:1.36"


@dataclass(frozen=True)
class Containers:
    runtime: bool = DEFAULTS["containers.runtime"]  # containerd + crun
    preload: tuple[PreloadImage, ...] = DEFAULTS["containers.preload"]


@dataclass(frozen=True)
class FileEntry:
    """A file added to the image: from ``source`` on the build machine or inline."""

    path: PurePosixPath
    source: Path | None = DEFAULTS["files.source"]
    content: str | None = DEFAULTS["files.content"]
    mode: int = DEFAULTS["files.mode"]
    owner: str = DEFAULTS["files.owner"]
    group: str = DEFAULTS["files.group"]


@dataclass(frozen=True)
class Units:
    enable: tuple[str, ...] = DEFAULTS["units.enable"]
    disable: tuple[str, ...] = DEFAULTS["units.disable"]
    mask: tuple[str, ...] = DEFAULTS["units.mask"]


@dataclass(frozen=True)
class User:
    name: str
    uid: int | None = DEFAULTS["users.uid"]
    group: str | None = DEFAULTS["users.group"]  # primary group; None: a group of the user's name
    groups: tuple[str, ...] = DEFAULTS["users.groups"]
    shell: str = DEFAULTS["users.shell"]
    home: str | None = DEFAULTS["users.home"]
    system: bool = DEFAULTS["users.system"]


@dataclass(frozen=True)
class Group:
    name: str
    gid: int | None = DEFAULTS["groups.gid"]
    system: bool = DEFAULTS["groups.system"]


@dataclass(frozen=True)
class Strip:
    docs: bool = DEFAULTS["strip.docs"]
    man: bool = DEFAULTS["strip.man"]
    locales: bool = DEFAULTS["strip.locales"]
    keep_locales: tuple[str, ...] = DEFAULTS["strip.keep_locales"]
    package_manager: bool = DEFAULTS["strip.package_manager"]  # no apt, no dpkg in the final image
    # Packages installed to satisfy dependencies but not needed at run time
    # (maintainer-script tooling, e.g. perl via linux-base): their files are
    # removed after installation and the SBOM records them as removed.
    remove: tuple[str, ...] = DEFAULTS["strip.remove"]
    # Single files no package split lets us drop (e.g. a legacy shim), as
    # absolute paths or globs inside the image.
    paths: tuple[str, ...] = DEFAULTS["strip.paths"]


@dataclass(frozen=True)
class Kubernetes:
    """The Kubernetes node components: absent (``version`` None) or the pinned release."""

    # The release whose kubelet the image carries, e.g. "v1.35.4"; validated against
    # the release kubernetes/go.mod pins (the one atoll cluster build makes).
    version: str | None = DEFAULTS["kubernetes.version"]

    @property
    def enabled(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class Agent:
    include: bool = DEFAULTS["agent.include"]  # install atoll.agent (standard library only)
    # The ops shell's toolbox image: its reference ("" = no ops shell), the Debian
    # packages atoll builds it from, or a site's own OCI archive instead.
    toolbox: str = DEFAULTS["agent.toolbox"]
    toolbox_packages: tuple[str, ...] = DEFAULTS["agent.toolbox_packages"]
    toolbox_archive: Path | None = DEFAULTS["agent.toolbox_archive"]

    @property
    def builds_toolbox(self) -> bool:
        """Whether compose builds the toolbox from packages (not a site's archive)."""
        return self.include and bool(self.toolbox) and self.toolbox_archive is None


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
    files: tuple[FileEntry, ...] = DEFAULTS["files"]
    units: Units = field(default_factory=Units)
    users: tuple[User, ...] = DEFAULTS["users"]
    groups: tuple[Group, ...] = DEFAULTS["groups"]
    sysctl: tuple[tuple[str, str], ...] = DEFAULTS["sysctl"]  # sorted (key, value) pairs
    strip: Strip = field(default_factory=Strip)
    kubernetes: Kubernetes = field(default_factory=Kubernetes)
    agent: Agent = field(default_factory=Agent)

    @property
    def ref(self) -> str:
        """The ostree ref this manifest commits to, e.g. ``atoll/x86_64/minimal``."""
        arch = REF_ARCH.get(self.distribution.architecture, self.distribution.architecture)
        return f"atoll/{arch}/{self.image.name}"

"""What a compose will do, decided before anything is done (plan, then apply).

:func:`plan_rootfs` turns a validated :class:`~atoll.manifest.Manifest` and
the package index's fingerprint into a :class:`RootfsPlan`: the exact package
set, apt pins, dpkg path filters and apt sources that mmdebstrap will get.
The plan is pure data, so it is unit-tested without a network, and its
:meth:`RootfsPlan.cache_key` names the cached root filesystem: the same plan
against the same signed index is the same tree, so it is built once.

Packages atoll adds on its own, and why:

* the kernel package named by ``[kernel] package``;
* ``atoll-no-initramfs`` (built locally, see :mod:`atoll.compose.localrepo`)
  when the init strategy needs no initramfs: Debian's kernel depends on
  ``initramfs-tools | linux-initramfs-tool``, and this tiny package provides
  the latter, so no initramfs generator is installed at all;
* ``initramfs-tools`` when the strategy is ``initramfs``;
* ``containerd`` and ``crun`` when ``[containers] runtime`` is on;
* ``python3`` when the agent is included (it runs on Debian's python3).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from atoll.manifest.model import Distribution, InitStrategy, Manifest

# Bump when the way a root filesystem is built changes, so old caches are not reused.
ROOTFS_FORMAT = 3

NO_INITRAMFS_PACKAGE = "atoll-no-initramfs"

# dpkg never unpacks these (faster than deleting afterwards, and nothing to forget).
DOC_FILTERS = (
    "path-exclude=/usr/share/doc/*",
    # Licences stay: a platform team must be able to show what it ships under which terms.
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/doc-base/*",
)
MAN_FILTERS = ("path-exclude=/usr/share/man/*",)


@dataclass(frozen=True)
class RootfsPlan:
    """Everything that determines the root filesystem mmdebstrap builds."""

    suite: str
    architecture: str
    variant: str
    sources: tuple[str, ...]  # one-line apt sources, mmdebstrap's MIRROR arguments
    include: tuple[str, ...]  # sorted package names
    exclude: tuple[str, ...]  # pinned to -1: apt may never install them
    dpkg_options: tuple[str, ...]
    local_packages: tuple[str, ...]  # built by atoll into a local repository
    index_fingerprint: str

    def cache_key(self) -> str:
        payload = json.dumps({"format": ROOTFS_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def apt_preferences(self) -> str:
        """An apt preferences file that forbids every excluded package."""
        if not self.exclude:
            return ""
        return (
            "# Written by atoll compose: [packages].exclude, never installable.\n"
            f"Package: {' '.join(self.exclude)}\n"
            "Pin: release *\n"
            "Pin-Priority: -1\n"
        )


def plan_rootfs(manifest: Manifest, index_fingerprint: str) -> RootfsPlan:
    """The root filesystem ``manifest`` asks for, against the index ``index_fingerprint``."""
    dist = manifest.distribution
    include = set(manifest.packages.include)
    include.add(manifest.kernel.package)
    local: list[str] = []
    exclude = set(manifest.packages.exclude)
    if manifest.init.strategy is InitStrategy.PREPARE_ROOT:
        include.add(NO_INITRAMFS_PACKAGE)
        local.append(NO_INITRAMFS_PACKAGE)
        # The other providers of linux-initramfs-tool must not win the choice either.
        exclude.update({"initramfs-tools", "dracut", "tiny-initramfs"})
    else:
        include.add("initramfs-tools")
    if manifest.containers.runtime:
        include.update({"containerd", "crun"})
    if manifest.agent.include:
        include.add("python3")
    return RootfsPlan(
        suite=dist.suite,
        architecture=dist.architecture,
        variant="essential",
        sources=apt_sources(dist),
        include=tuple(sorted(include)),
        exclude=tuple(sorted(exclude - include)),
        dpkg_options=dpkg_filters(manifest),
        local_packages=tuple(local),
        index_fingerprint=index_fingerprint,
    )


def apt_sources(dist: Distribution) -> tuple[str, ...]:
    """One-line apt sources of the suite (with -updates and -security when asked)."""
    components = " ".join(dist.components)
    sources = [f"deb {dist.mirror} {dist.suite} {components}"]
    if dist.updates:
        sources.append(f"deb {dist.mirror} {dist.suite}-updates {components}")
        sources.append(f"deb {dist.security_mirror} {dist.suite}-security {components}")
    return tuple(sources)


def dpkg_filters(manifest: Manifest) -> tuple[str, ...]:
    """dpkg path filters for what ``[strip]`` removes, in dpkg's order-sensitive form."""
    strip = manifest.strip
    options: list[str] = []
    if strip.docs:
        options += DOC_FILTERS
    if strip.man:
        options += MAN_FILTERS
    if strip.locales:
        options.append("path-exclude=/usr/share/locale/*")
        for locale in strip.keep_locales:
            language = locale.split(".", 1)[0]
            if language in {"C", "POSIX"}:
                continue  # built into glibc (/usr/lib/locale/C.utf8), nothing under /usr/share
            options.append(f"path-include=/usr/share/locale/{language}/*")
            short = language.split("_", 1)[0]
            if short != language:
                options.append(f"path-include=/usr/share/locale/{short}/*")
        # The message catalogues of the kept languages only; locale.alias stays.
        options.append("path-include=/usr/share/locale/locale.alias")
    return tuple(options)

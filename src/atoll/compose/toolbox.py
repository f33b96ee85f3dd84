"""The ops shell's toolbox: a container image built from Debian packages.

``atoll node shell`` runs the toolbox in containerd on the node (see
:mod:`atoll.agent.shell`): the host has no shell tools of its own to speak
of, the toolbox brings them. Unless a site names its own archive
(``[agent] toolbox_archive``), compose builds it for every image that has the
agent:

1. a root filesystem of ``[agent] toolbox_packages`` from the manifest's own
   suite and mirrors (:func:`plan_toolbox`: the same mmdebstrap step and
   cache as the image's root filesystem, with the image's documentation
   filters and exclusions);
2. one image layer of that tree, without device nodes, apt's lists and logs,
   plus :data:`WRAPPERS`: ``ctr`` and ``ostree`` run the *host's* programs
   (``chroot /host``), against the host's containerd and ostree repository,
   so the toolbox does not carry a second containerd or libostree (``ctr run``
   is refused with a pointer to ``atoll node shell --image``);
3. an OCI image archive (:func:`atoll.compose.oci.image_archive`), cached
   by content in ``<cache>/toolbox/<key>.oci.tar``: the same plan gives the
   same bytes, so an unchanged manifest reuses it.

Customize copies the archive into the image and lists it in ``toolbox.list``
(:mod:`atoll.wire.imagelist`); the agent imports it the first time a shell
needs it, so it costs the boot nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from atoll.compose.oci import image_archive
from atoll.compose.plan import RootfsPlan, apt_sources, dpkg_filters
from atoll.compose.rootfs import build_rootfs
from atoll.durable import write_atomic
from atoll.manifest.model import Manifest
from atoll.progress import Reporter

# Bump when the way the toolbox is assembled changes, so old caches are not reused.
TOOLBOX_FORMAT = 2
# Installed on the image only to set packages up (usr-is-merged does the job of
# usrmerge under mmdebstrap's merged-usr hooks); never in the toolbox.
ALWAYS_EXCLUDED = ("usrmerge",)

_WRAPPER = """#!/bin/sh
# atoll toolbox: the host's {name}, run in the host's root ({why}).
# /host is the host's root, read-only.
{check}exec chroot /host /usr/bin/{name} "$@"
"""
# `ctr run` mounts the image's root filesystem on the client's side (to read its
# users and groups), which needs CAP_SYS_ADMIN: the ops shell does not have it.
_NO_RUN = """for arg in "$@"; do
    case $arg in
    -*) ;;
    run)
        echo "ctr run cannot work in the ops shell (it mounts the image, and the shell" >&2
        echo "may not mount): open a shell in the image instead, from your machine:" >&2
        echo "  atoll node shell --image <preloaded image> --reason ..." >&2
        exit 2 ;;
    *) [ "$arg" = default ] || break ;;
    esac
done
"""
WRAPPERS = {
    "usr/local/bin/ctr": _WRAPPER.format(name="ctr", why="its containerd", check=_NO_RUN),
    "usr/local/bin/ostree": _WRAPPER.format(
        name="ostree", why="its repository and deployments", check=""
    ),
}
ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM=xterm-256color",
)
# Members of the root filesystem tarball that do not belong in an image layer:
# device nodes, apt's lists and cache, logs, and two things no tool here needs
# (perl, there for maintainer scripts; glibc's charset converters): 17 MB of 81.
_DROPPED = (
    "dev/?*",
    "proc/?*",
    "sys/?*",
    "var/lib/apt/lists/?*",
    "var/cache/apt/?*",
    "var/log/?*",
    "usr/lib/*/gconv/*",
    "usr/lib/*/perl-base/*",
    "usr/bin/perl*",
)


@dataclass(frozen=True)
class Toolbox:
    archive: Path
    reference: str
    from_cache: bool


def plan_toolbox(manifest: Manifest, index_fingerprint: str) -> RootfsPlan:
    """The toolbox's root filesystem: its packages from the image's suite (pure)."""
    dist = manifest.distribution
    include = set(manifest.agent.toolbox_packages)
    exclude = (set(manifest.packages.exclude) | set(ALWAYS_EXCLUDED)) - include
    return RootfsPlan(
        suite=dist.suite,
        architecture=dist.architecture,
        variant="essential",
        sources=apt_sources(dist),
        include=tuple(sorted(include)),
        exclude=tuple(sorted(exclude)),
        dpkg_options=dpkg_filters(manifest),
        local_packages=(),
        index_fingerprint=index_fingerprint,
    )


def cache_key(plan: RootfsPlan, reference: str) -> str:
    payload = json.dumps(
        {
            "format": TOOLBOX_FORMAT,
            "rootfs": plan.cache_key(),
            "reference": reference,
            "wrappers": WRAPPERS,
            "env": ENV,
            "dropped": _DROPPED,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def build_toolbox(
    manifest: Manifest,
    plan: RootfsPlan,
    cache: Path,
    reporter: Reporter,
    *,
    source_date_epoch: int,
    reuse: bool = True,
) -> Toolbox:
    """The toolbox archive for ``manifest`` (from the cache when it is there)."""
    reference = manifest.agent.toolbox
    target = cache / "toolbox" / f"{cache_key(plan, reference)}.oci.tar"
    if reuse and target.exists():
        return Toolbox(target, reference, from_cache=True)
    tarball, _ = build_rootfs(
        plan, cache, reporter, source_date_epoch=source_date_epoch, reuse=reuse, stage="toolbox"
    )
    archive = image_archive(
        toolbox_layer(tarball, source_date_epoch),
        reference,
        {"Cmd": ["/bin/bash", "-l"], "Env": list(ENV), "WorkingDir": "/"},
        created_by=f"atoll compose: toolbox of {', '.join(plan.include)} ({plan.suite})",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, archive, mode=0o644)
    return Toolbox(target, reference, from_cache=False)


def toolbox_layer(tarball: Path, mtime: int) -> bytes:
    """The layer's uncompressed tar: the tree of ``tarball`` minus :data:`_DROPPED`,
    plus :data:`WRAPPERS` (dated ``mtime``)."""
    out = io.BytesIO()
    with (
        tarfile.open(tarball) as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as layer,
    ):
        dropped: set[str] = set()
        for member in source:
            name = member.name.removeprefix("./")
            if not name or name == "." or any(fnmatch(name, p) for p in _DROPPED):
                dropped.add(name)
                continue
            member.name = name
            if member.islnk():  # a hard link names its target as a member: the same form
                member.linkname = member.linkname.removeprefix("./")
                if member.linkname in dropped:
                    continue  # its target is not in the layer (e.g. perl's second name)
            data = source.extractfile(member) if member.isreg() else None
            layer.addfile(member, data)
        for path, text in sorted(WRAPPERS.items()):
            content = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(content)
            info.mode = 0o755
            info.mtime = mtime
            info.uname = info.gname = "root"
            layer.addfile(info, io.BytesIO(content))
    return out.getvalue()

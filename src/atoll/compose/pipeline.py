"""``atoll compose``: manifest in, signed-ready ostree commit out.

The stages, each reported through :class:`~atoll.progress.Reporter`:

1. **validate** the whole manifest (structure, then every package name
   against the suite's signed index) before any side effect;
2. **rootfs**: mmdebstrap, or the cached tarball for the same plan
   (:mod:`atoll.compose.rootfs`);
3. **customize**, **slim**, **shape** an unpacked copy in a private work
   directory;
4. **commit** into the repository as an orphan commit, and only then move
   the ref: the single step that makes the new version visible. Ctrl-C or a
   failure anywhere before it leaves the repository's refs as they were, the
   work directory is removed, and caches hold only complete entries, so the
   next run continues from them.

An unchanged compose is a no-op: every input (the rootfs plan with the
index fingerprint, the manifest digest, the code and data atoll adds) is
hashed into ``atoll.input-digest``; when the ref already points at a commit
with the same digest, that commit is the answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import atoll
from atoll.compose import prepare_root
from atoll.compose.customize import OVERLAY, customize, link_runc_to_crun
from atoll.compose.plan import RootfsPlan, plan_rootfs
from atoll.compose.rootfs import build_rootfs
from atoll.compose.shape import shape
from atoll.compose.slim import slim
from atoll.errors import AtollError
from atoll.manifest import check_packages, load_index, load_manifest, manifest_digest
from atoll.manifest.model import InitStrategy, Manifest
from atoll.process import run
from atoll.progress import Reporter
from atoll.tools import ostree

METADATA_KEYS = (
    "version",
    "atoll.name",
    "atoll.manifest-digest",
    "atoll.packages-digest",
    "atoll.input-digest",
    "atoll.kernel",
    "atoll.kargs",
    "atoll.packages",
    "atoll.size",
)


@dataclass
class ComposeResult:
    commit: str
    ref: str
    version: str
    kernel: str
    packages: int  # packages whose files are in the image
    packages_removed: int  # installed for the build, removed by slim
    size: int  # bytes of regular files in the tree
    content_checksum: str
    unchanged: bool
    seconds: dict[str, float] = field(default_factory=dict)
    sbom: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "ref": self.ref,
            "version": self.version,
            "kernel": self.kernel,
            "packages": self.packages,
            "packages_removed": self.packages_removed,
            "size_bytes": self.size,
            "content_checksum": self.content_checksum,
            "unchanged": self.unchanged,
            "seconds": self.seconds,
            "sbom": self.sbom,
        }


def default_cache() -> Path:
    """``$ATOLL_CACHE``, else ``~/.cache/atoll``: outside any checkout, so a fresh
    clone on a machine that has built before starts warm (entries are keyed by
    content)."""
    configured = os.environ.get("ATOLL_CACHE")
    if configured:
        return Path(configured).resolve()
    return Path.home() / ".cache" / "atoll"


def compose(
    manifest_path: Path,
    repo: Path,
    reporter: Reporter,
    *,
    cache: Path | None = None,
    source_date_epoch: int | None = None,
    reuse: bool = True,
) -> ComposeResult:
    """Compose ``manifest_path`` into ``repo``; see the module docstring."""
    cache = (cache or default_cache()).resolve()
    seconds: dict[str, float] = {}
    epoch = source_date_epoch if source_date_epoch is not None else _epoch_from_env()

    started = time.monotonic()
    with reporter.stage("validate", str(manifest_path)):
        manifest = load_manifest(manifest_path)
        index = load_index(manifest.distribution, cache, reporter)
        check_packages(manifest, index)
        if manifest.agent.include and sys.version_info[:2] != (3, 11):
            raise AtollError(
                "the agent is byte-compiled for the image's python 3.11: run atoll with python 3.11"
            )
        plan = plan_rootfs(manifest, index.fingerprint)
    seconds["validate"] = time.monotonic() - started

    input_digest = _input_digest(manifest, plan)
    current = ostree.rev_parse(repo, manifest.ref) if (repo / "config").exists() else None
    if reuse and current is not None:
        existing = _existing(repo, current, manifest, input_digest)
        if existing is not None:
            reporter.info(f"{manifest.ref} is up to date ({current[:12]})")
            existing.seconds = seconds
            return existing

    started = time.monotonic()
    with reporter.stage("rootfs", f"{len(plan.include)} packages requested"):
        tarball, cached = build_rootfs(plan, cache, reporter, source_date_epoch=epoch, reuse=reuse)
        reporter.info(f"root filesystem {'from cache' if cached else 'built'}: {tarball.name}")
    seconds["rootfs"] = time.monotonic() - started

    work_parent = cache / "work"
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{manifest.image.name}-", dir=work_parent))
    try:
        root = work / "root"
        root.mkdir()
        started = time.monotonic()
        with reporter.stage("customize"):
            run(
                [
                    "tar",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "-xpf",
                    tarball,
                    "-C",
                    root,
                ]
            )
            customize(root, manifest)
            if manifest.init.strategy is InitStrategy.PREPARE_ROOT:
                prepare_root.install(root)
        seconds["customize"] = time.monotonic() - started

        started = time.monotonic()
        with reporter.stage("slim"):
            sbom = slim(root, manifest)
            if manifest.containers.runtime:
                link_runc_to_crun(root)
        seconds["slim"] = time.monotonic() - started

        started = time.monotonic()
        with reporter.stage("shape"):
            kernel = shape(root)
        seconds["shape"] = time.monotonic() - started

        packages = [p for p in sbom["packages"] if p["state"] == "installed"]  # type: ignore[attr-defined]
        removed = len(sbom["packages"]) - len(packages)  # type: ignore[arg-type]
        size = tree_size(root)
        metadata = {
            "version": manifest.image.version,
            "atoll.name": manifest.image.name,
            "atoll.manifest-digest": manifest_digest(manifest),
            "atoll.packages-digest": _packages_digest(sbom),
            "atoll.input-digest": input_digest,
            "atoll.kernel": kernel,
            "atoll.kargs": " ".join(manifest.kernel.arguments),
            "atoll.packages": str(len(packages)),
            "atoll.size": str(size),
        }
        started = time.monotonic()
        with reporter.stage("commit", str(repo)):
            ostree.init_repo(repo)
            commit = ostree.commit(
                repo,
                root,
                branch=None,
                subject=f"{manifest.image.name} {manifest.image.version}",
                metadata=metadata,
                timestamp=epoch,
                parent=current,
            )
            # The one step that makes the new version visible.
            ostree.set_ref(repo, manifest.ref, commit)
        seconds["commit"] = time.monotonic() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)

    info = ostree.commit_info(repo, commit)
    return ComposeResult(
        commit=commit,
        ref=manifest.ref,
        version=manifest.image.version,
        kernel=kernel,
        packages=len(packages),
        packages_removed=removed,
        size=size,
        content_checksum=info.get("contentchecksum", ""),
        unchanged=False,
        seconds=seconds,
        sbom=sbom,
    )


def tree_size(root: Path) -> int:
    """Bytes of regular files under ``root``, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            if not stat.S_ISREG(info.st_mode):
                continue
            key = (info.st_dev, info.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += info.st_size
    return total


def _epoch_from_env() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return int(time.time())
    try:
        return int(value)
    except ValueError as e:
        raise AtollError(f"SOURCE_DATE_EPOCH: not a number of seconds: {value!r}") from e


def _packages_digest(sbom: dict[str, Any]) -> str:
    lines = [
        f"{p['name']} {p['version']} {p['architecture']} {p['state']}" for p in sbom["packages"]
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _source_digest() -> str:
    """Digest of the code and data compose puts into images (atoll itself is an input)."""
    package = Path(atoll.__file__).resolve().parent
    digest = hashlib.sha256(atoll.__version__.encode())
    roots = [package / "compose", package / "agent", OVERLAY]
    for base in roots:
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(package)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _input_digest(manifest: Manifest, plan: RootfsPlan) -> str:
    payload = json.dumps(
        {
            "rootfs": plan.cache_key(),
            "manifest": manifest_digest(manifest),
            "atoll": _source_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _existing(
    repo: Path, commit: str, manifest: Manifest, input_digest: str
) -> ComposeResult | None:
    metadata = ostree.commit_metadata(repo, commit, METADATA_KEYS)
    if metadata.get("atoll.input-digest") != input_digest:
        return None
    sbom = json.loads(ostree.cat(repo, commit, "/usr/share/atoll/sbom.json"))
    installed = [p for p in sbom["packages"] if p["state"] == "installed"]
    info = ostree.commit_info(repo, commit)
    return ComposeResult(
        commit=commit,
        ref=manifest.ref,
        version=str(metadata.get("version", "")),
        kernel=str(metadata.get("atoll.kernel", "")),
        packages=len(installed),
        packages_removed=len(sbom["packages"]) - len(installed),
        size=int(str(metadata.get("atoll.size", "0"))),
        content_checksum=info.get("contentchecksum", ""),
        unchanged=True,
        sbom=sbom,
    )

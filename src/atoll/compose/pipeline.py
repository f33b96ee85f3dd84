"""``atoll compose``: manifest in, signed-ready ostree commit out.

The stages, each reported and timed by :class:`~atoll.progress.Reporter` (the
result's ``seconds`` are the reporter's measurements):

1. **validate** the whole manifest (structure, then every package name
   against the suite's signed index) before any side effect;
2. **rootfs**: mmdebstrap, or the cached tarball for the same plan
   (:mod:`atoll.compose.rootfs`);
   **toolbox**: the ops shell's toolbox image for an image with the agent,
   built from Debian packages the same way, or its cached archive
   (:mod:`atoll.compose.toolbox`);
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
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import atoll
from atoll.cache import default_cache
from atoll.compose import kubernetes, prepare_root
from atoll.compose.customize import AGENT_SOURCES, OVERLAY, customize, link_runc_to_crun
from atoll.compose.plan import RootfsPlan, plan_rootfs
from atoll.compose.rootfs import build_rootfs
from atoll.compose.shape import shape
from atoll.compose.slim import slim
from atoll.compose.toolbox import build_toolbox, plan_toolbox
from atoll.compose.toolbox import cache_key as toolbox_key
from atoll.errors import AtollError, ManifestError
from atoll.manifest import check_packages, load_index, load_manifest, manifest_digest
from atoll.manifest.model import InitStrategy, Manifest
from atoll.process import run
from atoll.progress import Reporter, Stage
from atoll.tools import ostree

# Debian's stable and oldstable: a package unknown in one is looked up in the other.
OTHER_SUITE = {"trixie": "bookworm", "bookworm": "trixie"}

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


def compose(
    manifest_path: Path,
    repo: Path,
    reporter: Reporter,
    *,
    cache: Path | None = None,
    source_date_epoch: int | None = None,
    reuse: bool = True,
    allowed_sources: tuple[Path, ...] = (),
) -> ComposeResult:
    """Compose ``manifest_path`` into ``repo``; see the module docstring.

    ``allowed_sources``: directories ``[[files]].source`` may come from besides
    the tree of the manifest that names it (``--allow-source-outside``).

    The result's ``seconds`` are the stages' durations as the reporter timed them.
    """
    cache = (cache or default_cache()).resolve()
    epoch = source_date_epoch if source_date_epoch is not None else _epoch_from_env()

    with reporter.stage("validate", str(manifest_path)) as validate:
        manifest, plan = _validate(manifest_path, cache, reporter, allowed_sources)

    toolbox_plan = (
        plan_toolbox(manifest, plan.index_fingerprint) if manifest.agent.builds_toolbox else None
    )
    kubelet, kubelet_stages = None, []
    if manifest.kubernetes.enabled:
        with reporter.stage("kubelet", f"Kubernetes {manifest.kubernetes.version}") as finding:
            kubelet = kubernetes.find_kubelet(manifest, cache, reporter)
        kubelet_stages.append(finding)
    input_digest = _input_digest(manifest, plan, toolbox_plan, kubelet)
    current = ostree.rev_parse(repo, manifest.ref) if (repo / "config").exists() else None
    if reuse and current is not None:
        existing = _existing(repo, current, manifest, input_digest)
        if existing is not None:
            reporter.info(f"{manifest.ref} is up to date ({current[:12]})")
            existing.seconds = _seconds(validate)
            return existing

    with reporter.stage("rootfs", f"{len(plan.include)} packages requested") as rootfs:
        tarball, cached = build_rootfs(plan, cache, reporter, source_date_epoch=epoch, reuse=reuse)
        reporter.info(f"root filesystem {'from cache' if cached else 'built'}: {tarball.name}")

    stages = [validate, *kubelet_stages, rootfs]
    toolbox = manifest.agent.toolbox_archive if manifest.agent.toolbox else None
    if toolbox_plan is not None:
        with reporter.stage("toolbox", manifest.agent.toolbox) as toolboxing:
            built = build_toolbox(
                manifest, toolbox_plan, cache, reporter, source_date_epoch=epoch, reuse=reuse
            )
            reporter.info(
                f"toolbox {'from cache' if built.from_cache else 'built'}: {built.archive.name}"
            )
        toolbox = built.archive
        stages.append(toolboxing)

    tree = _Tree(
        manifest,
        repo,
        parent=current,
        input_digest=input_digest,
        epoch=epoch,
        toolbox=toolbox,
        kubelet=kubelet,
    )
    committed = tree.compose(tarball, cache / "work", reporter)
    installed, removed = _package_counts(committed.sbom)
    info = ostree.commit_info(repo, committed.commit)
    return ComposeResult(
        commit=committed.commit,
        ref=manifest.ref,
        version=manifest.image.version,
        kernel=committed.kernel,
        packages=installed,
        packages_removed=removed,
        size=committed.size,
        content_checksum=info.get("contentchecksum", ""),
        unchanged=False,
        seconds=_seconds(*stages, *committed.stages),
        sbom=committed.sbom,
    )


def _validate(
    manifest_path: Path, cache: Path, reporter: Reporter, allowed_sources: tuple[Path, ...]
) -> tuple[Manifest, RootfsPlan]:
    """The whole manifest, every package against the signed index, then the rootfs plan."""
    manifest = load_manifest(
        manifest_path, allowed_sources=allowed_sources, kubernetes_pin=kubernetes.pinned_release
    )
    index = load_index(manifest.distribution, cache, reporter)
    try:
        check_packages(manifest, index)
    except ManifestError as unknown:
        other = OTHER_SUITE.get(manifest.distribution.suite)
        if other is None:
            raise
        # Say which unknown names are the other stable suite's (renamed or dropped);
        # without that suite's index (no network, no cache), the problems as they are.
        try:
            elsewhere = load_index(replace(manifest.distribution, suite=other), cache, reporter)
        except AtollError:
            raise unknown from None
        check_packages(manifest, index, elsewhere=(other, elsewhere))
    return manifest, plan_rootfs(manifest, index.fingerprint)


@dataclass(frozen=True)
class _Committed:
    commit: str
    kernel: str
    sbom: dict[str, Any]
    size: int
    stages: tuple[Stage, ...]  # customize, slim, shape, commit, as the reporter timed them


@dataclass(frozen=True)
class _Tree:
    """The stages that turn a root filesystem tarball into a commit on the manifest's ref."""

    manifest: Manifest
    repo: Path
    parent: str | None  # the ref's current commit
    input_digest: str
    epoch: int
    toolbox: Path | None  # the ops shell's toolbox archive, for an image with the agent
    kubelet: kubernetes.Kubelet | None = None  # for an image with [kubernetes]

    def compose(self, tarball: Path, work_parent: Path, reporter: Reporter) -> _Committed:
        """Unpack, customize, slim, shape and commit, in a private work directory removed after."""
        work_parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{self.manifest.image.name}-", dir=work_parent))
        try:
            root = work / "root"
            root.mkdir()
            with reporter.stage("customize") as customizing:
                self._customize(tarball, root)
            with reporter.stage("slim") as slimming:
                sbom = slim(root, self.manifest)
                if self.manifest.containers.runtime:
                    link_runc_to_crun(root)
            with reporter.stage("shape") as shaping:
                kernel = shape(root)
            size = tree_size(root)
            metadata = self._metadata(sbom, kernel, size)
            with reporter.stage("commit", str(self.repo)) as committing:
                commit = self._commit(root, metadata)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        stages = (customizing, slimming, shaping, committing)
        return _Committed(commit=commit, kernel=kernel, sbom=sbom, size=size, stages=stages)

    def _customize(self, tarball: Path, root: Path) -> None:
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
        customize(root, self.manifest, self.toolbox)
        if self.kubelet is not None:
            kubernetes.install(root, self.manifest, self.kubelet)
        if self.manifest.init.strategy is InitStrategy.PREPARE_ROOT:
            prepare_root.install(root)

    def _metadata(self, sbom: dict[str, Any], kernel: str, size: int) -> dict[str, str]:
        manifest = self.manifest
        installed, _removed = _package_counts(sbom)
        return {
            "version": manifest.image.version,
            "atoll.name": manifest.image.name,
            "atoll.manifest-digest": manifest_digest(manifest),
            "atoll.packages-digest": _packages_digest(sbom),
            "atoll.input-digest": self.input_digest,
            "atoll.kernel": kernel,
            "atoll.kargs": " ".join(manifest.kernel.arguments),
            "atoll.packages": str(installed),
            "atoll.size": str(size),
        }

    def _commit(self, root: Path, metadata: dict[str, str]) -> str:
        ostree.init_repo(self.repo)
        commit = ostree.commit(
            self.repo,
            root,
            branch=None,
            subject=f"{self.manifest.image.name} {self.manifest.image.version}",
            metadata=metadata,
            timestamp=self.epoch,
            parent=self.parent,
        )
        # The one step that makes the new version visible.
        ostree.set_ref(self.repo, self.manifest.ref, commit)
        return commit


def _seconds(*stages: Stage) -> dict[str, float]:
    """Each stage's duration by name, as the reporter measured it."""
    return {stage.name: stage.seconds for stage in stages}


def _package_counts(sbom: dict[str, Any]) -> tuple[int, int]:
    """Packages whose files are in the image, and those installed only to build it."""
    installed = sum(1 for p in sbom["packages"] if p["state"] == "installed")
    return installed, len(sbom["packages"]) - installed


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
    roots = [package / "compose", *(package / name for name in AGENT_SOURCES), OVERLAY]
    for base in roots:
        for path in sorted(base.rglob("*")) if base.is_dir() else [base]:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(package)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _input_digest(
    manifest: Manifest,
    plan: RootfsPlan,
    toolbox: RootfsPlan | None,
    kubelet: kubernetes.Kubelet | None = None,
) -> str:
    payload = json.dumps(
        {
            "rootfs": plan.cache_key(),
            "toolbox": toolbox_key(toolbox, manifest.agent.toolbox) if toolbox else None,
            # The build's key fixes the kubelet's bytes (the build is reproducible);
            # absent for an image without [kubernetes].
            **({"kubelet": kubelet.key} if kubelet is not None else {}),
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
    installed, removed = _package_counts(sbom)
    info = ostree.commit_info(repo, commit)
    return ComposeResult(
        commit=commit,
        ref=manifest.ref,
        version=str(metadata.get("version", "")),
        kernel=str(metadata.get("atoll.kernel", "")),
        packages=installed,
        packages_removed=removed,
        size=int(str(metadata.get("atoll.size", "0"))),
        content_checksum=info.get("contentchecksum", ""),
        unchanged=True,
        sbom=sbom,
    )

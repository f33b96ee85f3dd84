"""Build a root filesystem with mmdebstrap, cached by its plan.

mmdebstrap runs in ``unshare`` mode: inside a user namespace, so package
maintainer scripts never run with the build machine's real root privileges
(mkosi and osbuild sandbox the same step). It writes a tarball, which is the
cache entry: ``<cache>/rootfs/<plan key>.tar``. The same plan against the same
signed index gives the same key, so an unchanged manifest skips mmdebstrap
entirely; a changed package set rebuilds, and downloads only what the apt
cache (``<cache>/apt/<suite>-<arch>``, synced into and out of the chroot)
does not already hold.

Nothing half-written is ever visible: mmdebstrap writes ``<key>.tar.partial``
and only a complete run is renamed into place (:func:`atoll.durable.replace`:
flushed, renamed, the directory flushed), so Ctrl-C or a failed build
leaves the cache as it was.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from atoll import durable
from atoll.compose.localrepo import ensure_local_repo
from atoll.compose.plan import RootfsPlan
from atoll.process import run
from atoll.progress import Reporter

MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
_NEWLY = re.compile(r"(\d+) newly installed")
_GET = re.compile(r"^Get:\d+ ")
_SETUP = re.compile(r"^Setting up (\S+) ")


class _Progress:
    """Turns mmdebstrap's verbose output into download and install progress."""

    def __init__(self, reporter: Reporter, stage: str) -> None:
        self.reporter = reporter
        self.stage = stage
        self.total = 0
        self.fetched = 0
        self.configured = 0
        self.tail: list[str] = []

    def __call__(self, line: str) -> None:
        match = _NEWLY.search(line)
        if match:
            self.total += int(match.group(1))
        if _GET.match(line):
            self.fetched += 1
            self.reporter.progress(self.stage, self.fetched, None, "packages downloaded")
        elif _SETUP.match(line):
            self.configured += 1
            self.reporter.progress(
                self.stage, self.configured, self.total or None, "packages set up"
            )


def mmdebstrap_argv(
    plan: RootfsPlan,
    target: Path,
    apt_cache: Path,
    local_repo: str | None,
    preferences: Path | None,
) -> list[str]:
    """The mmdebstrap command line for ``plan`` (pure; unit-tested)."""
    argv: list[str] = [
        "mmdebstrap",
        "--mode=unshare",
        f"--variant={plan.variant}",
        f"--architectures={plan.architecture}",
        "--format=tar",
        "--verbose",
        "--aptopt=APT::Install-Recommends false",
        "--aptopt=Acquire::Retries 3",
        f"--include={','.join(plan.include)}",
        # /bin, /lib... as links into /usr from the start, and usr-is-merged
        # instead of usrmerge (which would pull perl into the image).
        f"--hook-dir={MERGED_USR_HOOKS}",
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives" "$1/etc/apt/preferences.d"',
    ]
    if preferences is not None:
        argv.append(f"--setup-hook=upload {preferences} /etc/apt/preferences.d/atoll.pref")
    argv += [
        f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/",
        "--skip=download/empty",
        f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}",
        # The pin file is build configuration, not part of the image.
        '--customize-hook=rm -f "$1/etc/apt/preferences.d/atoll.pref"',
    ]
    argv += [f"--dpkgopt={option}" for option in plan.dpkg_options]
    argv += [plan.suite, str(target), *plan.sources]
    if local_repo is not None:
        argv.append(local_repo)
    return argv


def build_rootfs(
    plan: RootfsPlan,
    cache: Path,
    reporter: Reporter,
    *,
    source_date_epoch: int,
    reuse: bool = True,
    stage: str = "rootfs",
) -> tuple[Path, bool]:
    """Return ``(tarball, from_cache)`` for ``plan``, building it if needed (progress
    is reported under the reporter's ``stage``)."""
    rootfs_dir = cache / "rootfs"
    rootfs_dir.mkdir(parents=True, exist_ok=True)
    target = rootfs_dir / f"{plan.cache_key()}.tar"
    if reuse and target.exists():
        return target, True
    apt_cache = cache / "apt" / f"{plan.suite}-{plan.architecture}"
    apt_cache.mkdir(parents=True, exist_ok=True)
    local_repo = ensure_local_repo(cache / "localrepo") if plan.local_packages else None
    partial = target.with_name(target.name + ".partial")
    preferences: Path | None = None
    if plan.exclude:
        preferences = rootfs_dir / f"{plan.cache_key()}.pref"
        preferences.write_text(plan.apt_preferences())
    progress = _Progress(reporter, stage)
    tmp = private_tmpdir(cache)
    try:
        run(
            mmdebstrap_argv(plan, partial, apt_cache, local_repo, preferences),
            env={"SOURCE_DATE_EPOCH": str(source_date_epoch), "TMPDIR": str(tmp)},
            on_line=progress,
        )
        durable.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
        if preferences is not None:
            preferences.unlink(missing_ok=True)
        # Whatever an interrupted mmdebstrap left behind (its chroot, its gpg home);
        # run() has waited for all of its processes, so nothing writes there now.
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            reporter.warning(f"could not remove mmdebstrap's temporary directory {tmp}")
    return target, False


def private_tmpdir(cache: Path) -> Path:
    """A TMPDIR of mmdebstrap's own on the cache's filesystem (not a small /tmp)."""
    parent = cache / "tmp"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="mmdebstrap-run-", dir=parent))

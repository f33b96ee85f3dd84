"""Shared test configuration: tiers are marked by directory.

``tests/unit`` runs in seconds with no external tools, subprocess, daemon, pty
or network, each test under a short timeout (``UNIT_TIMEOUT``);
``tests/integration`` uses real mmdebstrap/ostree/sqlite/etcd (and servers on
loopback), ``tests/vm`` boots real images under qemu. Built images are shared
between tests through session fixtures in the tier's own conftest, so each is
built once per run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.cache import default_cache
from atoll.cluster.build import KubernetesBinaries, build
from atoll.compose import ComposeResult, compose
from atoll.compose.oci import write_busybox_archive
from atoll.process import STDOUT, Child, start
from atoll.progress import PlainReporter

ROOT = Path(__file__).resolve().parent.parent


# Seconds a unit test may take (pytest-timeout). The other tiers keep the global
# timeout of pyproject.toml (600 s) unless a test or module sets its own.
UNIT_TIMEOUT = 20


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in {"integration", "vm"}:
            item.add_marker(getattr(pytest.mark, tier))
        elif tier == "unit" and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))
    # Tests that need the Kubernetes binaries run last (in their tiers' order), so
    # that the background build (below) has the whole run to finish.
    items[:] = [i for i in items if not _uses_kubernetes(i)] + [
        i for i in items if _uses_kubernetes(i)
    ]


# --- The Kubernetes binaries, built in the background -----------------------------
#
# A cold build is about 13 minutes of CPU here (docs/kubernetes.md). Guests run on
# one vCPU, so a second core is mostly idle while the vm tier runs: the build is
# started at the lowest priority as soon as tests that need it are collected, and
# fills that idle time. The fixture then finds it in the cache (or waits for the
# build's lock, or builds itself if the background build failed, with its error).

KUBERNETES_FIXTURE = "kubernetes_binaries"
KUBERNETES_BUILD_LOG = ROOT / "build" / "test" / "kubernetes-build.log"
_background_builds: list[Child] = []


def _uses_kubernetes(item: pytest.Item) -> bool:
    return KUBERNETES_FIXTURE in getattr(item, "fixturenames", ())


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not any(map(_uses_kubernetes, session.items)):
        return
    KUBERNETES_BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with KUBERNETES_BUILD_LOG.open("wb") as log:
        argv = ["nice", "-n", "19", sys.executable, "-m", "atoll", "cluster", "build"]
        _background_builds.append(start(argv, stdout=log, stderr=STDOUT, session=True))


def pytest_sessionfinish(session: pytest.Session) -> None:
    # An aborted run stops the build (SIGTERM: it removes its partial entry).
    for child in _background_builds:
        child.stop(grace=30)


@pytest.fixture(scope="session")
def kubernetes_binaries() -> KubernetesBinaries:
    """The pinned release's kubelet, control plane and kubectl (``atoll cluster build``).

    Composes with ``TEST_CACHE`` (an image with a ``[kubernetes]`` table) then find
    this build, and Go's caches, instead of starting a build of their own.
    """
    binaries = build(PlainReporter())
    for name in ("kubernetes", "go"):
        shared, here = default_cache() / name, TEST_CACHE / name
        if not (here.exists() or here.is_symlink()):
            here.parent.mkdir(parents=True, exist_ok=True)
            here.symlink_to(shared)
    return binaries


# --- The default image, composed once per run -------------------------------

# Tests build with their own cache (apt archives, root filesystems) and a fixed
# SOURCE_DATE_EPOCH, so every cached root filesystem in it was built the same
# way and reproducibility can be checked against it. It lives outside the
# checkout (entries are keyed by content), so a fresh clone starts warm; under
# $ATOLL_CACHE when that is set, like every cache of atoll's.
TEST_CACHE = default_cache() / "test"
TEST_EPOCH = 1_700_000_000
DEFAULT_MANIFEST = ROOT / "examples" / "minimal.toml"
BUSYBOX_ARCHIVE = ROOT / "build" / "images" / "busybox.oci.tar"


@dataclass(frozen=True)
class ComposedImage:
    repo: Path
    ref: str
    commit: str
    version: str
    result: ComposeResult


@pytest.fixture(scope="session")
def default_image() -> ComposedImage:
    """``examples/minimal.toml`` composed into ``build/test/repo`` (an archive repo)."""
    write_busybox_archive(BUSYBOX_ARCHIVE, "docker.io/library/busybox:atoll")
    repo = ROOT / "build" / "test" / "repo"
    result = compose(
        DEFAULT_MANIFEST,
        repo,
        PlainReporter(),
        cache=TEST_CACHE,
        source_date_epoch=TEST_EPOCH,
    )
    return ComposedImage(repo, result.ref, result.commit, result.version, result)


# --- Debian 12 (bookworm), oldstable: still composed, booted and upgraded ---------------


@dataclass(frozen=True)
class BookwormImages:
    """Two releases of the default image on bookworm, in one repository."""

    old: ComposedImage  # 1.0.0
    new: ComposedImage  # 1.0.1, a file more


@pytest.fixture(scope="session")
def bookworm_images(
    default_image: ComposedImage, tmp_path_factory: pytest.TempPathFactory
) -> BookwormImages:
    work = tmp_path_factory.mktemp("bookworm")
    repo = work / "repo"
    images = []
    for version, extra in (
        ("1.0.0", ""),
        ("1.0.1", '[[files]]\npath = "/usr/lib/atoll/site-marker"\ncontent = "1.0.1"\n'),
    ):
        site = work / f"bookworm-{version}.toml"
        site.write_text(
            f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "bookworm"\nversion = "{version}"\n'
            f'[distribution]\nsuite = "bookworm"\n{extra}'
        )
        result = compose(
            site, repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH
        )
        images.append(ComposedImage(repo, result.ref, result.commit, result.version, result))
    return BookwormImages(images[0], images[1])

"""VM-tier fixtures: the default image's disk, built once per run, and one shared boot.

Each TCG boot costs 30-40 s on the shared 2-core machine, so the direct-mode
boot with the self-test is a session fixture that several tests assert on.
VMs boot with ``snapshot=True``: the disk stays pristine for the next boot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.boot.console import ConsoleState
from atoll.boot.report import BootReport
from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.compose import compose
from atoll.demo import CONTROLLER_PORT, UPDATES_PORT
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.process import run
from atoll.progress import PlainReporter
from atoll.publish.serve import serve_in_thread
from atoll.tools import ostree
from atoll.tools.qemu import HostService
from tests.conftest import DEFAULT_MANIFEST, TEST_CACHE, TEST_EPOCH, ComposedImage

READY_TIMEOUT = 240.0
PREPARE_ROOT = "atoll-prepare-root: booting deployment "
SOFT_REBOOT = ": soft reboot into "
SELFTEST_TIMEOUT = 180.0


@dataclass(frozen=True)
class DefaultDisk:
    image: Path
    composed: ComposedImage


@dataclass(frozen=True)
class SelftestBoot:
    """A finished boot of the default disk with the guest's self-test verdict."""

    report: BootReport
    console: ConsoleState


@pytest.fixture(scope="session")
def default_disk(
    default_image: ComposedImage, tmp_path_factory: pytest.TempPathFactory
) -> DefaultDisk:
    image = tmp_path_factory.mktemp("vm-disk") / "default.img"
    # The commit, not the ref: another session may move the shared repo's ref meanwhile.
    plan = plan_disk(default_image.repo, default_image.commit, image, size=2048 * MIB)
    build_disk(plan, PlainReporter())
    return DefaultDisk(image, default_image)


def boot_with_selftest(disk: DefaultDisk, firmware: Firmware) -> SelftestBoot:
    spec = BootSpec(disk.image, firmware=firmware, snapshot=True, selftest=True)
    with Machine(spec) as vm:
        vm.wait_ready(READY_TIMEOUT)
        # The verdict and systemd-analyze's block both follow the ready marker.
        done = vm.wait_until(
            lambda c: c.selftest_verdict is not None and c.analysis is not None,
            SELFTEST_TIMEOUT,
        )
        assert done, f"no self-test verdict or analysis; console: {vm.console.tail[-15:]}"
        return SelftestBoot(vm.report(), vm.console)


@pytest.fixture(scope="session")
def direct_boot(default_disk: DefaultDisk) -> Iterator[SelftestBoot]:
    yield boot_with_selftest(default_disk, Firmware.DIRECT)


@dataclass(frozen=True)
class TwoVersions:
    """One repository holding the default image (old) and a site image on top of it (new)."""

    repo: Path
    old: ComposedImage
    new_version: str
    new_commit: str


@pytest.fixture(scope="session")
def two_versions(
    default_image: ComposedImage, tmp_path_factory: pytest.TempPathFactory
) -> TwoVersions:
    work = tmp_path_factory.mktemp("two-versions")
    repo = work / "repo"
    ostree.init_repo(repo)
    run(["ostree", f"--repo={repo}", "pull-local", str(default_image.repo), default_image.commit])
    ostree.set_ref(repo, default_image.ref, default_image.commit)
    site = work / "site.toml"
    site.write_text(
        f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "minimal"\nversion = "1.0.1"\n'
        '[[files]]\npath = "/usr/lib/atoll/site-marker"\ncontent = "1.0.1"\n'
    )
    new = compose(site, repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH)
    return TwoVersions(repo, default_image, new.version, new.commit)


@contextlib.contextmanager
def update_server_and_controller(
    updates: Path, store_path: Path
) -> Iterator[tuple[str, tuple[HostService, ...]]]:
    """Serve ``updates`` and run a fleet controller (SQLite at ``store_path``) on
    127.0.0.1; yields the controller's URL and the forwards a guest reaches them by."""
    with contextlib.ExitStack() as stack:
        server = serve_in_thread(updates)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        store = stack.enter_context(SqliteStore(store_path))
        fleet = FleetService(store, "127.0.0.1", 0, tick=0.5)
        fleet.start()
        stack.callback(fleet.stop)
        _, port = fleet.address
        services = (
            HostService(CONTROLLER_PORT, port),
            HostService(UPDATES_PORT, server.server_address[1]),
        )
        yield f"http://127.0.0.1:{port}", services


def entered_roots(console: str) -> list[str]:
    """The deployments a node's userspace was started in or asked to switch into, in
    order, as commit prefixes: one per firmware boot (atoll's PID-1 step names the
    deployment it boots) and one per soft-reboot the agent asked for (it names the
    deployment; whether the switch happened, the next line of the story says: the
    trial of that version, or the agent's "did not switch root")."""
    found = []
    for line in console.splitlines():
        if PREPARE_ROOT in line:
            found.append(line.split(PREPARE_ROOT)[1].strip().rsplit("/", 1)[-1][:12])
        elif SOFT_REBOOT in line and "atoll-agent" in line:
            # "<version> (<commit>): <reason>", or "<commit>: <reason>" without a version
            label = line.split(SOFT_REBOOT)[1]
            found.append(label.split("(", 1)[1][:12] if "(" in label.split(":")[0] else label[:12])
    return found

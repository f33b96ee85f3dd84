"""VM-tier fixtures: the default image's disk, built once per run, and one shared boot.

Each TCG boot costs 30-40 s on the shared 2-core machine, so the direct-mode
boot with the self-test is a session fixture that several tests assert on.
VMs boot with ``snapshot=True``: the disk stays pristine for the next boot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.boot.console import ConsoleState
from atoll.boot.report import BootReport
from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.progress import PlainReporter
from tests.conftest import ComposedImage

READY_TIMEOUT = 240.0
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
    plan = plan_disk(default_image.repo, default_image.ref, image, size=2048 * MIB)
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

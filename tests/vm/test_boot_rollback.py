"""Two deployments on one disk: the newest boots by default, the previous stays selectable."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from atoll.boot.runner import Firmware
from atoll.disk import boot_entries, build_disk, plan_disk, select_entry
from atoll.disk.layout import MIB
from atoll.progress import PlainReporter
from tests.vm.conftest import DefaultDisk, TwoVersions, boot_with_selftest


@dataclass(frozen=True)
class TwoDeployments:
    disk: DefaultDisk
    old_version: str
    new_version: str
    new_commit: str


@pytest.fixture(scope="module")
def two_deployments(
    two_versions: TwoVersions, tmp_path_factory: pytest.TempPathFactory
) -> TwoDeployments:
    image = tmp_path_factory.mktemp("two-deployments") / "two.img"
    plan = plan_disk(
        two_versions.repo,
        two_versions.new_commit,
        image,
        size=2048 * MIB,
        previous=two_versions.old.commit,
    )
    build_disk(plan, PlainReporter())
    return TwoDeployments(
        DefaultDisk(image, two_versions.old),
        two_versions.old.version,
        two_versions.new_version,
        two_versions.new_commit,
    )


def test_the_newest_deployment_boots_by_default(two_deployments: TwoDeployments) -> None:
    boot = boot_with_selftest(two_deployments.disk, Firmware.DIRECT)
    assert boot.console.selftest["version"][1] == two_deployments.new_version
    assert boot.console.selftest["deployment"][1].startswith(two_deployments.new_commit)


def test_the_previous_entry_boots_the_old_version(two_deployments: TwoDeployments) -> None:
    entries = boot_entries(two_deployments.disk.image)
    assert len(entries) == 2
    select_entry(two_deployments.disk.image, entries[1].id)
    boot = boot_with_selftest(two_deployments.disk, Firmware.UEFI)
    assert boot.console.selftest["version"][1] == two_deployments.old_version

"""Two deployments on one disk: the newest boots by default, the previous stays selectable."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from atoll.boot.runner import Firmware
from atoll.compose import compose
from atoll.disk import boot_entries, build_disk, plan_disk, select_entry
from atoll.disk.layout import MIB
from atoll.progress import PlainReporter
from atoll.tools import ostree
from tests.conftest import DEFAULT_MANIFEST, TEST_CACHE, TEST_EPOCH, ComposedImage
from tests.vm.conftest import DefaultDisk, boot_with_selftest


@dataclass(frozen=True)
class TwoVersions:
    disk: DefaultDisk
    old_version: str
    new_version: str
    new_commit: str


@pytest.fixture(scope="module")
def two_versions(
    default_image: ComposedImage, tmp_path_factory: pytest.TempPathFactory
) -> TwoVersions:
    work = tmp_path_factory.mktemp("two-versions")
    repo = work / "repo"
    ostree.init_repo(repo)
    subprocess.run(
        ["ostree", f"--repo={repo}", "pull-local", str(default_image.repo), default_image.commit],
        check=True,
        capture_output=True,
    )
    ostree.set_ref(repo, default_image.ref, default_image.commit)
    site = work / "site.toml"
    site.write_text(
        f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "minimal"\nversion = "1.0.1"\n'
        '[[files]]\npath = "/usr/lib/atoll/site-marker"\ncontent = "1.0.1"\n'
    )
    new = compose(site, repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH)
    image = work / "two.img"
    plan = plan_disk(repo, new.commit, image, size=2048 * MIB, previous=default_image.commit)
    build_disk(plan, PlainReporter())
    return TwoVersions(
        DefaultDisk(image, default_image), default_image.version, new.version, new.commit
    )


def test_the_newest_deployment_boots_by_default(two_versions: TwoVersions) -> None:
    boot = boot_with_selftest(two_versions.disk, Firmware.DIRECT)
    assert boot.console.selftest["version"][1] == two_versions.new_version
    assert boot.console.selftest["deployment"][1].startswith(two_versions.new_commit)


def test_the_previous_entry_boots_the_old_version(two_versions: TwoVersions) -> None:
    entries = boot_entries(two_versions.disk.image)
    assert len(entries) == 2
    select_entry(two_versions.disk.image, entries[1].id)
    boot = boot_with_selftest(two_versions.disk, Firmware.UEFI)
    assert boot.console.selftest["version"][1] == two_versions.old_version

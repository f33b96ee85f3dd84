"""Debian 12 (bookworm), oldstable, still boots and upgrades: one VM.

The disk holds the bookworm image 1.0.0 (the previous deployment) and 1.0.1
(the default, with a boot counter), and first-boot user data puts the
agent's pending-upgrade marker in place, as the agent writes it when it stages
an upgrade. The node boots 1.0.1 with no initramfs under UEFI, the agent (on
bookworm's python 3.11) runs the upgrade's health trial, confirms it and
blesses the counted boot entry: the same path a fleet upgrade takes after its
reboot, on the older suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.progress import PlainReporter
from tests.conftest import BookwormImages
from tests.vm.conftest import READY_TIMEOUT

pytestmark = pytest.mark.timeout(1800)

TRIAL_TIMEOUT = 420.0  # from ready: systemd settles, the trial's checks pass under TCG


def test_a_bookworm_node_boots_its_upgrade_and_confirms_it(
    bookworm_images: BookwormImages, tmp_path: Path
) -> None:
    old, new = bookworm_images.old, bookworm_images.new
    disk = tmp_path / "node.img"
    plan = plan_disk(new.repo, new.commit, disk, size=2048 * MIB, previous=old.commit, boot_tries=3)
    build_disk(plan, PlainReporter())
    marker = {
        "new": new.commit,
        "previous": old.commit,
        "new_version": new.version,
        "previous_version": old.version,
        "state": "staged",
    }
    user_data = tmp_path / "node.toml"
    user_data.write_text(
        '[node]\nhostname = "node-bookworm"\n'
        '[[files]]\npath = "/var/lib/atoll/pending.json"\n'
        f"content = {json.dumps(json.dumps(marker))}\n"
    )
    with Machine(BootSpec(disk, Firmware.UEFI, user_data=user_data, snapshot=True)) as vm:
        vm.wait_ready(READY_TIMEOUT)
        confirmed = vm.wait_for("is healthy: confirmed", TRIAL_TIMEOUT)
        assert confirmed is not None, "\n".join(vm.console.tail[-30:])
        assert new.version in confirmed
        blessed = vm.wait_for("boot entry blessed", 180.0)
        console = vm.console_log.read_text(errors="replace")
    assert blessed is not None and "+" not in blessed.split("blessed:")[1], blessed
    assert "Linux version 6.1." in console  # bookworm's kernel
    boots = [line for line in console.splitlines() if "atoll-prepare-root: booting" in line]
    assert len(boots) == 1 and new.commit in boots[0], boots

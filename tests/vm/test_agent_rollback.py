"""A broken new deployment rolls back by itself: the node comes back on the old commit.

Two failures, each on its own disk:

Real everything, one VM (UEFI, systemd-boot, cold reboots): the disk holds the
default image 1.0.0 (the fallback) and, as the default deployment, a site image
1.0.2 that ships a unit which always fails. First-boot user data puts the
pending-upgrade marker in place, as the agent writes it when it stages an
upgrade (new = 1.0.2, previous = 1.0.0). The node boots 1.0.2; the agent's
trial sees systemd finish ``degraded`` with ``atoll-broken.service`` failed,
makes 1.0.0 the default again (``ostree admin deploy`` + the ESP sync with a
boot counter), and reboots; 1.0.0 comes up, the agent records that the
rollback is complete and blesses the counted boot entry.

The second release (1.0.3) never reaches the agent: its PID 1 exits, the
kernel panics and reboots (``panic=5``). The disk counts boots on its default
entry (``+2``), so systemd-boot tries it twice, then boots the previous entry;
that boot's agent sees the previous commit booted after the upgrade was staged
and removes the pending deployment. qemu ends at each panic reboot (it runs
with ``-no-reboot``), so the test powers the same disk on again itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.compose import compose
from atoll.disk import boot_entries, build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.process import run
from atoll.progress import PlainReporter
from atoll.tools import ostree
from tests.conftest import DEFAULT_MANIFEST, TEST_CACHE, TEST_EPOCH, ComposedImage
from tests.vm.conftest import READY_TIMEOUT

# Composing the releases and several boots on the shared cores: beyond the default 600 s.
pytestmark = pytest.mark.timeout(1800)

BROKEN_UNIT = """[Unit]
Description=atoll test: a unit that always fails (the broken release)

[Service]
Type=oneshot
ExecStart=/bin/false

[Install]
WantedBy=multi-user.target
"""
# From the first boot's ready marker: systemd finishes, three failed rounds
# (5 s apart), ostree admin deploy and the ESP sync under TCG, the reboot.
ROLLBACK_TIMEOUT = 420.0
# The second boot up to the agent saying the rollback is complete.
RECOVERY_TIMEOUT = 420.0


# PID 1 of the unbootable release: exits at once, so the kernel panics.
BROKEN_INIT = "#!/bin/sh\necho atoll-test: this init always fails\nexit 1\n"
PANIC_BOOT_TIMEOUT = 180.0
MAX_POWER_ONS = 4


@dataclass(frozen=True)
class BrokenRelease:
    repo: Path
    old: ComposedImage
    version: str
    commit: str


@pytest.fixture(scope="module")
def broken_release(
    default_image: ComposedImage, tmp_path_factory: pytest.TempPathFactory
) -> BrokenRelease:
    work = tmp_path_factory.mktemp("broken-release")
    repo = work / "repo"
    ostree.init_repo(repo)
    run(["ostree", f"--repo={repo}", "pull-local", str(default_image.repo), default_image.commit])
    ostree.set_ref(repo, default_image.ref, default_image.commit)
    site = work / "broken.toml"
    site.write_text(
        f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "minimal"\nversion = "1.0.2"\n'
        '[[files]]\npath = "/usr/lib/systemd/system/atoll-broken.service"\n'
        f"content = {json.dumps(BROKEN_UNIT)}\n"
    )
    new = compose(site, repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH)
    return BrokenRelease(repo, default_image, new.version, new.commit)


@pytest.fixture(scope="module")
def unbootable_release(broken_release: BrokenRelease) -> BrokenRelease:
    """1.0.3 in the same repository: an init that exits, and ``panic=5`` to reboot."""
    site = broken_release.repo.parent / "unbootable.toml"
    site.write_text(
        f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "minimal"\nversion = "1.0.3"\n'
        '[kernel]\narguments = ["panic=5"]\n'
        '[[files]]\npath = "/usr/lib/systemd/systemd"\nmode = "0755"\n'
        f"content = {json.dumps(BROKEN_INIT)}\n"
    )
    new = compose(
        site, broken_release.repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH
    )
    return BrokenRelease(broken_release.repo, broken_release.old, new.version, new.commit)


def _marker_user_data(path: Path, release: BrokenRelease) -> Path:
    """First-boot user data that puts the agent's pending-upgrade marker in place."""
    marker = {
        "new": release.commit,
        "previous": release.old.commit,
        "new_version": release.version,
        "previous_version": release.old.version,
        "state": "staged",
    }
    path.write_text(
        '[node]\nhostname = "node-rb"\n'
        '[[files]]\npath = "/var/lib/atoll/pending.json"\n'
        f"content = {json.dumps(json.dumps(marker))}\n"
    )
    return path


def test_a_broken_release_rolls_back_to_the_previous_commit_by_itself(
    broken_release: BrokenRelease, tmp_path: Path
) -> None:
    old = broken_release.old
    disk = tmp_path / "node.img"
    plan = plan_disk(
        broken_release.repo, broken_release.commit, disk, size=2048 * MIB, previous=old.commit
    )
    build_disk(plan, PlainReporter())
    user_data = _marker_user_data(tmp_path / "node.toml", broken_release)
    spec = BootSpec(disk, Firmware.UEFI, user_data=user_data, snapshot=True)
    with Machine(spec) as vm:
        start = time.monotonic()
        vm.wait_ready(READY_TIMEOUT)
        ready = time.monotonic()
        decided = vm.wait_for("health: ROLLBACK from", ROLLBACK_TIMEOUT)
        assert decided is not None, "no rollback: " + "\n".join(vm.console.tail[-30:])
        assert "atoll-broken.service" in decided
        rolled = time.monotonic()
        recovered = vm.wait_for("after the rollback", ROLLBACK_TIMEOUT + RECOVERY_TIMEOUT)
        assert recovered is not None, "not recovered: " + "\n".join(vm.console.tail[-30:])
        assert f"back on {old.version}" in recovered
        back = time.monotonic()
        blessed = vm.wait_for("boot entry blessed", 180.0)
        console = vm.console_log.read_text(errors="replace")
        reboots = vm.reboots
    # Kept for reading (pytest keeps the last few tmp_path directories).
    (tmp_path / "console.log").write_text(console)
    print(
        f"rollback VM: ready {ready - start:.0f} s, rollback decided +{rolled - ready:.0f} s, "
        f"back on {old.version} +{back - rolled:.0f} s"
    )
    assert blessed is not None and "+" not in blessed.split("blessed:")[1], blessed
    # Two boots on one console: the broken release, then the old commit deployed again.
    boots = [line for line in console.splitlines() if "atoll-prepare-root: booting" in line]
    assert len(boots) == 2, boots
    assert broken_release.commit in boots[0]
    assert old.commit in boots[1]
    assert reboots == 1


def test_a_release_that_never_reaches_the_agent_falls_back_by_boot_counting(
    unbootable_release: BrokenRelease, tmp_path: Path
) -> None:
    release, old = unbootable_release, unbootable_release.old
    disk = tmp_path / "node.img"
    plan = plan_disk(
        release.repo, release.commit, disk, size=2048 * MIB, previous=old.commit, boot_tries=2
    )
    build_disk(plan, PlainReporter())
    user_data = _marker_user_data(tmp_path / "node.toml", release)
    # Not a snapshot: systemd-boot's counting renames entries on the disk's ESP,
    # and every power-on must see what the previous one left.
    spec = BootSpec(disk, Firmware.UEFI, user_data=user_data)
    consoles: list[str] = []
    fell_back: str | None = None
    for _ in range(MAX_POWER_ONS):
        with Machine(spec) as vm:
            fell_back = vm.wait_for("did not reach the agent", PANIC_BOOT_TIMEOUT + READY_TIMEOUT)
            if fell_back is not None:
                # The undeploy and the ESP sync are done before the power-off.
                vm.wait_for("is the default", 300.0)
            consoles.append(vm.console_log.read_text(errors="replace"))
        if fell_back is not None:
            break
    (tmp_path / "consoles.log").write_text("\n=== power on ===\n".join(consoles))
    panics = sum("Kernel panic" in console for console in consoles)
    assert fell_back is not None, f"{len(consoles)} power-ons, {panics} panics; last console:\n" + (
        "\n".join(consoles[-1].splitlines()[-30:])
    )
    assert panics == 2 and len(consoles) == 3, [c.splitlines()[-5:] for c in consoles]
    booted = [
        line for c in consoles for line in c.splitlines() if "atoll-prepare-root: booting" in line
    ]
    assert [release.commit in line for line in booted] == [True, True, False]
    assert old.commit in booted[-1]
    # The agent removed the pending deployment: only the old one is left to boot.
    assert len(boot_entries(disk)) == 1

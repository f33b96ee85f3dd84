"""The power is cut at every step of an upgrade: the node always boots a whole deployment.

One UEFI node (systemd-boot, real ostree, its agent following a signed channel
served from the host, a real fleet controller on SQLite) on a disk that is *not*
a snapshot: every power-on sees what the last one left. Its first-boot user
data arms the agent's failpoints (:mod:`atoll.agent.failpoints`); at each one
the agent prints ``atoll-failpoint: NAME`` and stops, and the test kills qemu
(SIGKILL: no shutdown, no flush), then powers the same disk on again:

1. ``update:pulled`` (v2 pulled and verified, nothing deployed) -> v1 boots;
2. ``upgrade:deployed`` (ostree's deployment written, the ESP not synced) ->
   v1 boots, the agent undoes the half-staged upgrade without counting it as a
   failure and stages it again;
3. ``upgrade:synced`` (the ESP boots v2, the marker still says deploying) ->
   v2 boots and goes on trial;
4. ``trial:started`` (first trial boot of v2) -> v2 boots again, its second
   trial boot passes: confirmed, the boot entry blessed, the pool done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.demo import user_data
from atoll.disk import boot_entries, build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.pki import init as pki_init
from atoll.progress import PlainReporter
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish
from atoll.tools.qemu import HostService
from atoll.wire.fleet import request_json
from tests.vm.conftest import READY_TIMEOUT, TwoVersions, update_server_and_controller

# Five UEFI boots of one node under TCG, with pulls and deploys between them.
pytestmark = pytest.mark.timeout(3000)

NODE = "node-pc"
PREPARE_ROOT = "atoll-prepare-root: booting"
# The failpoints of a full-reboot upgrade, in order (the soft-reboot's own one,
# restart:soft, is cut in tests/vm/test_agent_soft_reboot.py).
NAMES = ("update:pulled", "upgrade:deployed", "upgrade:synced", "trial:started")
STEP_TIMEOUT = 600.0  # from the ready marker to the next failpoint (pull, deploy, ESP sync)


@dataclass(frozen=True)
class Host:
    """The host side: update server, fleet controller, the node's user data."""

    fleet: str
    services: tuple[HostService, ...]
    user_data: Path


@pytest.fixture
def host(two_versions: TwoVersions, tmp_path: Path) -> Iterator[Host]:
    reporter = PlainReporter()
    keys = tmp_path / "keys"
    init_keys(keys)
    key = load_private_key(keys / "atoll-ed25519.key")
    updates = tmp_path / "updates"
    for commit in (two_versions.old.commit, two_versions.new_commit):
        publish(two_versions.repo, commit, updates, "stable", key, reporter)
    pki = tmp_path / "pki"
    pki_init(pki)
    data = tmp_path / "node.toml"
    data.write_text(
        user_data(NODE, "stable", (keys / "atoll-ed25519.pub").read_bytes(), pki)
        + '\n[[files]]\npath = "/etc/atoll/failpoints"\nmode = "0644"\n'
        + f"content = {json.dumps(chr(10).join(NAMES) + chr(10))}\n"
    )
    with update_server_and_controller(updates, tmp_path / "fleet.db") as (controller, services):
        yield Host(controller, services, data)


def _node(fleet: str) -> dict[str, object] | None:
    nodes = request_json("GET", f"{fleet}/v1/nodes")
    return next((n for n in nodes if n["name"] == NODE), None)


def test_a_power_cut_at_every_step_of_an_upgrade_leaves_a_bootable_node(
    two_versions: TwoVersions, host: Host, tmp_path: Path
) -> None:
    v1, v2 = two_versions.old, two_versions.new_commit
    disk = tmp_path / "node.img"
    build_disk(plan_disk(two_versions.repo, v1.commit, disk, size=2048 * MIB), PlainReporter())
    consoles: list[str] = []

    def power_on(n: int) -> Machine:
        spec = BootSpec(
            disk,
            Firmware.UEFI,
            user_data=host.user_data,
            host_services=host.services,
            state_dir=tmp_path / f"power-on-{n}",
        )
        return Machine(spec)

    def keep(vm: Machine) -> str:
        console = vm.console_log.read_text(errors="replace")
        consoles.append(console)
        (tmp_path / f"console-{len(consoles)}.log").write_text(console)
        return console

    pool = {
        "pool": {"name": "pc", "version": two_versions.new_version, "previous_version": v1.version},
        "strategy": {"max_unavailable": 1, "reboot": "full"},  # this test's subject
    }
    for n, failpoint in enumerate(NAMES, start=1):
        with power_on(n) as vm:
            vm.wait_ready(READY_TIMEOUT)
            if n == 1:
                deadline = time.monotonic() + READY_TIMEOUT
                while _node(host.fleet) is None:
                    assert time.monotonic() < deadline, "the node did not register"
                    time.sleep(1.0)
                request_json("PUT", f"{host.fleet}/v1/pools/pc", pool)
            line = vm.wait_for(f"atoll-failpoint: {failpoint}", STEP_TIMEOUT)
            if line is None:
                keep(vm)
                pytest.fail(f"power-on {n}: no failpoint {failpoint}:\n" + "\n".join(
                    consoles[-1].splitlines()[-40:]
                ))  # fmt: skip
            vm.power_cut()
            keep(vm)
    with power_on(len(NAMES) + 1) as vm:
        vm.wait_ready(READY_TIMEOUT)
        confirmed = vm.wait_for("is healthy: confirmed", STEP_TIMEOUT)
        blessed = vm.wait_for("boot entry blessed", 180.0) if confirmed else None
        deadline = time.monotonic() + 180.0
        node = _node(host.fleet)
        while node is None or node.get("current") != two_versions.new_version:
            if time.monotonic() > deadline:
                break
            time.sleep(2.0)
            node = _node(host.fleet)
        pool_status = request_json("GET", f"{host.fleet}/v1/pools/pc")["status"]
        vm.stop()
        keep(vm)
    assert confirmed is not None, "no confirmed trial:\n" + "\n".join(
        consoles[-1].splitlines()[-40:]
    )
    assert blessed is not None and "+" not in blessed.split("blessed:")[1], blessed

    # Every power-on booted a whole deployment: v1 until the ESP held v2, then v2.
    booted = []
    for console in consoles:
        lines = [line for line in console.splitlines() if PREPARE_ROOT in line]
        assert len(lines) == 1, lines
        booted.append(v2 if v2 in lines[0] else v1.commit if v1.commit in lines[0] else lines[0])
    assert booted == [v1.commit, v1.commit, v1.commit, v2, v2], booted
    # The cut before the ESP sync was undone, not held against v2 as a rollback.
    assert "was cut short before its boot entry was written" in consoles[2]
    assert "ROLLBACK" not in "".join(consoles)
    assert "did not reach the agent" not in "".join(consoles)
    # Two trial boots of v2: the first one cut as it began, the second one passed.
    assert "atoll-failpoint: trial:started" in consoles[3]
    assert f"trial of {two_versions.new_version}: boot 2" in consoles[4]
    # The fleet saw the node arrive on v2, healthy, and nothing failed.
    assert node is not None and node.get("current") == two_versions.new_version, node
    assert pool_status.get("failed") == 0 and pool_status.get("updated") == 1, pool_status
    # What is left on the disk: v2 (default, blessed) and v1 (the rollback entry).
    entries = boot_entries(disk)
    assert len(entries) == 2, entries

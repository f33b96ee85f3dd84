"""A booted node follows the fleet: signed pull, staged deploy, reboot when granted, new version.

Real everything: the node boots under qemu (UEFI, systemd-boot) from v1 with
first-boot user data naming the controller, the update server and the
trusted key; the controller (embedded store) and the update server run on
127.0.0.1 and the node reaches them through qemu's guest forwards. A pool asks
for v2: the node's agent pulls and verifies v2, deploys it beside v1, reboots
when the controller grants it and comes back on v2.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.agent.fleet_client import request_json
from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.fleet.server import FleetService
from atoll.fleet.store import Store
from atoll.progress import PlainReporter
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish
from atoll.publish.serve import serve_in_thread
from atoll.tools.qemu import HOST_SERVICES_ADDRESS, HostService
from tests.vm.conftest import READY_TIMEOUT, TwoVersions

CONTROLLER_PORT = 9443  # as the guest sees them, on HOST_SERVICES_ADDRESS
UPDATES_PORT = 8080
ROLLOUT_TIMEOUT = 900.0


@dataclass(frozen=True)
class Site:
    controller: str  # on the host
    disk: Path
    user_data: Path
    services: tuple[HostService, ...]


@pytest.fixture(scope="module")
def site(two_versions: TwoVersions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("fleet-node")
    keys = work / "keys"
    init_keys(keys)
    key = load_private_key(keys / "atoll-ed25519.key")
    updates = work / "updates"
    updates.mkdir()
    reporter = PlainReporter()
    for commit in (two_versions.old.commit, two_versions.new_commit):
        publish(two_versions.repo, commit, updates, "stable", key, reporter, deltas=0)
    server = serve_in_thread(updates)
    store = Store(work / "fleet.db")
    fleet = FleetService(store, "127.0.0.1", 0, tick=0.2)
    fleet.start()
    pub = base64.b64encode((keys / "atoll-ed25519.pub").read_bytes()).decode()
    user_data = work / "node.toml"
    user_data.write_text(
        f"""[node]
hostname = "node-1"
[fleet]
controller = "http://{HOST_SERVICES_ADDRESS}:{CONTROLLER_PORT}"
interval = 2
labels = {{ zone = "a" }}
[updates]
server = "http://{HOST_SERVICES_ADDRESS}:{UPDATES_PORT}"
[[files]]
path = "/etc/atoll/trusted-keys.d/test.pub"
content = "{pub}"
encoding = "base64"
"""
    )
    disk = work / "node.img"
    build_disk(
        plan_disk(two_versions.repo, two_versions.old.commit, disk, size=2048 * MIB), reporter
    )
    services = (
        HostService(CONTROLLER_PORT, fleet.address[1]),
        HostService(UPDATES_PORT, server.server_address[1]),
    )
    try:
        yield Site(f"http://127.0.0.1:{fleet.address[1]}", disk, user_data, services)
    finally:
        fleet.stop()
        store.close()
        server.shutdown()
        server.server_close()


def test_node_upgrades_through_the_fleet_and_comes_back_on_the_new_version(
    site: Site, two_versions: TwoVersions
) -> None:
    pool = {
        "pool": {
            "name": "vm",
            "version": two_versions.new_version,
            "previous_version": two_versions.old.version,
        },
        "strategy": {"max_unavailable": 1},
    }
    request_json("PUT", f"{site.controller}/v1/pools/vm", pool)
    spec = BootSpec(
        site.disk,
        Firmware.UEFI,
        user_data=site.user_data,
        snapshot=True,
        host_services=site.services,
    )
    with Machine(spec) as vm:
        vm.wait_ready(READY_TIMEOUT)
        deadline = time.monotonic() + ROLLOUT_TIMEOUT
        node: dict[str, object] = {}
        while time.monotonic() < deadline:
            vm.poll()  # also powers the VM on again when the guest reboots
            nodes = {n["name"]: n for n in request_json("GET", f"{site.controller}/v1/nodes")}
            node = nodes.get("node-1", {})
            if node.get("current") == two_versions.new_version and node.get("healthy"):
                break
            time.sleep(2)
        console = vm.console_log.read_text(errors="replace")
        reboots = vm.reboots
        assert node.get("current") == two_versions.new_version, (
            f"node: {node}; console tail:\n" + "\n".join(console.splitlines()[-40:])
        )
    # Two boots on one console: v1 first, then the deployment of v2 (prepare-root names it).
    boots = [line for line in console.splitlines() if "atoll-prepare-root: booting" in line]
    assert len(boots) == 2, boots
    assert two_versions.old.commit in boots[0]
    assert two_versions.new_commit in boots[1]
    assert console.count("ATOLL-READY") == 2
    assert reboots == 1
    status = request_json("GET", f"{site.controller}/v1/pools/vm")["status"]
    assert status["updated"] == 1, status

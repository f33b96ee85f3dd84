"""Upgrades restart userspace only when they keep the kernel, on a real node.

One UEFI node (systemd-boot, real ostree, the agent following a signed channel
served from the host, a real fleet controller on SQLite; the pool says
``reboot = "auto"``) on a disk that is *not* a snapshot:

0. 0.9.0 (Debian's point release alone) -> 1.0.0 (with -security: a newer
   kernel): a full reboot, and the agent says it is the kernel that changed.
   (On a day when -security has no newer kernel, this step is a soft-reboot
   and the test warns that the kernel change went untested.)
1. 1.0.0 -> 1.0.1 with the ``restart:soft`` failpoint armed: the agent asks for
   the soft-reboot and the power is cut while systemd carries it out. The next
   power-on boots a whole deployment through the firmware: 1.0.1, the ESP's
   default since before the soft-reboot, under the trial rules (counted boot,
   confirmed, blessed).
2. 1.0.1 -> 1.0.2, a release with a unit that always fails: a soft-reboot into
   it, its trial fails, the agent rolls back with a soft-reboot into 1.0.1
   and says so; the fleet sees the node back on 1.0.1.
3. 1.0.1 -> 1.0.3: a soft-reboot, the trial confirmed, 1.0.3's boot entry
   blessed (its counter was never consumed by the firmware).

Steps 2 and 3 happen within one firmware boot: the console of that power-on
shows one kernel, and the roots entered: 1.0.1 by the firmware, then 1.0.2,
1.0.1 and 1.0.3 by soft-reboots.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.compose import compose
from atoll.demo import AGENT_PORT, user_data
from atoll.disk import boot_entries, build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.ops.client import NodeClient
from atoll.pki import Kind, Role
from atoll.pki import init as pki_init
from atoll.pki import issue as pki_issue
from atoll.progress import PlainReporter
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish
from atoll.tools import ostree
from atoll.tools.qemu import HostService
from atoll.wire.fleet import request_json
from tests.conftest import DEFAULT_MANIFEST, TEST_CACHE, TEST_EPOCH
from tests.vm.conftest import (
    PREPARE_ROOT,
    READY_TIMEOUT,
    TwoVersions,
    entered_roots,
    update_server_and_controller,
)
from tests.vm.test_agent_rollback import BROKEN_UNIT

# Two composes, two UEFI power-ons, three upgrades (pull, deploy, restart, trial) under TCG.
pytestmark = pytest.mark.timeout(2700)

NODE = "node-soft"
POOL = "soft"
KERNEL = "Linux version "
STEP_TIMEOUT = 600.0  # one upgrade: report, pull, deploy, ESP sync, restart
TRIAL_TIMEOUT = 420.0  # from the restart to the trial's verdict


@dataclass(frozen=True)
class Releases:
    point: tuple[str, str]  # 0.9.0, Debian's point release alone: version, commit
    two: TwoVersions  # 1.0.0 (with -security and -updates: the newer kernel) and 1.0.1
    broken: tuple[str, str]  # 1.0.2
    fixed: tuple[str, str]  # 1.0.3
    kernels: tuple[str, str]  # 0.9.0's, 1.0.0's


@pytest.fixture(scope="module")
def releases(two_versions: TwoVersions, tmp_path_factory: pytest.TempPathFactory) -> Releases:
    work = tmp_path_factory.mktemp("soft-releases")
    made: list[tuple[str, str]] = []
    for version, extra in (
        ("0.9.0", "[distribution]\nupdates = false\n"),
        (
            "1.0.2",
            '[[files]]\npath = "/usr/lib/systemd/system/atoll-broken.service"\n'
            f"content = {json.dumps(BROKEN_UNIT)}\n",
        ),
        ("1.0.3", '[[files]]\npath = "/usr/lib/atoll/site-marker"\ncontent = "1.0.3"\n'),
    ):
        site = work / f"{version}.toml"
        site.write_text(
            f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "minimal"\n'
            f'version = "{version}"\n{extra}'
        )
        new = compose(
            site, two_versions.repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH
        )
        made.append((new.version, new.commit))
    kernels = (
        str(ostree.commit_metadata(two_versions.repo, c, ["atoll.kernel"])["atoll.kernel"])
        for c in (made[0][1], two_versions.old.commit)
    )
    return Releases(made[0], two_versions, made[1], made[2], (next(kernels), next(kernels)))


@dataclass(frozen=True)
class Host:
    fleet: str
    services: tuple[HostService, ...]
    user_data: Path
    pki: Path


@pytest.fixture
def host(releases: Releases, tmp_path: Path) -> Iterator[Host]:
    reporter = PlainReporter()
    keys = tmp_path / "keys"
    init_keys(keys)
    key = load_private_key(keys / "atoll-ed25519.key")
    updates = tmp_path / "updates"
    two = releases.two
    commits = (releases.point[1], two.old.commit, two.new_commit)
    for commit in (*commits, releases.broken[1], releases.fixed[1]):
        # One delta, from the version before: the point release's to every later one
        # would cost minutes (the kernel and many packages differ); others pull objects.
        publish(two.repo, commit, updates, "stable", key, reporter, deltas=1)
    pki = tmp_path / "pki"
    pki_init(pki)
    pki_issue(pki, "test-admin", kind=Kind.CLIENT, role=Role.ADMIN)
    data = tmp_path / "node.toml"
    data.write_text(
        user_data(NODE, "stable", (keys / "atoll-ed25519.pub").read_bytes(), pki)
        + '\n[[files]]\npath = "/etc/atoll/failpoints"\nmode = "0644"\n'
        + 'content = "restart:soft\\n"\n'
    )
    with update_server_and_controller(updates, tmp_path / "fleet.db") as (controller, services):
        yield Host(controller, services, data, pki)


def _node(fleet: str) -> dict[str, object] | None:
    nodes = request_json("GET", f"{fleet}/v1/nodes")
    return next((n for n in nodes if n["name"] == NODE), None)


def _wait_current(fleet: str, version: str, timeout: float) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout
    node = _node(fleet)
    while (node is None or node.get("current") != version) and time.monotonic() < deadline:
        time.sleep(2.0)
        node = _node(fleet)
    return node


def _roll(fleet: str, version: str, previous: str) -> None:
    spec = {
        "pool": {"name": POOL, "version": version, "previous_version": previous},
        "strategy": {"max_unavailable": 1, "reboot": "auto"},
    }
    request_json("PUT", f"{fleet}/v1/pools/{POOL}", spec)


def test_upgrades_that_keep_the_kernel_soft_reboot_and_keep_the_trial_rules(
    releases: Releases, host: Host, tmp_path: Path
) -> None:
    two = releases.two
    (v0, v0c_), v1, v2 = releases.point, two.old.version, two.new_version
    (v3, v3c_), (v4, v4c_) = releases.broken, releases.fixed
    old_kernel, new_kernel = releases.kernels
    if old_kernel == new_kernel:
        warnings.warn(
            f"Debian's point release and -security have the same kernel ({old_kernel}) "
            "today: the upgrade to 1.0.0 cannot show a kernel change forcing a full reboot",
            stacklevel=1,
        )
    disk = tmp_path / "node.img"
    build_disk(plan_disk(two.repo, v0c_, disk, size=2048 * MIB), PlainReporter())

    def power_on(n: int) -> Machine:
        spec = BootSpec(
            disk,
            Firmware.UEFI,
            user_data=host.user_data,
            host_services=host.services,
            guest_ports=(AGENT_PORT,),
            state_dir=tmp_path / f"power-on-{n}",
        )
        return Machine(spec)

    def agent_status(vm: Machine, path: str = "/v1/status") -> Any:
        """The node's ``GET /v1/status`` (last restart) or ``/v1/health``, or why not."""
        client = NodeClient(
            f"https://127.0.0.1:{vm.host_port(AGENT_PORT)}",
            host.pki / "ca.crt",
            host.pki / "clients/test-admin.crt",
            host.pki / "clients/test-admin.key",
        )
        try:
            return client.request("GET", path)
        except Exception as e:  # a diagnostic: the assertion it serves says the rest
            return f"GET {path}: {e}"

    def console(vm: Machine, n: int) -> str:
        text = vm.console_log.read_text(errors="replace")
        (tmp_path / f"console-{n}.log").write_text(text)
        return text

    def tail(text: str) -> str:
        return "\n".join(text.splitlines()[-50:])

    # 0. 0.9.0 -> 1.0.0: another kernel, so a full reboot, and the agent says why.
    with power_on(1) as vm:
        vm.wait_ready(READY_TIMEOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while _node(host.fleet) is None:
            assert time.monotonic() < deadline, "the node did not register"
            time.sleep(1.0)
        _roll(host.fleet, v1, v0)
        restart = vm.wait_for(f"upgrade to {v1}: ", STEP_TIMEOUT)
        on_v1 = vm.wait_for(f"{v1} is healthy: confirmed", STEP_TIMEOUT) if restart else None
        assert on_v1 is not None, tail(console(vm, 1))
        assert restart is not None
        if old_kernel != new_kernel:
            assert restart.rstrip().endswith(
                f"full reboot into {v1} ({two.old.commit[:12]}): "
                f"kernel changed {old_kernel} -> {new_kernel}"
            ), restart

        # 1. The power goes while systemd carries out the soft-reboot into 1.0.1.
        _roll(host.fleet, v2, v1)
        asked = vm.wait_for("soft reboot into", STEP_TIMEOUT)
        fired = vm.wait_for("atoll-failpoint: restart:soft", 60.0) if asked else None
        vm.power_cut()
        first = console(vm, 1)
    assert asked is not None and fired is not None, tail(first)
    assert asked.rstrip().endswith(
        f"upgrade to {v2}: soft reboot into {v2} ({two.new_commit[:12]}): same kernel and arguments"
    ), asked

    with power_on(2) as vm:
        vm.wait_ready(READY_TIMEOUT)
        trial = vm.wait_for(f"trial of {v2}: boot", TRIAL_TIMEOUT)
        confirmed = vm.wait_for(f"{v2} is healthy: confirmed", TRIAL_TIMEOUT) if trial else None
        blessed = vm.wait_for("boot entry blessed", 180.0) if confirmed else None
        on_v2 = _wait_current(host.fleet, v2, 180.0)
        assert confirmed is not None and blessed is not None, tail(console(vm, 2))
        assert on_v2 is not None and on_v2.get("current") == v2, on_v2

        # 2. The broken release: a soft-reboot into it, a failed trial, a soft-reboot back.
        _roll(host.fleet, v3, v2)
        into_v3 = vm.wait_for(f"soft reboot into {v3}", STEP_TIMEOUT)
        rollback = vm.wait_for(f"ROLLBACK from {v3} to {v2}", TRIAL_TIMEOUT) if into_v3 else None
        back = vm.wait_for(f"soft reboot into {v2}", 300.0) if rollback else None
        settled = vm.wait_for(f"back on {v2} after the rollback", TRIAL_TIMEOUT) if back else None
        assert settled is not None, tail(console(vm, 2))
        assert back is not None and "rollback: " in back, back
        node = _wait_current(host.fleet, v2, 180.0)
        assert node is not None and node.get("current") == v2, node
        # Healthy after the soft-reboot back (the next upgrade depends on it).
        deadline = time.monotonic() + 120.0
        record = agent_status(vm, "/v1/health")
        while not (isinstance(record, dict) and record.get("healthy")):
            assert time.monotonic() < deadline, record
            time.sleep(5.0)
            record = agent_status(vm, "/v1/health")

        # 3. The fixed release, once the pool is resumed: soft, confirmed, blessed.
        _roll(host.fleet, v4, v2)
        request_json("POST", f"{host.fleet}/v1/pools/{POOL}/resume", {})
        into_v4 = vm.wait_for(f"soft reboot into {v4}", STEP_TIMEOUT)
        confirmed = vm.wait_for(f"{v4} is healthy: confirmed", TRIAL_TIMEOUT) if into_v4 else None
        blessed = vm.wait_for("boot entry blessed", 180.0) if confirmed else None
        on_v4 = _wait_current(host.fleet, v4, 180.0)
        status = agent_status(vm)
        vm.stop()
        second = console(vm, 2)
    assert confirmed is not None and blessed is not None, (tail(second), status)
    assert on_v4 is not None and on_v4.get("current") == v4, (on_v4, status)
    restart = status["restart"]
    assert (restart["kind"], restart["reason"]) == ("soft", "same kernel and arguments"), restart
    assert (restart["policy"], restart["into_version"]) == ("auto", v4), restart

    # The cut soft-reboot: the next power-on booted 1.0.1 whole, as a counted trial boot;
    # then 1.0.2, 1.0.1 again and 1.0.3, each entered by a soft-reboot, in one kernel boot.
    v0c, v1c, v2c, v3c, v4c = (c[:12] for c in (v0c_, two.old.commit, two.new_commit, v3c_, v4c_))
    # 0.9.0 booted; 1.0.0 booted by the firmware after the kernel change (entered by a
    # soft-reboot if the kernels are the same today); 1.0.1 asked for, and cut.
    kernel_boots = 2 if old_kernel != new_kernel else 1
    assert first.count(PREPARE_ROOT) == kernel_boots and first.count(KERNEL) == kernel_boots
    assert entered_roots(first) == [v0c, v1c, v2c], entered_roots(first)
    assert entered_roots(second) == [v2c, v3c, v2c, v4c], entered_roots(second)
    assert f"trial of {v2}: boot 1" in second
    assert second.count(KERNEL) == 1, second.count(KERNEL)
    assert "did not switch root" not in first + second
    # The userspace entered each time is the release's own.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", second)  # systemd colours its welcome
    for version in (v3, v4):
        assert f"Welcome to atoll minimal {version} (" in plain, version
    # 1.0.3's entry blessed: the firmware never consumed its counter (it got one at the
    # ESP sync), the agent dropped it; beside it only the rollback entry (1.0.1).
    entries = boot_entries(disk)
    assert len(entries) == 2, entries
    newest = next(e for e in entries if f"minimal {v4} " in e.title)
    assert (newest.tries_left, newest.tries_done) == (None, None), newest
    assert blessed.rstrip().endswith(f"blessed: {newest.id}.conf"), (blessed, newest)

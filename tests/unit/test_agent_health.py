"""Health checks and the upgrade trial: confirm, roll back, fall back (fake time, fake ostree)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import markers
from atoll.agent.deployments import DeploymentError, Deployments
from atoll.agent.health import (
    HEALTH,
    Check,
    HealthConfig,
    HealthConfigError,
    Monitor,
    Outcome,
    check_containerd,
    check_systemd,
    check_var_space,
    load_config,
    main,
    user_checks,
)
from atoll.agent.markers import Pending, TrialState
from atoll.agent.server import Agent, AgentConfig, ApiError, Identity, Role
from atoll.agent.update_loop import read_health
from tests.unit.test_agent_deployments import AFTER_REBOOT, BOOTED_ONLY, NEW, OLD, PENDING

# -- the checks ----------------------------------------------------------------


def answers(table: dict[str, tuple[int, str]]) -> Any:
    """A probe answering argv (joined) from ``table``; unknown argv fail loudly."""

    def probe(argv: Sequence[str]) -> tuple[int, str]:
        return table[" ".join(argv)]

    return probe


IS_RUNNING = "systemctl is-system-running"
FAILED = "systemctl list-units --state=failed --plain --no-legend --no-pager"
FAILED_LINE = "atoll-broken.service loaded failed failed always fails\n"
USERSPACE = "systemctl show --property=UserspaceTimestampMonotonic"
STAMPS = "systemctl show --property=Id --property=StateChangeTimestampMonotonic --"
BROKEN_STAMP = "Id=atoll-broken.service\nStateChangeTimestampMonotonic={at}\n"
FAILS = "degraded; failed: atoll-broken.service"


@pytest.mark.parametrize(
    ("state", "failed", "ignore", "ok", "definite"),
    [
        ("running", "", (), True, False),
        ("starting", "", (), False, False),
        ("starting", FAILED_LINE, (), False, False),  # a restart may still fix it
        ("degraded", FAILED_LINE, (), False, True),
        ("degraded", FAILED_LINE, ("atoll-broken.service",), True, False),
        ("maintenance", "", (), False, False),
        ("", "", (), False, False),  # no answer at all
    ],
)
def test_systemd_check(
    state: str, failed: str, ignore: tuple[str, ...], ok: bool, definite: bool
) -> None:
    probe = answers(
        {
            IS_RUNNING: (0 if state == "running" else 1, state),
            FAILED: (0, failed),
            USERSPACE: (0, "UserspaceTimestampMonotonic=5000000\n"),
            STAMPS + " atoll-broken.service": (0, BROKEN_STAMP.format(at=9000000)),
        }
    )
    check = check_systemd(probe, ignore)
    assert (check.ok, check.definite) == (ok, definite)
    assert check.detail.startswith(state or "unknown")
    if failed and not ignore:
        assert "atoll-broken.service" in check.detail


@pytest.mark.parametrize(
    ("userspace", "stamps", "ok", "detail"),
    [
        # Failed in the userspace a soft-reboot ended (carried over): not this boot's.
        (
            "5000000",
            BROKEN_STAMP.format(at=4000000)
            + "\nId=udev.service\nStateChangeTimestampMonotonic=6\n",
            True,
            "degraded; failed before this userspace began: atoll-broken.service",
        ),
        # Failed in this userspace: a failure.
        (
            "5000000",
            BROKEN_STAMP.format(at=6000000),
            False,
            "degraded; failed: atoll-broken.service",
        ),
        # Stamps systemd could not give: counted, the conservative answer.
        ("", BROKEN_STAMP.format(at=1), False, "degraded; failed: atoll-broken.service"),
        ("0", BROKEN_STAMP.format(at=1), False, "degraded; failed: atoll-broken.service"),
        ("5000000", "Id=atoll-broken.service\n", False, "degraded; failed: atoll-broken.service"),
        ("5000000", "", False, "degraded; failed: atoll-broken.service"),
    ],
)
def test_a_unit_failed_before_a_soft_reboot_is_not_this_boots_failure(
    userspace: str, stamps: str, ok: bool, detail: str
) -> None:
    probe = answers(
        {
            IS_RUNNING: (1, "degraded"),
            FAILED: (0, FAILED_LINE),
            USERSPACE: (0, f"UserspaceTimestampMonotonic={userspace}\n"),
            STAMPS + " atoll-broken.service": (0, stamps),
        }
    )
    check = check_systemd(probe)
    assert (check.ok, check.detail) == (ok, detail)


def test_containerd_check(tmp_path: Path) -> None:
    assert check_containerd(answers({}), tmp_path) == Check("containerd", True, "not in the image")
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/ctr").touch()
    down = answers({"ctr version": (1, 'ctr: failed to dial "/run/containerd/containerd.sock"')})
    check = check_containerd(down, tmp_path)
    assert not check.ok and "exit 1" in check.detail and "failed to dial" in check.detail
    up = "Client:\n  Version:  1.6.20\n\nServer:\n  Version:  1.6.20~ds1\n  UUID: x\n"
    assert check_containerd(answers({"ctr version": (0, up)}), tmp_path).detail == (
        "answers (server 1.6.20~ds1)"
    )


def test_var_space_check_uses_the_real_filesystem(tmp_path: Path) -> None:
    assert check_var_space(tmp_path, 0, 0).ok
    full = check_var_space(tmp_path, 1 << 40, 0)  # a TiB free: not on this machine
    assert not full.ok and "MiB free" in full.detail
    assert not check_var_space(tmp_path / "missing", 0, 0).ok


def test_user_checks_etc_overrides_usr_and_only_executables_count(tmp_path: Path) -> None:
    """The checks' answers come from a fake probe here (run for real in
    tests/integration/test_agent_command.py)."""
    for directory, name, mode in (
        ("usr/lib/atoll/health.d", "10-disk", 0o755),
        ("etc/atoll/health.d", "10-disk", 0o755),  # overrides the vendor one
        ("usr/lib/atoll/health.d", "20-app", 0o755),
        ("etc/atoll/health.d", "30-notes", 0o644),  # not executable: not a check
    ):
        path = tmp_path / directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(mode)
    ran: list[str] = []

    def probe(argv: Sequence[str]) -> tuple[int, str]:
        ran.append(str(Path(argv[0]).relative_to(tmp_path)))
        return (0, "site ok\n") if "10-disk" in argv[0] else (3, "starting\napp down\n")

    assert user_checks(tmp_path, probe) == [
        Check("user:10-disk", True, "site ok"),
        Check("user:20-app", False, "exit 3: app down"),
    ]
    assert ran == ["etc/atoll/health.d/10-disk", "usr/lib/atoll/health.d/20-app"]


def test_config_is_validated_naming_the_key(tmp_path: Path) -> None:
    assert load_config(tmp_path) == HealthConfig()
    path = tmp_path / "etc/atoll/health.toml"
    path.parent.mkdir(parents=True)
    path.write_text('grace_seconds = 120\nmax_boots = 2\nignore_units = ["a.service"]\n')
    assert load_config(tmp_path) == HealthConfig(
        grace_seconds=120.0, max_boots=2, ignore_units=("a.service",)
    )
    for text, message in (
        ("grace = 1\n", "grace: unknown key"),
        ("max_boots = 0\n", "max_boots: 0 must be"),
        ("interval_seconds = true\n", "interval_seconds: True must be"),
        ("ignore_units = 3\n", "ignore_units: expected"),
        ("[x\n", "health.toml"),
    ):
        path.write_text(text)
        with pytest.raises(HealthConfigError, match=message):
            load_config(tmp_path)


# -- the trial state machine -----------------------------------------------------

# After the monitor's rollback from the booted NEW: OLD deployed again as the default.
ROLLED_BACK_STATUS = f"""  atoll {OLD}.1 (pending)
    Version: 1.0.0
* atoll {NEW}.0
    Version: 1.1.0
  atoll {OLD}.0 (rollback)
    Version: 1.0.0
"""
BACK_ON_OLD = f"""* atoll {OLD}.1
    Version: 1.0.0
  atoll {NEW}.0 (rollback)
    Version: 1.1.0
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Node:
    """A node on the host: recorded ostree, scripted check rounds, fake time and boot id."""

    root: Path
    status: str = AFTER_REBOOT
    rounds: list[list[Check]] = field(default_factory=list)  # the last one repeats
    calls: list[list[str]] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)
    blessed: int = 0
    boot: str = "boot-2"
    fail: str = ""  # argv prefix that fails
    clock: FakeClock = field(default_factory=FakeClock)

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        self.calls.append(list(argv))
        if self.fail and " ".join(argv).startswith(self.fail):
            raise DeploymentError(f"{' '.join(argv)} exited 1: boom")
        if list(argv) == ["ostree", "admin", "status"]:
            return self.status
        if argv[:3] == ["ostree", "admin", "deploy"] and argv[-1] == OLD:
            self.status = ROLLED_BACK_STATUS
        if argv[:3] == ["ostree", "admin", "undeploy"]:
            self.status = BOOTED_ONLY
        if argv[:3] == ["ostree", "admin", "deploy"] and argv[-1] == NEW:
            self.status = PENDING
        return ""

    def checks(self) -> list[Check]:
        return self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0]

    def bless(self) -> str | None:
        self.blessed += 1
        return "ostree-2-atoll.conf"

    def deployments(self) -> Deployments:
        return Deployments(self.run, lambda: None, root=self.root, boot_id=lambda: self.boot)

    def monitor(self, config: HealthConfig | None = None) -> Monitor:
        return Monitor(
            root=self.root,
            deployments=self.deployments(),
            checks=self.checks,
            config=config or HealthConfig(grace_seconds=60, interval_seconds=5, settle_rounds=3),
            clock=self.clock,
            record=lambda **f: self.audit.append(f),
            bless=self.bless,
            boot_id=lambda: self.boot,
            now=lambda: "2026-11-23T10:00:00+00:00",
            log=lambda _: None,
        )

    def changes(self) -> list[list[str]]:
        return [c for c in self.calls if c != ["ostree", "admin", "status"]]

    def marker(self) -> Pending | None:
        return markers.read_pending(self.root / markers.PENDING)

    def health(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads((self.root / HEALTH).read_text())
        return record

    def what(self) -> list[str]:
        return [str(r["what"]) for r in self.audit]


GOOD = [
    Check("systemd", True, "running"),
    Check("containerd", True, "answers"),
    Check("agent", True, "ok"),
]
STARTING = [Check("systemd", False, "starting"), *GOOD[1:]]
BROKEN = [Check("systemd", False, "degraded; failed: atoll-broken.service", definite=True)]
NO_CONTAINERD = [GOOD[0], Check("containerd", False, "exit 1: failed to dial"), GOOD[2]]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    yield Node(tmp_path / "root")


def staged(node: Node, boot: str = "boot-1") -> None:
    """The API's upgrade on the old deployment, in ``boot``: writes the marker."""
    node.status, node.boot = BOOTED_ONLY, boot
    node.deployments().upgrade(NEW)
    node.status, node.boot = AFTER_REBOOT, "boot-2"  # the reboot into NEW


def test_an_upgrade_records_the_marker_and_an_operator_rollback_removes_it(node: Node) -> None:
    staged(node)
    assert node.marker() == Pending(
        new=NEW,
        previous=OLD,
        new_version="1.1.0",
        previous_version="1.0.0",
        staged_boot="boot-1",
    )
    node.status = PENDING  # not rebooted yet: the operator cancels the upgrade
    node.deployments().rollback()
    assert node.changes()[-1] == ["ostree", "admin", "undeploy", "0"]
    assert node.marker() is None


def test_no_marker_no_trial_and_a_healthy_boot_is_blessed_once(node: Node) -> None:
    node.rounds = [GOOD]
    monitor = node.monitor()
    assert monitor.settle() is Outcome.NO_TRIAL
    monitor.round()
    assert node.blessed == 1
    assert node.health()["healthy"] and node.health()["trial"] is None
    assert node.changes() == [] and node.audit == []
    assert read_health(node.root) == (True, False)


def test_a_healthy_new_deployment_is_confirmed(node: Node) -> None:
    staged(node)
    node.rounds = [STARTING, STARTING, GOOD]
    assert node.monitor().settle() is Outcome.CONFIRMED
    assert node.clock.now == 1010.0  # two intervals of fake time
    assert node.marker() is None
    assert node.what() == ["health: trial started", "health: confirmed"]
    assert node.changes() == [["ostree", "admin", "deploy", NEW]]  # no rollback
    assert node.blessed == 1
    assert node.health()["healthy"] and not node.health()["rolled_back"]


def test_a_definitely_broken_new_deployment_rolls_back_and_reboots(node: Node) -> None:
    staged(node)
    node.rounds = [STARTING, BROKEN]
    assert node.monitor().settle() is Outcome.ROLLED_BACK
    assert node.changes()[1:] == [
        ["ostree", "admin", "deploy", "--retain", OLD],
        ["systemctl", "reboot"],
    ]
    assert node.clock.now == 1015.0  # three broken rounds in a row, not the whole grace
    marker = node.marker()
    assert marker is not None and marker.state is TrialState.ROLLED_BACK
    assert "atoll-broken.service" in marker.reason
    assert node.blessed == 0  # never bless a failed trial
    assert node.health()["rolled_back"] and not node.health()["healthy"]
    assert node.audit[-1]["what"] == "health: rollback"
    assert node.audit[-1]["params"]["from"] == NEW and node.audit[-1]["params"]["to"] == OLD
    # The next boot comes up on the old commit: done, and the fleet hears it failed.
    node.status, node.boot, node.rounds = BACK_ON_OLD, "boot-3", [GOOD]
    assert node.monitor().settle() is Outcome.RECOVERED
    assert node.marker() is None
    assert node.health()["rollback"]["reason"] == marker.reason
    assert read_health(node.root) == (True, True)
    assert node.what()[-1] == "health: rollback complete"


def test_a_new_deployment_not_healthy_within_the_grace_period_rolls_back(node: Node) -> None:
    staged(node)
    node.rounds = [NO_CONTAINERD]  # never definite, never passing
    assert node.monitor().settle() is Outcome.ROLLED_BACK
    assert node.clock.now == 1060.0
    marker = node.marker()
    assert marker is not None and marker.reason.startswith("not healthy within 60 s")
    assert "containerd: exit 1" in marker.reason


def test_boots_are_counted_once_per_boot_and_too_many_roll_back(node: Node) -> None:
    staged(node)
    config = HealthConfig(grace_seconds=10, interval_seconds=5, max_boots=2)
    node.rounds = [STARTING]
    # The agent is restarted twice in one boot (stopped mid-trial): still boot 1.
    for _ in range(2):
        monitor = node.monitor(config)
        monitor.stop.set()
        assert monitor.settle() is Outcome.STOPPED
        marker = node.marker()
        assert marker is not None and (marker.state, marker.boots) == (TrialState.TRIAL, 1)
    node.boot = "boot-3"  # hung, reset by a watchdog or a power cycle
    monitor = node.monitor(config)
    monitor.stop.set()
    assert monitor.settle() is Outcome.STOPPED
    node.boot = "boot-4"
    assert node.monitor(config).settle() is Outcome.ROLLED_BACK
    marker = node.marker()
    assert marker is not None and marker.reason.startswith("3 boots into")
    assert node.clock.now == 1000.0  # no checks were waited for


def test_a_rollback_cut_short_is_done_again_at_the_next_boot(node: Node) -> None:
    staged(node)
    markers.write_pending(
        node.root / markers.PENDING,
        Pending(NEW, OLD, state=TrialState.ROLLED_BACK, boots=1, reason="broken"),
    )
    node.rounds = [GOOD]  # the decision stands even if the node now looks fine
    assert node.monitor().settle() is Outcome.ROLLED_BACK
    assert node.changes()[-2:] == [
        ["ostree", "admin", "deploy", "--retain", OLD],
        ["systemctl", "reboot"],
    ]


def test_a_reboot_cut_short_by_the_shutdown_still_counts_as_rolled_back(node: Node) -> None:
    staged(node)
    node.rounds, node.fail = [BROKEN], "systemctl reboot"
    assert node.monitor().settle() is Outcome.ROLLED_BACK
    assert node.changes()[-1] == ["systemctl", "reboot"]


def test_a_failed_rollback_does_not_reboot(node: Node) -> None:
    staged(node)
    node.rounds, node.fail = [BROKEN], "ostree admin deploy --retain " + OLD
    assert node.monitor().settle() is Outcome.ROLLBACK_FAILED
    assert ["systemctl", "reboot"] not in node.calls
    assert node.audit[-1]["result"] == "failed" and "boom" in node.audit[-1]["params"]["error"]


def test_waiting_for_the_reboot_changes_nothing(node: Node) -> None:
    staged(node, boot="boot-2")  # the agent restarts in the boot that staged
    node.status, node.rounds = PENDING, [GOOD]
    assert node.monitor().settle() is Outcome.WAITING
    marker = node.marker()
    assert marker is not None and marker.state is TrialState.STAGED
    assert node.changes() == [["ostree", "admin", "deploy", NEW]]


def test_a_new_deployment_that_never_reached_the_agent_is_undone(node: Node) -> None:
    staged(node)  # then boot counting fell back to the old entry in boot-2
    node.status, node.rounds = PENDING, [GOOD]
    assert node.monitor().settle() is Outcome.FELL_BACK
    assert node.changes()[-1] == ["ostree", "admin", "undeploy", "0"]
    assert node.marker() is None
    assert "did not reach the agent" in node.health()["rollback"]["reason"]
    assert read_health(node.root) == (True, True)
    # A later upgrade supersedes the rollback's report.
    staged(node, boot="boot-5")
    assert node.health()["rolled_back"] is True  # until the next round...
    node.monitor().round()
    assert read_health(node.root) == (True, False)


def cut_short(node: Node, boot: str = "boot-1") -> None:
    """An upgrade deployed in ``boot`` whose ESP sync never happened (power cut)."""
    node.status, node.boot = BOOTED_ONLY, boot
    node.deployments().run(["ostree", "admin", "deploy", NEW], timeout=1)
    markers.write_pending(
        node.root / markers.PENDING,
        Pending(NEW, OLD, "1.1.0", "1.0.0", staged_boot=boot, state=TrialState.DEPLOYING),
    )
    node.boot = "boot-2"  # the ESP still boots OLD


def test_an_upgrade_cut_short_before_the_esp_sync_is_undone_and_not_held_against_it(
    node: Node,
) -> None:
    cut_short(node)
    node.rounds = [GOOD]
    monitor = node.monitor()
    assert monitor.settle() is Outcome.INTERRUPTED
    assert monitor.decided.is_set()
    assert node.changes()[-1] == ["ostree", "admin", "undeploy", "0"]
    assert node.marker() is None
    # No rollback on record: the update loop may stage the same build again.
    assert not (node.root / markers.ROLLBACK).exists()
    assert node.health()["healthy"] and not node.health()["rolled_back"]
    assert node.what() == ["health: upgrade interrupted"]
    assert node.audit[-1]["result"] == "undone"


def test_a_deploying_marker_in_the_boot_that_wrote_it_waits(node: Node) -> None:
    cut_short(node, boot="boot-2")  # the agent restarted mid-upgrade, no reboot
    node.rounds = [GOOD]
    assert node.monitor().settle() is Outcome.WAITING
    marker = node.marker()
    assert marker is not None and marker.state is TrialState.DEPLOYING


def test_a_new_deployment_booted_before_its_marker_said_staged_is_on_trial(node: Node) -> None:
    cut_short(node)
    node.status = AFTER_REBOOT  # the ESP sync finished, the power went before "staged"
    node.rounds = [GOOD]
    monitor = node.monitor()
    assert monitor.settle() is Outcome.CONFIRMED
    assert monitor.decided.is_set()
    assert node.what() == ["health: trial started", "health: confirmed"]


def test_stale_and_unreadable_markers_are_removed(node: Node) -> None:
    node.rounds = [GOOD]
    markers.write_pending(node.root / markers.PENDING, Pending("ab" * 32, "cd" * 32))
    assert node.monitor().settle() is Outcome.STALE
    assert node.marker() is None
    (node.root / markers.PENDING).write_text('{"new": 1}')
    assert node.monitor().settle() is Outcome.NO_TRIAL
    assert not (node.root / markers.PENDING).exists()
    assert node.what() == ["health: marker unusable"]


# -- the API -----------------------------------------------------------------------


def test_health_route_and_status_serve_the_last_record(node: Node) -> None:
    config = AgentConfig(
        root=node.root,
        audit_path=node.root / "var/lib/atoll/audit.jsonl",
        cert=node.root / "none",
        key=node.root / "none",
        ca=node.root / "none",
        crl=None,
        runner=lambda _: None,
        commands=node.run,
        sync=lambda: None,
    )
    agent = Agent(config)
    who = Identity("vera", Role.VIEWER)
    with pytest.raises(ApiError, match="no check has run yet"):
        agent.health(who, {}, {})
    assert agent.status(who, {}, {})["health"] is None
    node.rounds = [NO_CONTAINERD]
    node.monitor().round()
    record = agent.health(who, {}, {})
    assert record["healthy"] is False and record["checks"][1]["name"] == "containerd"
    summary = agent.status(who, {}, {})["health"]
    assert summary["healthy"] is False and summary["rolled_back"] is False


def test_rounds_are_frequent_until_the_boot_is_healthy_then_seldom(node: Node) -> None:
    node.rounds = [STARTING, GOOD]
    config = HealthConfig(grace_seconds=60, interval_seconds=5, recheck_seconds=60)
    monitor = node.monitor(config)
    assert monitor.settle() is Outcome.NO_TRIAL
    settle_until = node.clock.now + 60
    assert monitor.next_delay(settle_until) == 5  # still starting
    monitor.round()
    assert node.blessed == 1 and monitor.next_delay(settle_until) == 60
    stuck = node.monitor(config)
    node.clock.now = settle_until  # never healthy: back to the slow pace after the grace
    assert stuck.next_delay(settle_until) == 60


def test_the_console_command_refuses_a_bad_config_before_any_check(tmp_path: Path) -> None:
    """(The checks run for real in tests/integration/test_agent_command.py.)"""
    (tmp_path / "etc/atoll").mkdir(parents=True)
    (tmp_path / "etc/atoll/health.toml").write_text("nope = 1\n")
    assert main(["--root", str(tmp_path)]) == 2


def test_the_daemon_loop_keeps_checking_and_survives_a_failing_round(node: Node) -> None:
    config = HealthConfig(interval_seconds=0.5, recheck_seconds=0.5, grace_seconds=10)
    rounds: list[int] = []

    def checks() -> list[Check]:
        rounds.append(1)
        if len(rounds) == 2:
            raise OSError("probe broke")
        return GOOD

    monitor = node.monitor(config)
    monitor.checks = checks
    thread = threading.Thread(target=monitor.run_forever)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(rounds) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        monitor.stop.set()
        thread.join(10)
    assert len(rounds) >= 3 and not thread.is_alive()
    assert node.health()["healthy"] is True


def test_a_round_outside_a_trial_says_when_the_node_turns_unhealthy_and_back(node: Node) -> None:
    node.rounds = [GOOD, NO_CONTAINERD, NO_CONTAINERD, GOOD]
    said: list[str] = []
    monitor = node.monitor()
    monitor.log = said.append
    for _ in range(4):
        monitor.round()
    assert said == [
        "healthy",
        "boot entry blessed: ostree-2-atoll.conf",  # once, on the first healthy round
        "unhealthy: containerd: exit 1: failed to dial",
        "healthy",
    ]


def test_a_round_while_the_node_shuts_down_says_nothing_of_its_health(node: Node) -> None:
    # A reboot the agent asked for stops units and containerd: not an unhealthy node. The
    # last record stands, so the controller (or the Node) never hears "failed" from it.
    stopping = [Check("systemd", False, "stopping"), NO_CONTAINERD[1], GOOD[2]]
    node.rounds = [GOOD, stopping]
    said: list[str] = []
    monitor = node.monitor()
    monitor.log = said.append
    monitor.round()
    before = node.health()
    monitor.round()
    assert node.health() == before and before["healthy"] is True
    assert not any(m.startswith("unhealthy") for m in said), said

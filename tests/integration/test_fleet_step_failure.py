"""No pool waits forever on a node: step failures and the reboot timeout, end to end.

A controller in-process (:class:`FleetService` on a SQLite file, with an
injected clock so timeouts and backoffs pass without waiting) and simulated
agents speaking the real protocol (:class:`atoll.wire.fleet.FleetClient`):

* a node that registers, stages, gets its reboot grant and goes silent is
  stored failed once the pool's reboot timeout passes, with a ``reboot``
  failure naming the timeout and a ``step-failure`` event; the failure budget
  pauses the pool, and ``atoll fleet status --watch --until-done`` ends (exit
  1) instead of waiting;
* within the budget, a dead node holding the only reboot slot stalls the pool:
  the status says so and why, ``--until-done`` ends (exit 1) with that reason,
  and the node's late healthy report on the new version clears its failure;
* nodes that report a failed step (``on_step_failure = "fail"``) are failed
  with the step, the reason and the resource, which ``atoll fleet status``,
  ``nodes`` and ``events`` show; the pool pauses once the budget is exceeded;
* with ``on_step_failure = "retry"`` the node is told not to stage until its
  backoff passed, stages again after it, and is failed after its retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.cli import main
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.wire.fleet import (
    Backoff,
    By,
    FleetClient,
    NodeRecord,
    Step,
    StepFailure,
    request_json,
)

START = 1_800_000_000.0
ESP_FULL = StepFailure(
    Step.BOOT_ENTRIES,
    "v2",
    "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB",
    "ESP (/boot/efi)",
)
NO_SPACE = StepFailure(Step.DEPLOY, "v2", "No space left on device", "/sysroot")
TIMED_OUT = StepFailure(
    Step.REBOOT,
    "v2",
    "did not come back within the reboot timeout (5 s) after its reboot grant",
    by=By.CONTROLLER,
)


class Clock:
    """The controller's time: moved by the test only."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Fleet:
    def __init__(self, service: FleetService, clock: Clock) -> None:
        self.service, self.clock = service, clock
        self.url = f"http://127.0.0.1:{service.address[1]}"

    def apply(self, **strategy: Any) -> None:
        pool = {"name": "web", "version": "v2", "previous_version": "v1"}
        request_json("PUT", self.url + "/v1/pools/web", {"pool": pool, "strategy": strategy})

    def agent(self, name: str) -> FleetClient:
        client = FleetClient(self.url, backoff=Backoff(attempts=3, base=0.05))
        client.register(name, {}, "v1")
        return client

    def advance(self, seconds: float) -> None:
        """Time passes; the controller's next plan sees it."""
        self.clock.now += seconds
        self.service.controller.reconcile()

    def pool(self) -> dict[str, Any]:
        view: dict[str, Any] = request_json("GET", self.url + "/v1/pools/web")
        return view

    def node(self, name: str) -> NodeRecord:
        records = [NodeRecord.from_json(r) for r in request_json("GET", self.url + "/v1/nodes")]
        return next(r for r in records if r.name == name)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    clock = Clock()
    store = SqliteStore(tmp_path / "fleet.db")
    # A long tick: the test plans (advance) when its clock moved, nothing else does.
    service = FleetService(store, "127.0.0.1", 0, tick=3600, clock=clock)
    service.start()
    yield Fleet(service, clock)
    service.stop()
    store.close()


def test_a_node_that_never_comes_back_fails_at_the_reboot_timeout(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.apply(reboot_timeout_seconds=5, max_unavailable=1, failure_budget=0)
    silent, other = fleet.agent("silent"), fleet.agent("other")
    assert silent.report("silent", version="v1", staged=None, healthy=True).stage
    assert other.report("other", version="v1", staged=None, healthy=True).stage
    granted = silent.report("silent", version="v1", staged="v2", healthy=True)
    assert granted.may_reboot and granted.version == "v2"
    waiting = other.report("other", version="v1", staged="v2", healthy=True)
    assert not waiting.may_reboot and "reboot slot" in waiting.reason
    # The silent node reboots and never reports again.
    fleet.advance(5)  # at the timeout: not failed yet
    view = fleet.pool()
    assert view["status"]["failed"] == 0 and view["status"]["paused_reason"] is None
    fleet.advance(1)
    view = fleet.pool()
    nodes = {n["name"]: n for n in view["nodes"]}
    # Stored failed (not only counted so): the reason is the recorded failure's.
    assert nodes["silent"]["reason"].startswith(
        "reboot of v2 failed: did not come back within the reboot timeout (5 s) after its "
        "reboot grant; not retried until the pool is resumed"
    )
    record = fleet.node("silent")
    assert (record.phase, record.failure, record.healthy) == ("failed", TIMED_OUT, False)
    assert view["status"]["failed"] == 1
    reason = view["status"]["paused_reason"]
    assert reason.startswith("failure budget exceeded: 1 failed node(s) (silent)")
    still = other.report("other", version="v1", staged="v2", healthy=True)
    assert not still.may_reboot and "failure budget exceeded" in still.reason
    # Whoever waits for the rollout is told, at once, that it failed and why.
    capsys.readouterr()
    assert main(["fleet", "status", "web", "--watch", "--until-done", "--server", fleet.url]) == 1
    captured = capsys.readouterr()
    assert "reboot timeout" in captured.out
    assert "pool web: failure budget exceeded" in captured.err
    assert "last failure: reboot of v2: did not come back within the reboot timeout" in (
        captured.out
    )
    events = [
        (e["pool"], e["node"], e["kind"]) for e in request_json("GET", fleet.url + "/v1/events")
    ]
    assert ("web", None, "pause") in events
    # The failure is an event of its own, before the pause it caused.
    assert events.count(("web", "silent", "step-failure")) == 1
    assert events.index(("web", "silent", "step-failure")) < events.index(("web", None, "pause"))


def test_a_dead_node_holding_the_only_slot_stalls_the_pool_until_done_ends(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.apply(reboot_timeout_seconds=5, max_unavailable=1, failure_budget=1)
    silent, other = fleet.agent("silent"), fleet.agent("other")
    assert silent.report("silent", version="v1", staged=None, healthy=True).stage
    assert other.report("other", version="v1", staged=None, healthy=True).stage
    assert silent.report("silent", version="v1", staged="v2", healthy=True).may_reboot
    assert not other.report("other", version="v1", staged="v2", healthy=True).may_reboot
    fleet.advance(5)
    assert fleet.pool()["status"]["stalled_reason"] is None  # rebooting, within its timeout
    fleet.advance(1)
    status = fleet.pool()["status"]
    stalled = "every reboot slot is held by failed nodes: silent (reboot timeout)"
    assert (status["failed"], status["paused_reason"]) == (1, None)  # within the budget
    assert (status["stalled_reason"], status["unavailable"]) == (stalled, 1)  # still down
    record = fleet.node("silent")
    assert (record.phase, record.failure, record.healthy) == ("failed", TIMED_OUT, False)
    waiting = other.report("other", version="v1", staged="v2", healthy=True)
    assert not waiting.may_reboot and "waiting for a reboot slot" in waiting.reason
    # Whoever waits for the rollout is told that it will not go on by itself, and why.
    capsys.readouterr()
    assert main(["fleet", "status", "web", "--watch", "--until-done", "--server", fleet.url]) == 1
    captured = capsys.readouterr()
    assert "pool web -> v2: stalled: " in captured.out
    assert f"  stalled: {stalled}" in captured.out
    assert f"pool web: stalled: {stalled}" in captured.err
    fleet.advance(60)  # later plans do not fail it again
    events = [
        (e["pool"], e["node"], e["kind"]) for e in request_json("GET", fleet.url + "/v1/events")
    ]
    assert events.count(("web", "silent", "step-failure")) == 1
    assert ("web", None, "pause") not in events
    # It comes back late, healthy on the new version: judged like any report.
    told = silent.report("silent", version="v2", staged=None, healthy=True)
    assert not told.may_reboot
    record = fleet.node("silent")
    assert (record.phase, record.current, record.failure) == ("idle", "v2", None)
    fleet.advance(1)
    assert fleet.pool()["status"]["stalled_reason"] is None
    assert other.report("other", version="v1", staged="v2", healthy=True).may_reboot


def test_step_failures_fail_nodes_and_the_budget_pauses_the_pool(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet.apply(failure_budget=1, max_unavailable=1)
    a, b, c = fleet.agent("a"), fleet.agent("b"), fleet.agent("c")
    for name, client in (("a", a), ("b", b), ("c", c)):
        assert client.report(name, version="v1", staged=None, healthy=True).stage
    granted = a.report("a", version="v1", staged="v2", healthy=True)
    assert granted.may_reboot
    # The boot-entry sync before the reboot finds the ESP full: the agent undid the
    # half-staged deployment and says so instead of asking for the reboot again.
    told = a.report("a", version="v1", staged=None, healthy=True, failure=ESP_FULL)
    assert (told.stage, told.may_reboot) == (False, False)
    assert "boot-entries of v2 failed: ESP (/boot/efi) has 0 bytes free" in told.reason
    record = fleet.node("a")
    assert (record.phase, record.failure, record.retry_at) == ("failed", ESP_FULL, None)
    view = fleet.pool()
    assert view["status"]["failed"] == 1 and view["status"]["paused_reason"] is None
    # The grant is released: the next staged node gets the slot.
    assert b.report("b", version="v1", staged="v2", healthy=True).may_reboot
    told = c.report("c", version="v1", staged=None, healthy=True, failure=NO_SPACE)
    assert not told.stage
    view = fleet.pool()
    reason = view["status"]["paused_reason"]
    assert reason.startswith("failure budget exceeded: 2 failed node(s) (a, c) > budget 1")
    # What the operator sees: status, nodes and the pool's events name step, reason, resource.
    capsys.readouterr()
    assert main(["fleet", "status", "web", "--server", fleet.url]) == 0
    out = capsys.readouterr().out
    assert (
        "last failure: boot-entries of v2: ESP (/boot/efi) has 0 bytes free, the new kernel "
        "needs 14 MB (resource: ESP (/boot/efi))"
    ) in out
    assert "last failure: deploy of v2: No space left on device (resource: /sysroot)" in out
    assert "paused: failure budget exceeded" in out
    assert main(["fleet", "nodes", "--server", fleet.url]) == 0
    out = capsys.readouterr().out
    assert out.count("last failure:") == 2 and "(resource: /sysroot)" in out
    assert main(["fleet", "events", "--pool", "web", "--server", fleet.url]) == 0
    out = capsys.readouterr().out
    assert "step-failure web a " in out and "step-failure web c " in out
    assert "node failed" in out
    events = [
        (e["pool"], e["node"], e["kind"]) for e in request_json("GET", fleet.url + "/v1/events")
    ]
    assert events.count(("web", "a", "step-failure")) == 1
    assert events.count(("web", "c", "step-failure")) == 1
    assert events[-1] == ("web", None, "pause")


def test_on_step_failure_retry_backs_off_then_fails(fleet: Fleet) -> None:
    fleet.apply(on_step_failure="retry", max_step_retries=1, failure_budget=0)
    a = fleet.agent("a")
    assert a.report("a", version="v1", staged=None, healthy=True).stage
    told = a.report("a", version="v1", staged=None, healthy=True, failure=NO_SPACE)
    assert not told.stage
    assert "deploy of v2 failed: No space left on device" in told.reason
    assert "retry 1 of 1 in 30s" in told.reason
    record = fleet.node("a")
    assert (record.phase, record.failure, record.retry_at) == ("idle", NO_SPACE, START + 30)
    fleet.advance(29)
    assert not a.desired("a").stage
    fleet.advance(1)  # the backoff has passed: stage again
    assert a.desired("a").stage
    assert fleet.node("a").retry_at is None
    told = a.report("a", version="v1", staged=None, healthy=True, failure=NO_SPACE)
    assert not told.stage
    record = fleet.node("a")
    assert (record.phase, record.failure) == ("failed", NO_SPACE)
    view = fleet.pool()
    assert view["status"]["paused_reason"].startswith("failure budget exceeded")
    messages = [
        e["message"]
        for e in request_json("GET", fleet.url + "/v1/events")
        if e["kind"] == "step-failure"
    ]
    assert [m.rsplit("; ", 1)[1] for m in messages] == [
        "retry 1 of 1 in 30s",
        "node failed after 1 retry",
    ]

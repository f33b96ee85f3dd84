"""A real controller process and 10 simulated agents (threads speaking the real
protocol through :mod:`atoll.wire.fleet`) roll a pool from v1 to v2.

* the controller is killed with SIGKILL mid-rollout and restarted on the same
  SQLite file: the rollout finishes and at no moment do more than
  ``maxUnavailable`` agents hold a reboot grant (measured on the agents' side,
  from the grant until they are back up);
* a node whose v2 fails its health check rolls back and reports it: the failure
  budget (0) pauses the pool with a reason naming the node.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.fleet.sqlite_store import SqliteStore
from atoll.process import PIPE, Child, run, start
from atoll.wire.fleet import Backoff, FleetClient, FleetError, request_json

POOL = {
    "pool": {"name": "web", "version": "v2", "previous_version": "v1", "selector": {"role": "web"}},
    "strategy": {
        "max_unavailable": 2,
        "scatter_label": "zone",
        "priority_label": "prio",
        "failure_budget": 0,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Controller:
    def __init__(self, db: Path, port: int) -> None:
        self.db, self.port = db, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: Child | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "atoll", "fleet", "serve", "--store", f"sqlite:///{self.db}"]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--tick", "0.2"]
        self.proc = start(argv, stdout=PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once it accepts connections
        assert json.loads(line)["listen"] == f"127.0.0.1:{self.port}", line

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no chance to flush anything but committed transactions
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self.proc = None

    def pool(self) -> dict[str, Any]:
        view: dict[str, Any] = request_json(
            "GET", self.url + "/v1/pools/web", backoff=Backoff(base=0.05, attempts=40)
        )
        return view


def ctl_db(ctl: Controller) -> SqliteStore:
    return SqliteStore(ctl.db)


class Tracker:
    """Counts agents between a reboot grant and being back up after it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.reboots = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.reboots += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def agent(
    name: str, labels: dict[str, str], url: str, tracker: Tracker, stop: threading.Event, bad: bool
) -> None:
    client = FleetClient(url, backoff=Backoff(base=0.05, cap=0.5, attempts=200), timeout=5)
    current, staged, failed, in_reboot = "v1", None, False, False
    client.register(name, labels, current)
    while not stop.is_set():
        if in_reboot:
            # Back up and healthy (on v2, or rolled back to v1): available again
            # from here; the controller learns it with this report.
            tracker.leave()
            in_reboot = False
        try:
            desired = client.report(
                name, version=current, staged=staged, healthy=True, failed=failed
            )
        except FleetError:
            continue  # the controller is down; the backoff already waited
        failed = False
        if desired.may_reboot and desired.version != current:
            tracker.enter()
            in_reboot = True
            time.sleep(0.15)  # the reboot: the agent is silent
            if bad and desired.version == "v2":
                failed = True  # health check failed; the agent rolled back by itself
            else:
                current = desired.version
            staged = None
        elif desired.stage and staged != desired.version:
            time.sleep(0.02)  # download and deploy
            staged = desired.version
        time.sleep(0.03)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Controller, Tracker, threading.Event, list[str]]]:
    ctl = Controller(tmp_path / "fleet.db", _free_port())
    ctl.start()
    request_json("PUT", ctl.url + "/v1/pools/web", POOL)
    yield ctl, Tracker(), threading.Event(), []
    ctl.stop()


def _start_agents(
    ctl: Controller, tracker: Tracker, stop: threading.Event, bad: set[str]
) -> list[threading.Thread]:
    threads = []
    for i in range(10):
        name = f"n{i:02}"
        labels = {"role": "web", "zone": "abc"[i % 3], "prio": "9" if name in bad else "0"}
        t = threading.Thread(
            target=agent, args=(name, labels, ctl.url, tracker, stop, name in bad), daemon=True
        )
        t.start()
        threads.append(t)
    return threads


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_rollout_survives_controller_kill(
    fleet: tuple[Controller, Tracker, threading.Event, list[str]],
) -> None:
    ctl, tracker, stop, _ = fleet
    threads = _start_agents(ctl, tracker, stop, bad=set())
    try:
        _wait(lambda: ctl.pool()["status"]["updated"] >= 3, 60, "3 nodes updated")
        ctl.kill()
        with ctl_db(ctl) as store:
            assert sum(n.current_version == "v2" for n in store.nodes()) < 10  # mid-rollout
        time.sleep(0.5)
        ctl.start()
        _wait(lambda: ctl.pool()["status"]["updated"] == 10, 90, "all 10 nodes updated")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    view = ctl.pool()
    assert {n["current"] for n in view["nodes"]} == {"v2"}
    assert view["status"]["failed"] == 0
    assert tracker.reboots == 10
    assert tracker.peak <= 2, tracker.peak
    assert tracker.peak == 2  # the bound was used, not just respected by being idle


def test_failure_budget_pauses_the_pool(
    fleet: tuple[Controller, Tracker, threading.Event, list[str]],
) -> None:
    ctl, tracker, stop, _ = fleet
    threads = _start_agents(ctl, tracker, stop, bad={"n04"})
    try:
        _wait(lambda: ctl.pool()["status"]["paused_reason"] is not None, 60, "the pool to pause")
        time.sleep(1.0)  # nothing new may start once paused
        view = ctl.pool()
        assert tracker.now == 0
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    reason = view["status"]["paused_reason"]
    assert "failure budget" in reason and "n04" in reason
    assert view["status"]["failed"] == 1
    assert view["status"]["updated"] < 10
    assert tracker.peak <= 2
    by_name = {n["name"]: n for n in view["nodes"]}
    assert by_name["n04"]["current"] == "v1" and by_name["n04"]["phase"] == "failed"
    out = run(
        [sys.executable, "-m", "atoll", "fleet", "status", "web", "--server", ctl.url],
        timeout=30,
    ).stdout.decode()
    assert "paused: failure budget" in out

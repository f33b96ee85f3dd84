"""What the update loop tells the fleet controller about health (updater.health_facts) and
its last restart (updater.restart_of), and when its first round may run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import markers
from atoll.agent.deployments import Deployments
from atoll.agent.update_loop import (
    HEALTH,
    HealthFacts,
    Updater,
    UpdaterConfig,
    health_facts,
    last_restart,
    read_health,
    restart_of,
)
from atoll.wire.fleet import Desired, Restart, RestartKind

OLD, NEW = "a" * 64, "b" * 64


def _write(root: Path, **record: Any) -> None:
    path = root / HEALTH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, (True, False)),  # the agent runs, no round yet
        ({"healthy": True, "booted": NEW, "trial": None}, (True, False)),
        ({"healthy": False, "booted": NEW, "trial": None}, (False, True)),
        # Written before the reboot, about the previous deployment: nothing known yet.
        ({"healthy": True, "booted": OLD, "trial": None}, (False, False)),
        # A trial in progress decides itself: neither healthy nor failed yet.
        ({"healthy": False, "booted": NEW, "trial": {"state": "trial"}}, (False, False)),
        ({"healthy": True, "booted": NEW, "trial": None, "rolled_back": True}, (True, True)),
        ({"healthy": True, "booted": OLD, "rolled_back": True}, (False, True)),
    ],
)
def test_health_as_the_controller_hears_it(
    tmp_path: Path, record: dict[str, Any] | None, expected: tuple[bool, bool]
) -> None:
    if record is not None:
        _write(tmp_path, **record)
        if record.get("rolled_back"):
            rollback = markers.Rollback("c" * 64, OLD, "health: x failed", "2026-11-23T10:00:00Z")
            markers.write_json(tmp_path / markers.ROLLBACK, rollback.as_dict())
    assert read_health(tmp_path, NEW) == expected


def test_a_rollback_is_reported_with_the_commit_it_left_until_the_next_upgrade(
    tmp_path: Path,
) -> None:
    _write(tmp_path, healthy=True, booted=NEW, trial=None, rolled_back=True)
    rollback = markers.Rollback("c" * 64, NEW, "health: x failed", "2026-11-23T10:00:00Z")
    markers.write_json(tmp_path / markers.ROLLBACK, rollback.as_dict())
    assert health_facts(tmp_path, NEW) == HealthFacts(True, False, "c" * 64)
    # Staging the next upgrade removes rollback.json: the rollback is history.
    markers.clear(tmp_path / markers.ROLLBACK)
    assert health_facts(tmp_path, NEW) == HealthFacts(True, False, None)
    # A rollback.json the monitor has not recorded in a round yet is not reported either.
    markers.write_json(tmp_path / markers.ROLLBACK, rollback.as_dict())
    _write(tmp_path, healthy=True, booted=NEW, trial=None, rolled_back=False)
    assert not health_facts(tmp_path, NEW).failed


AT = "2026-12-07T07:00:00+00:00"
RECORD = {  # restart.json as softreboot.Restarter writes it
    "kind": "soft",
    "reason": "same kernel and arguments",
    "policy": "auto",
    "why": "upgrade to 1.1.0",
    "from": OLD,
    "from_version": "1.0.0",
    "into": NEW,
    "into_version": "1.1.0",
    "at": AT,
}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, None),  # never restarted into a version (or an agent from before)
        (RECORD, Restart(RestartKind.SOFT, "same kernel and arguments", "1.1.0", AT)),
        (
            {**RECORD, "kind": "full", "reason": "policy full"},
            Restart(RestartKind.FULL, "policy full", "1.1.0", AT),
        ),
        # A deployment without a version: its commit.
        ({**RECORD, "into_version": None}, Restart(RestartKind.SOFT, RECORD["reason"], NEW, AT)),
        # A reason from an error's text: one line, cut to the protocol's 500 characters.
        (
            {**RECORD, "kind": "full", "reason": "soft-reboot not prepared: mount:\n  busy"},
            Restart(RestartKind.FULL, "soft-reboot not prepared: mount: busy", "1.1.0", AT),
        ),
        ({**RECORD, "reason": ""}, Restart(RestartKind.SOFT, "no reason recorded", "1.1.0", AT)),
        # What cannot be said is not said: the report goes without it.
        ({**RECORD, "kind": "warm"}, None),
        ({**RECORD, "at": "yesterday"}, None),
        ({**RECORD, "into_version": None, "into": None}, None),
    ],
)
def test_the_last_restart_as_the_controller_hears_it(
    record: dict[str, Any] | None, expected: Restart | None
) -> None:
    assert restart_of(record) == expected


def test_a_long_reason_is_cut_and_the_record_read_from_the_agents_root(tmp_path: Path) -> None:
    assert last_restart(tmp_path) is None
    markers.write_json(tmp_path / "var/lib/atoll/restart.json", {**RECORD, "reason": "x" * 900})
    restart = last_restart(tmp_path)
    assert restart is not None and len(restart.reason) == 500
    assert restart.reason.endswith("\u2026")


def test_an_unreadable_record_counts_as_none(tmp_path: Path) -> None:
    (tmp_path / HEALTH).parent.mkdir(parents=True)
    (tmp_path / HEALTH).write_text("[1, 2")
    assert read_health(tmp_path, NEW) == (True, False)
    (tmp_path / HEALTH).write_text("[1, 2]")
    assert read_health(tmp_path, NEW) == (True, False)


def test_the_update_loop_waits_for_the_monitor_to_settle_this_boot(tmp_path: Path) -> None:
    """No round (no report, no staging, no reboot) before the health monitor decided."""
    rounds: list[float] = []

    class Counting(Updater):
        def step(self) -> Desired:
            rounds.append(time.monotonic())
            stop.set()
            return Desired("", False, False, "", None)

    config = UpdaterConfig("http://127.0.0.1:9", "http://127.0.0.1:9", "stable", "n1", interval=0)
    deployments = Deployments(lambda _, *, timeout: "", lambda: None)
    updater = Counting(config, deployments, [], root=tmp_path, log=lambda _: None)
    stop, decided = threading.Event(), threading.Event()
    loop = threading.Thread(target=updater.run_forever, args=(stop, decided))
    loop.start()
    loop.join(1.5)
    assert loop.is_alive() and rounds == []
    settled_at = time.monotonic()
    decided.set()
    loop.join(5)
    assert not loop.is_alive() and len(rounds) == 1 and rounds[0] >= settled_at
    # Stopped while waiting: no round at all.
    rounds.clear()
    stop, decided = threading.Event(), threading.Event()
    loop = threading.Thread(target=updater.run_forever, args=(stop, decided))
    loop.start()
    stop.set()
    loop.join(5)
    assert not loop.is_alive() and rounds == []


def test_an_error_in_a_watch_does_not_end_the_update_loop(tmp_path: Path) -> None:
    """A watch that raises something unexpected counts as a failed watch; rounds go on."""
    rounds: list[float] = []
    watches: list[str] = []
    logged: list[str] = []

    class Failing(Updater):
        _acted = False

        def step(self) -> Desired:
            rounds.append(time.monotonic())
            if len(rounds) == 2:
                stop.set()
            return Desired("1.0", False, False, "", "web", etag="e1")

        def _watch(self, schedule: Any, etag: str, stop: threading.Event) -> float:
            watches.append(etag)
            raise ValueError("filedescriptor out of range in select()")

    config = UpdaterConfig("http://127.0.0.1:9", "http://127.0.0.1:9", "stable", "n1", interval=0)
    deployments = Deployments(lambda _, *, timeout: "", lambda: None)
    updater = Failing(config, deployments, [], root=tmp_path, log=logged.append)
    stop = threading.Event()
    loop = threading.Thread(target=updater.run_forever, args=(stop,))
    loop.start()
    loop.join(15)
    assert not loop.is_alive() and len(rounds) == 2 and watches[0] == "e1"
    assert any("watch failed: ValueError: filedescriptor out of range" in m for m in logged)

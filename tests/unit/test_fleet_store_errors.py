"""What keeps a controller going when its store fails: SQLite errors are
:class:`StoreError` naming the database and leave no transaction open, one pool's
failure does not stop the others, the timer survives any error, and an etcd plan
fits one transaction (:func:`atoll.fleet.etcd_store.bounded`)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from atoll.fleet.etcd_store import PLAN_DECISIONS, bounded
from atoll.fleet.rollout import (
    Action,
    ActionKind,
    NodeFacts,
    Phase,
    Plan,
    PoolSpec,
    PoolState,
    Quantity,
    plan,
)
from atoll.fleet.server import Controller, FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.fleet.store import StoreError, Wanted
from atoll.wire.fleet import Registration, Report, Step, StepFailure


class _FailingCommit:
    """The store's connection, but its next COMMIT fails (a full disk, an I/O error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.fail = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_failed_commit_is_a_store_error_and_rolls_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    real = store._db
    store._db = _FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(StoreError, match=r"fleet store .*fleet\.db: disk I/O error"):
        store.register(Registration("a", {}, "v1"), now=1)
    assert not real.in_transaction
    assert store.nodes() == []  # rolled back
    store.register(Registration("a", {}, "v1"), now=2)  # the next transaction begins
    assert [n.name for n in store.nodes()] == ["a"]
    store._db = real
    store.close()


def test_an_sqlite_error_inside_a_transaction_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    with pytest.raises(StoreError, match=r"fleet\.db: no such table: nope"), store._tx() as db:
        db.execute("SELECT * FROM nope")
    assert not store._db.in_transaction
    store.close()


def test_the_timer_survives_any_error(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "fleet.db")
    service = FleetService.__new__(FleetService)  # the timer's step, without a socket
    service.controller = Controller(store)
    calls: list[int] = []

    def broken() -> dict[str, Plan]:
        calls.append(1)
        raise sqlite3.OperationalError("database disk image is malformed")

    service.controller.reconcile = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        service._timer_once()
        service._timer_once()
    assert len(calls) == 2 and "reconcile failed" in caplog.text
    store.close()


class _OnePoolFails(SqliteStore):
    def apply_plan(self, pool: str, plan: Plan, now: float) -> tuple[NodeFacts, ...]:
        if pool == "a":
            raise StoreError("etcd: too many operations in txn request")
        return super().apply_plan(pool, plan, now)


def test_one_pools_failure_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    store = _OnePoolFails(tmp_path / "fleet.db")
    for pool in ("a", "b"):
        store.put_pool(PoolSpec(pool, "v2", selector={"pool": pool}), now=0)
        store.register(Registration(f"{pool}1", {"pool": pool}, "v1"), now=0)
    controller = Controller(store, clock=lambda: 1.0)
    with caplog.at_level(logging.WARNING):
        plans = controller.reconcile()
    assert set(plans) == {"a", "b"}
    phases = {n.name: n.phase for n in store.nodes()}
    assert phases == {"a1": Phase.IDLE, "b1": Phase.STAGING}
    assert "pool a: plan not persisted: etcd: too many operations" in caplog.text
    store.close()


def _plan(stages: int, grants: int, failures: int) -> Plan:
    empty = plan(PoolSpec("p", "v2", max_unavailable=Quantity(1)), PoolState(), [], 0)
    actions = [Action(ActionKind.STAGE, f"s{i:03d}", "v2") for i in range(stages)]
    actions[1:1] = [Action(ActionKind.REBOOT, f"r{i}", "v2") for i in range(grants)]
    timeout = StepFailure(Step.REBOOT, "v2", "did not come back")
    return replace(
        empty,
        actions=tuple(actions),
        failures={f"t{i}": timeout for i in range(failures)},
        pause_reason="budget",
    )


@pytest.mark.parametrize(
    ("stages", "grants", "failures", "limit", "kept"),
    [
        (3, 1, 1, 10, (1, 1, 3)),  # fits: unchanged
        (150, 0, 0, PLAN_DECISIONS, (0, 0, PLAN_DECISIONS)),
        (150, 5, 2, 10, (2, 5, 3)),  # timeouts, then grants, then stage orders
        (150, 5, 12, 10, (10, 0, 0)),
        (0, 30, 0, 10, (0, 10, 0)),
    ],
)
def test_a_plan_is_bounded_to_one_transaction(
    stages: int, grants: int, failures: int, limit: int, kept: tuple[int, int, int]
) -> None:
    full = _plan(stages, grants, failures)
    cut = bounded(full, limit)
    kinds = [a.kind for a in cut.actions]
    assert (
        len(cut.failures),
        kinds.count(ActionKind.REBOOT),
        kinds.count(ActionKind.STAGE),
    ) == kept
    if cut is not full:  # cut: grants first
        assert kinds == sorted(kinds, key=lambda k: k is ActionKind.STAGE)
    assert list(cut.failures) == list(full.failures)[: len(cut.failures)]
    stages_kept = [a for a in cut.actions if a.kind is ActionKind.STAGE]
    assert (
        stages_kept == [a for a in full.actions if a.kind is ActionKind.STAGE][: len(stages_kept)]
    )
    assert cut.pause_reason == "budget" and cut.desired == full.desired
    assert PLAN_DECISIONS * 2 + 4 <= 128  # node + event per decision, within etcd's default


def test_a_report_still_lands_when_a_plan_cannot(tmp_path: Path) -> None:
    store = _OnePoolFails(tmp_path / "fleet.db")
    store.put_pool(PoolSpec("a", "v2", selector={"pool": "a"}), now=0)
    store.register(Registration("a1", {"pool": "a"}, "v1"), now=0)
    controller = Controller(store, clock=lambda: 1.0)
    controller.reconcile()
    store.report("a1", Report("v1", "v2"), Wanted("v2"), now=2)
    controller.reconcile()  # does not raise
    assert store.nodes()[0].phase is Phase.STAGED
    store.close()

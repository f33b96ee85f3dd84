"""The store contract, run against SQLite and a real etcd cluster alike.

Every test here that takes ``backend`` runs once per store. The transition table
of the fleet (``tests/unit/test_fleet_transitions.py``: stored facts before, one
fact or decision, the stored state after) runs through each store's own API
and must leave exactly what the pure rules say, so the two backends cannot
drift apart. What only etcd has (several writers, the leader fence) is in
``test_fleet_etcd_store.py``.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

import pytest

from atoll.errors import InputError
from atoll.fleet.etcd import EtcdClient, parse_endpoints
from atoll.fleet.etcd_store import EtcdStore
from atoll.fleet.pool import load_pool_file, spec_from_dict, spec_to_dict
from atoll.fleet.rollout import NodeFacts, Phase, PoolSpec, PoolState, Quantity, plan
from atoll.fleet.sqlite_store import SqliteStore, store_path
from atoll.fleet.store import EVENTS_KEPT, FleetStore, Wanted
from atoll.fleet.transitions import NewEvent
from atoll.wire.fleet import Registration, Report, Restart, RestartKind, Step, StepFailure
from tests.unit.test_fleet_transitions import (
    NOW,
    TABLE,
    Case,
    Decided,
    Happening,
    Outcome,
    Register,
    Reported,
    Verb,
    expected,
    pool_of,
)

_prefixes = itertools.count()


class Backend:
    """Opens "the same" store again, as a restarted controller (or another replica)
    would, and stores node facts directly (in the layout each store documents)."""

    def __init__(self, kind: str, tmp_path: Path, etcd_url: str) -> None:
        self.kind = kind
        self.db = tmp_path / "fleet.db"
        self.url = etcd_url
        self.prefix = f"/test/{next(_prefixes)}"

    def __call__(self, events_kept: int = EVENTS_KEPT) -> FleetStore:
        if self.kind == "sqlite":
            return SqliteStore(self.db, events_kept=events_kept)
        client = EtcdClient(parse_endpoints(self.url))
        return EtcdStore(client, prefix=self.prefix, events_kept=events_kept, trim_every=0)

    def seed(self, nodes: Iterable[NodeFacts]) -> None:
        docs = {
            n.name: {
                "labels": dict(n.labels),
                "current": n.current_version,
                "staged": n.staged_version,
                "healthy": n.healthy,
                "phase": n.phase.value,
                "last_transition": n.last_transition,
                "last_report": 0.0,
                "failure": None if n.failure is None else n.failure.to_json(),
                "retry_at": n.retry_at,
                "step_attempts": n.step_attempts,
                "restart": None if n.restart is None else n.restart.to_json(),
            }
            for n in nodes
        }
        if self.kind == "etcd":
            client = EtcdClient(parse_endpoints(self.url))
            for name, doc in docs.items():
                client.put(f"{self.prefix}/nodes/{name}", json.dumps(doc))
            return
        with closing(sqlite3.connect(self.db)) as db, db:
            for name, doc in docs.items():
                failure = None if doc["failure"] is None else json.dumps(doc["failure"])
                restart = None if doc["restart"] is None else json.dumps(doc["restart"])
                row = {
                    **doc,
                    "name": name,
                    "labels": json.dumps(doc["labels"]),
                    "failure": failure,
                    "restart": restart,
                }
                db.execute(
                    "INSERT INTO nodes(name, labels, current_version, staged_version, healthy,"
                    " phase, last_transition, last_report, failure, retry_at, step_attempts,"
                    " restart) VALUES (:name, :labels, :current, :staged, :healthy, :phase,"
                    " :last_transition, :last_report, :failure, :retry_at, :step_attempts,"
                    " :restart)",
                    row,
                )


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("etcd_url") if request.param == "etcd" else ""
    return Backend(str(request.param), tmp_path, url)


def _spec(version: str = "v2") -> PoolSpec:
    return PoolSpec(name="web", target_version=version, max_unavailable=Quantity(1))


# the transition table ---------------------------------------------------------


def _happen(store: FleetStore, happens: Happening, spec: PoolSpec) -> None:
    """One fact or decision, through the store's API (``spec``: the pool ``web``);
    checks what the call answers."""
    if isinstance(happens, Register):
        new = happens.registration
        node = store.register(new, now=NOW)
        assert node == store.node(new.name)
    elif isinstance(happens, Reported):
        before, report = store.node(happens.name), happens.report
        pool = pool_of(spec, happens)
        answer = store.report(happens.name, report, Wanted(happens.desired, pool), now=NOW)
        after = store.node(happens.name)
        assert answer == (after, after != before)
    elif isinstance(happens, Decided):
        store.apply_plan("web", happens.plan(), now=NOW)
    else:
        _verb(store, happens)


def _verb(store: FleetStore, verb: Verb) -> None:
    if verb.kind == "pause":
        assert store.pause("web", verb.reason, now=NOW)
    elif verb.kind == "resume":
        assert store.resume("web", now=NOW)
    elif verb.kind == "rollback":
        assert store.rollback("web", now=NOW) == store.pools()[0][0]
    else:
        assert verb.spec is not None
        assert store.put_pool(verb.spec, now=NOW) == store.pools()[0][0]


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_transition_table(backend: Backend, case: Case) -> None:
    store = backend()
    store.put_pool(case.spec, now=0)
    if case.state.canary_released:
        store.resume("web", now=0)
    if case.state.pause_reason is not None:
        store.pause("web", case.state.pause_reason, now=0)
    backend.seed(case.nodes)
    before = Outcome(tuple(sorted(case.nodes, key=lambda n: n.name)), case.spec, case.state, ())
    assert Outcome(tuple(store.nodes()), *store.pools()[0], ()) == before
    seen = len(store.events(limit=1000))
    if case.raises is None:
        _happen(store, case.happens, case.spec)
    else:
        with pytest.raises(InputError, match=case.raises):
            _happen(store, case.happens, case.spec)
    pool = store.pool("web")
    assert pool is not None
    events = tuple(
        NewEvent(e.at, e.pool, e.node, e.kind, e.message) for e in store.events(limit=1000)[seen:]
    )
    after = Outcome(tuple(store.nodes()), *pool, events)
    assert after == (before if case.raises else expected(case))
    store.close()


# the contract, told as stories -------------------------------------------------


def test_state_survives_reopen(backend: Backend) -> None:
    store = backend()
    store.put_pool(_spec("v1"), now=1)
    store.put_pool(_spec("v2"), now=2)
    store.register(Registration("a", {"zone": "x"}, "v1"), now=3)
    store.register(Registration("b", {"zone": "y"}, "v1"), now=3)
    store.register(Registration("a", {"zone": "z"}, "v1"), now=4)  # re-registration: no event
    assert store.pause("web", "operator said so", now=4)
    assert not store.pause("nope", "x", now=4)
    store.close()
    again = backend()
    spec, state = again.pools()[0]
    assert spec.target_version == "v2" and spec.previous_version == "v1"
    assert state == PoolState(pause_reason="operator said so")
    assert [(n.name, n.labels["zone"]) for n in again.nodes()] == [("a", "z"), ("b", "y")]
    events = again.events()
    assert [e.kind for e in events] == ["apply", "apply", "register", "register", "pause"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert [e.kind for e in again.events(limit=2)] == ["register", "pause"]


def test_plan_grants_are_persisted_as_rebooting(backend: Backend) -> None:
    store = backend()
    store.put_pool(_spec(), now=0)
    for name in ("a", "b"):
        store.register(Registration(name, {}, "v1"), now=0)
        changed = store.report(name, Report("v1", "v2"), Wanted("v2"), now=1)
        assert changed is not None and changed[1]
        unchanged = store.report(name, Report("v1", "v2"), Wanted("v2"), now=2)
        assert unchanged is not None and not unchanged[1]
    assert store.report("ghost", Report("v1", None), Wanted(None), now=1) is None
    spec, state = store.pools()[0]
    store.apply_plan("web", plan(spec, state, store.nodes(), 2), now=2)
    restarted = backend()
    spec, state = restarted.pools()[0]
    assert sorted(n.phase for n in restarted.nodes()) == [Phase.REBOOTING, Phase.STAGED]
    assert plan(spec, state, restarted.nodes(), 3).actions == ()  # the grant still counts
    granted = next(n for n in restarted.nodes() if n.phase is Phase.REBOOTING)
    landed = restarted.report(granted.name, Report("v2", None), Wanted("v2"), now=4)
    assert landed is not None and landed[0].phase is Phase.IDLE
    assert [e.kind for e in restarted.events()][-2:] == ["reboot", "phase"]


def test_failure_budget_pause_resume_and_rollback(backend: Backend) -> None:
    store = backend()
    store.put_pool(_spec("v1"), now=0)
    store.put_pool(_spec("v2"), now=0)
    store.register(Registration("a", {}, "v1"), now=0)
    store.report("a", Report("v1", None, failed=True), Wanted("v2"), now=1)
    spec, state = store.pools()[0]
    store.apply_plan("web", plan(spec, state, store.nodes(), 2), now=2)
    reason = store.pools()[0][1].pause_reason
    assert reason is not None and "failure budget" in reason
    assert store.resume("web", now=3)
    assert store.pools()[0][1] == PoolState(pause_reason=None, canary_released=True)
    assert store.nodes()[0].phase is Phase.IDLE  # retried after resume
    back = store.rollback("web", now=4)
    assert back is not None and (back.target_version, back.previous_version) == ("v1", "v2")
    assert store.rollback("nope", now=4) is None
    assert not store.resume("nope", now=4)
    store.put_pool(PoolSpec(name="solo", target_version="v1"), now=5)
    with pytest.raises(InputError, match="no previous version"):
        store.rollback("solo", now=6)


def test_only_the_newest_events_are_kept(backend: Backend) -> None:
    store = backend(events_kept=5)
    store.put_pool(_spec(), now=0)
    for i in range(12):
        store.register(Registration(f"n{i:02}", {}, "v1"), now=i)
    events = store.events(limit=100)
    assert [e.message for e in events] == ["version v1"] * 5
    assert [e.node for e in events] == [f"n{i:02}" for i in range(7, 12)]
    assert [e.id for e in events] == sorted(e.id for e in events)
    store.close()


def test_a_node_stored_before_step_failures_reads_without_one(backend: Backend) -> None:
    """Stores written by an older controller (no failure, retry_at, step_attempts,
    restart) keep working: SQLite adds the columns on open, etcd documents lack the keys."""
    old: dict[str, object] = {
        "labels": {},
        "current": "v1",
        "staged": None,
        "healthy": True,
        "phase": "idle",
    }
    if backend.kind == "etcd":
        client = EtcdClient(parse_endpoints(backend.url))
        doc = {**old, "last_transition": 1.0, "last_report": 1.0}
        client.put(f"{backend.prefix}/nodes/a", json.dumps(doc))
    else:
        with closing(sqlite3.connect(backend.db)) as db, db:
            db.execute(
                "CREATE TABLE nodes (name TEXT PRIMARY KEY, labels TEXT NOT NULL,"
                " current_version TEXT NOT NULL, staged_version TEXT, healthy INTEGER NOT NULL,"
                " phase TEXT NOT NULL, last_transition REAL NOT NULL, last_report REAL NOT NULL)"
            )
            db.execute("INSERT INTO nodes VALUES ('a', '{}', 'v1', NULL, 1, 'idle', 1.0, 1.0)")
    store = backend()
    assert store.nodes() == [NodeFacts("a", {}, "v1", None, True, Phase.IDLE, 1.0)]
    failure = StepFailure(Step.FETCH, "v2", "channel unreachable")
    store.put_pool(_spec(), now=2)
    store.report("a", Report("v1", None, failure=failure), Wanted("v2"), now=2)
    assert store.nodes()[0].failure == failure  # only recorded: it was not told to stage
    restart = Restart(RestartKind.FULL, "policy full", "v1", "2026-12-07T07:00:00+00:00")
    store.report("a", Report("v1", None, restart=restart), Wanted("v2"), now=3)
    store.close()
    again = backend().nodes()[0]
    assert (again.failure, again.restart) == (failure, restart)


# SQLite only ----------------------------------------------------------------------


def test_sqlite_journal_is_wal_and_survives_reopen(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "fleet.db") as store:
        store.put_pool(_spec(), now=0)
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with SqliteStore(tmp_path / "fleet.db") as store:
        assert [spec.name for spec, _ in store.pools()] == ["web"]


def test_store_url() -> None:
    assert store_path("sqlite:///var/x.db") == Path("/var/x.db")
    with pytest.raises(InputError, match="etcd://x"):
        store_path("etcd://x")


def test_pool_file_round_trip_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "pool.toml"
    good.write_text(
        '[pool]\nname = "web"\nversion = "2"\n[pool.selector]\nrole = "web"\n'
        '[strategy]\nmax_unavailable = "20%"\npartition = 1\nscatter_label = "zone"\n'
    )
    spec = load_pool_file(good)
    assert spec.max_unavailable == Quantity(20, percent=True)
    assert spec_from_dict(spec_to_dict(spec), "x") == spec
    bad = tmp_path / "bad.toml"
    bad.write_text('[pool]\nname = "web"\nversion = "2"\n[strategy]\nmax_unavailable = "lots"\n')
    with pytest.raises(InputError, match=r"bad\.toml: strategy\.max_unavailable"):
        load_pool_file(bad)
    bad.write_text('[pool]\nname = "web"\nversion = "2"\n[strategy]\nmaxunavailable = 1\n')
    with pytest.raises(InputError, match=r"bad\.toml: unknown key strategy\.maxunavailable"):
        load_pool_file(bad)

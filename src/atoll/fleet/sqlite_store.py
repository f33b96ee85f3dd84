"""The controller's memory in SQLite (standard library): one file, one controller.

Design:

* one file, WAL journal (readers never block the writer), ``synchronous=FULL``
  so a committed decision survives a crash of the controller *or* the host;
* every mutation is one ``BEGIN IMMEDIATE`` transaction that reads the rows it
  needs, asks :mod:`atoll.fleet.transitions` what they become and writes the
  result with its events, so a controller that dies mid-update leaves either
  the old or the new state, never a mix; the decisions of one plan
  (stage/reboot grants, a self-pause) are written in one transaction together;
* a reboot grant is stored as phase ``rebooting`` *before* the agent is told,
  so a restarted controller counts it against ``maxUnavailable``;
* an :class:`SqliteStore` holds one connection guarded by a lock; the HTTP
  server's threads share it (SQLite serialises writers anyway, and the lock
  keeps the ``check_same_thread=False`` connection safe).

SQL here stores and queries; it decides nothing. The protocol it implements
is :class:`atoll.fleet.store.FleetStore`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atoll.errors import InputError
from atoll.fleet import transitions
from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import NodeFacts, Phase, Plan, PoolSpec, PoolState
from atoll.fleet.store import EVENTS_KEPT, Decoded, Event, Reported, StoreError, Wanted, report_step
from atoll.fleet.transitions import NewEvent, PoolStep
from atoll.wire.fleet import ProtocolError, Registration, Report, Restart, StepFailure

SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    pause_reason TEXT,
    canary_released INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL  -- the last write of the pool's spec or state
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    current_version TEXT NOT NULL,
    staged_version TEXT,
    healthy INTEGER NOT NULL,
    phase TEXT NOT NULL,
    last_transition REAL NOT NULL,
    last_report REAL NOT NULL,  -- the last registration or report that changed something
    failure TEXT,  -- the last step failure (the protocol's JSON), or NULL
    retry_at REAL,  -- on_step_failure = "retry": not staged again before this
    step_attempts INTEGER NOT NULL DEFAULT 0,
    restart TEXT  -- the last restart its agent reported (the protocol's JSON), or NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    pool TEXT,
    node TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
"""

# Columns added after the first release: a store created before gets them on open.
_ADDED_NODE_COLUMNS = {
    "failure": "failure TEXT",
    "retry_at": "retry_at REAL",
    "step_attempts": "step_attempts INTEGER NOT NULL DEFAULT 0",
    "restart": "restart TEXT",
}

_SELECT_NODES = (
    "SELECT name, labels, current_version, staged_version, healthy, phase, last_transition,"
    " failure, retry_at, step_attempts, restart FROM nodes"
)


def store_path(url: str) -> Path:
    """``sqlite:///abs/path.db`` -> ``/abs/path.db`` (``etcd://`` URLs: ``etcd_store``)."""
    prefix = "sqlite://"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise InputError(
            f"--store {url!r}: expected sqlite:///path/to/fleet.db",
            hint="or etcd://host:port[,host:port...] for several controller replicas",
        )
    return Path(url[len(prefix) :])


def _node_row(row: Sequence[Any]) -> NodeFacts:
    name, labels, current, staged, healthy, phase, since, failure, retry_at, attempts, restart = row
    return NodeFacts(
        name,
        json.loads(labels),
        current,
        staged,
        bool(healthy),
        Phase(phase),
        since,
        failure=_failure(name, failure),
        retry_at=retry_at,
        step_attempts=int(attempts),
        restart=_restart(name, restart),
    )


def _failure(name: str, raw: str | None) -> StepFailure | None:
    if raw is None:
        return None
    try:
        return StepFailure.from_json(json.loads(raw))
    except (ValueError, ProtocolError) as e:
        raise StoreError(f"fleet store: node {name}: failure: {e}") from e


def _restart(name: str, raw: str | None) -> Restart | None:
    if raw is None:
        return None
    try:
        return Restart.from_json(json.loads(raw))
    except (ValueError, ProtocolError) as e:
        raise StoreError(f"fleet store: node {name}: restart: {e}") from e


def _add_columns(db: sqlite3.Connection) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
    for name, definition in _ADDED_NODE_COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE nodes ADD COLUMN {definition}")


class SqliteStore:
    """SQLite-backed state; see the module docstring."""

    def __init__(self, path: Path, *, events_kept: int = EVENTS_KEPT) -> None:
        self.path = path
        self.events_kept = events_kept
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            _add_columns(self._db)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"fleet store {path}: cannot open: {e}") from e
        self._lock = threading.Lock()
        self._decoded: Decoded[tuple[Any, ...]] = Decoded(lambda _name, row: _node_row(row))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, committed or rolled back; an SQLite
        error (a failed COMMIT included) is a :class:`StoreError` naming the database."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError(f"fleet store {self.path}: {e}") from e

    # rows ------------------------------------------------------------------
    def _append(self, db: sqlite3.Connection, events: Iterable[NewEvent]) -> None:
        for e in events:
            cursor = db.execute(
                "INSERT INTO events(at, pool, node, kind, message) VALUES (?,?,?,?,?)",
                (e.at, e.pool, e.node, e.kind, e.message),
            )
            # Keep the newest events only (a range delete on the primary key: usually one row).
            db.execute(
                "DELETE FROM events WHERE id <= ?",
                (int(cursor.lastrowid or 0) - self.events_kept,),
            )

    def _pool_rows(self, db: sqlite3.Connection, name: str | None = None) -> list[Any]:
        query = "SELECT name, spec, pause_reason, canary_released FROM pools"
        if name is None:
            return db.execute(query + " ORDER BY name").fetchall()
        return db.execute(query + " WHERE name=?", (name,)).fetchall()

    def _pool_of(self, row: Sequence[Any]) -> tuple[PoolSpec, PoolState]:
        name, spec, reason, released = row
        return (
            spec_from_dict(json.loads(spec), f"store {self.path}: pool {name}"),
            PoolState(pause_reason=reason, canary_released=bool(released)),
        )

    def _pool(self, db: sqlite3.Connection, name: str) -> tuple[PoolSpec, PoolState] | None:
        rows = self._pool_rows(db, name)
        return self._pool_of(rows[0]) if rows else None

    def _write_pool(self, db: sqlite3.Connection, step: PoolStep, now: float) -> None:
        db.execute(
            "INSERT INTO pools(name, spec, pause_reason, canary_released, updated_at)"
            " VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET spec=excluded.spec,"
            " pause_reason=excluded.pause_reason, canary_released=excluded.canary_released,"
            " updated_at=excluded.updated_at",
            (
                step.spec.name,
                json.dumps(spec_to_dict(step.spec)),
                step.state.pause_reason,
                int(step.state.canary_released),
                now,
            ),
        )
        self._write_nodes(db, step.nodes)
        self._append(db, step.events)

    def _nodes(self, db: sqlite3.Connection) -> list[NodeFacts]:
        rows = db.execute(_SELECT_NODES + " ORDER BY name").fetchall()
        return self._decoded.every((r[0], r) for r in rows)

    def _node(self, db: sqlite3.Connection, name: str) -> NodeFacts | None:
        row = db.execute(_SELECT_NODES + " WHERE name=?", (name,)).fetchone()
        return None if row is None else self._decoded.one(name, row)

    @staticmethod
    def _facts(n: NodeFacts) -> tuple[Any, ...]:
        labels = json.dumps(dict(n.labels), sort_keys=True)
        facts = (n.current_version, n.staged_version, int(n.healthy), n.phase.value)
        failure = None if n.failure is None else json.dumps(n.failure.to_json(), sort_keys=True)
        restart = None if n.restart is None else json.dumps(n.restart.to_json(), sort_keys=True)
        return (
            n.name,
            labels,
            *facts,
            n.last_transition,
            failure,
            n.retry_at,
            n.step_attempts,
            restart,
        )

    def _write_reported(self, db: sqlite3.Connection, n: NodeFacts, now: float) -> None:
        """A node as its agent registered or reported it (``last_report`` = now)."""
        db.execute(
            "INSERT INTO nodes(name, labels, current_version, staged_version, healthy, phase,"
            " last_transition, failure, retry_at, step_attempts, restart, last_report)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET labels=excluded.labels,"
            " current_version=excluded.current_version, staged_version=excluded.staged_version,"
            " healthy=excluded.healthy, phase=excluded.phase,"
            " last_transition=excluded.last_transition, failure=excluded.failure,"
            " retry_at=excluded.retry_at, step_attempts=excluded.step_attempts,"
            " restart=excluded.restart, last_report=excluded.last_report",
            (*self._facts(n), now),
        )

    def _write_nodes(self, db: sqlite3.Connection, nodes: Iterable[NodeFacts]) -> None:
        """Nodes the controller moved (a plan, a resume): ``last_report`` stays."""
        for n in nodes:
            name, *facts = self._facts(n)
            db.execute(
                "UPDATE nodes SET labels=?, current_version=?, staged_version=?, healthy=?,"
                " phase=?, last_transition=?, failure=?, retry_at=?, step_attempts=?,"
                " restart=? WHERE name=?",
                (*facts, name),
            )

    # pools -----------------------------------------------------------------
    def put_pool(self, spec: PoolSpec, now: float) -> PoolSpec:
        """Create or replace a pool; a new target remembers the old one as previous."""
        with self._tx() as db:
            step = transitions.applied(self._pool(db, spec.name), spec, now)
            self._write_pool(db, step, now)
        return step.spec

    def pools(self) -> list[tuple[PoolSpec, PoolState]]:
        with self._lock:
            rows = self._pool_rows(self._db)
        return [self._pool_of(row) for row in rows]

    def pool(self, name: str) -> tuple[PoolSpec, PoolState] | None:
        with self._lock:
            return self._pool(self._db, name)

    def pause(self, name: str, reason: str, now: float) -> bool:
        with self._tx() as db:
            pool = self._pool(db, name)
            if pool is None:
                return False
            self._write_pool(db, transitions.paused(*pool, reason, now), now)
        return True

    def resume(self, name: str, now: float) -> bool:
        """Clear the pause, release the canary gate and retry the pool's failed nodes."""
        with self._tx() as db:
            pool = self._pool(db, name)
            if pool is None:
                return False
            self._write_pool(db, transitions.resumed(*pool, self._nodes(db), now), now)
        return True

    def rollback(self, name: str, now: float) -> PoolSpec | None:
        """Swap target and previous version and resume, so nodes move back."""
        with self._tx() as db:
            pool = self._pool(db, name)
            if pool is None:
                return None
            step = transitions.rolled_back(*pool, self._nodes(db), now)
            self._write_pool(db, step, now)
        return step.spec

    # nodes -----------------------------------------------------------------
    def nodes(self) -> list[NodeFacts]:
        with self._lock:
            return self._nodes(self._db)

    def node(self, name: str) -> NodeFacts | None:
        with self._lock:
            return self._node(self._db, name)

    def register(self, registration: Registration, now: float) -> NodeFacts:
        """Register (or re-register) a node; a re-registration keeps its phase."""
        with self._tx() as db:
            step = transitions.registered(self._node(db, registration.name), registration, now)
            self._write_reported(db, step.after, now)
            self._append(db, step.events)
        return step.after

    def report(self, name: str, report: Report, wanted: Wanted, now: float) -> Reported | None:
        """Apply an agent's report; returns the node and whether anything changed.

        An unchanged report writes nothing (no fsync), so a thousand agents
        polling cost reads, not transactions.
        """
        with self._tx() as db:
            step = report_step(self._node(db, name), report, wanted, now)
            if step is None:
                return None
            if step.changed:
                self._write_reported(db, step.after, now)
                self._append(db, step.events)
        return step.after, step.changed

    def apply_plan(self, pool: str, plan: Plan, now: float) -> tuple[NodeFacts, ...]:
        """Persist one plan's decisions atomically (grants first, agents learn later);
        the nodes it changed, as written."""
        with self._tx() as db:
            stored = self._pool(db, pool)
            named = (self._node(db, name) for name in plan.named())
            nodes = {n.name: n for n in named if n is not None}
            step = transitions.after_plan(pool, stored, nodes, plan, now)
            self._write_nodes(db, step.nodes)
            if step.state is not None:
                db.execute(
                    "UPDATE pools SET pause_reason=?, canary_released=? WHERE name=?",
                    (step.state.pause_reason, int(step.state.canary_released), pool),
                )
            self._append(db, step.events)
        return step.nodes

    def events(self, limit: int = 100) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, pool, node, kind, message FROM events ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Event(*r) for r in reversed(rows)]

"""The controller's memory: pools, nodes and events in SQLite (standard library).

Design:

* one file, WAL journal (readers never block the writer), ``synchronous=FULL``
  so a committed decision survives a crash of the controller *or* the host;
* every mutation is one ``BEGIN IMMEDIATE`` transaction, so a controller that
  dies mid-update leaves either the old or the new state, never a mix; the
  decisions of one plan (stage/reboot grants, a self-pause) are written in
  one transaction together with their events;
* a reboot grant is stored as phase ``rebooting`` *before* the agent is told,
  so a restarted controller counts it against ``maxUnavailable``;
* a :class:`Store` holds one connection guarded by a lock; the HTTP server's
  threads share it (SQLite serialises writers anyway, and the lock keeps the
  ``check_same_thread=False`` connection safe).

How an agent's report moves a node between phases is the pure function
:func:`after_report`, tested on its own. :class:`FleetStore` is the interface the
controller uses; :class:`Store` (here) and :class:`atoll.fleet.etcd_store.EtcdStore`
implement it with the same semantics.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from atoll.errors import AtollError, InputError
from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import ActionKind, NodeFacts, Phase, Plan, PoolSpec, PoolState

SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    pause_reason TEXT,
    canary_released INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,
    current_version TEXT NOT NULL,
    staged_version TEXT,
    healthy INTEGER NOT NULL,
    phase TEXT NOT NULL,
    last_transition REAL NOT NULL,
    last_report REAL NOT NULL  -- the last report that changed something
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


# The newest events a store keeps; older ones are deleted as new ones arrive
# (a rollout of N nodes writes about 5 N of them).
EVENTS_KEPT = 10_000


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    pool: str | None
    node: str | None
    kind: str
    message: str


class FleetStore(Protocol):
    """What the controller needs from a store; every mutation is atomic.

    A mutation either happens completely (with its events) or not at all, and
    the conditional updates of :meth:`apply_plan` (stage only an idle/staged
    node, grant a reboot only to a node neither rebooting nor failed, pause only
    an unpaused pool) are checked against the stored state at write time.
    """

    def close(self) -> None: ...

    def put_pool(self, spec: PoolSpec, now: float) -> PoolSpec: ...

    def pools(self) -> list[tuple[PoolSpec, PoolState]]: ...

    def pool(self, name: str) -> tuple[PoolSpec, PoolState] | None: ...

    def pause(self, name: str, reason: str, now: float) -> bool: ...

    def resume(self, name: str, now: float) -> bool: ...

    def rollback(self, name: str, now: float) -> PoolSpec | None: ...

    def nodes(self) -> list[NodeFacts]: ...

    def node(self, name: str) -> NodeFacts | None: ...

    def register(
        self, name: str, labels: Mapping[str, str], version: str, healthy: bool, now: float
    ) -> NodeFacts: ...

    def report(
        self,
        name: str,
        *,
        current: str,
        staged: str | None,
        healthy: bool,
        failed: bool,
        desired: str | None,
        now: float,
    ) -> tuple[NodeFacts, bool] | None: ...

    def apply_plan(self, pool: str, plan: Plan, now: float) -> None: ...

    def events(self, limit: int = 100) -> list[Event]: ...


def store_path(url: str) -> Path:
    """``sqlite:///abs/path.db`` -> ``/abs/path.db`` (``etcd://`` URLs: ``etcd_store``)."""
    prefix = "sqlite://"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise InputError(
            f"--store {url!r}: expected sqlite:///path/to/fleet.db",
            hint="or etcd://host:port[,host:port...] for several controller replicas",
        )
    return Path(url[len(prefix) :])


def after_report(
    old: NodeFacts,
    *,
    current: str,
    staged: str | None,
    healthy: bool,
    failed: bool,
    desired: str | None,
    now: float,
) -> NodeFacts:
    """The node's new facts after its agent reported (pure).

    * ``failed`` (the agent's verdict: its health trial failed and it rolled
      back, or it is unhealthy outside a trial) -> ``failed``; a failed node
      stays failed until the pool is resumed;
    * ``rebooting`` and now running the granted version, healthy -> ``idle``
      (``last_transition`` = now: minReadySeconds counts from here);
    * otherwise ``rebooting`` stays: the reboot has not happened yet, or the
      node is back on the granted version but not healthy *yet* (its agent's
      trial is still running; the agent says ``failed`` when the trial fails,
      and the pool's reboot timeout bounds a node that never says either);
    * ``staged`` equal to the desired version -> ``staged``; a node told to
      stage stays ``staging`` until then; on the desired version -> ``idle``.
    """
    if old.phase is Phase.FAILED:
        return replace(old, current_version=current, staged_version=staged, healthy=healthy)
    if failed:
        return NodeFacts(old.name, old.labels, current, staged, healthy, Phase.FAILED, now)
    if old.phase is Phase.REBOOTING:
        granted = old.staged_version
        if current == granted and healthy:
            return NodeFacts(old.name, old.labels, current, staged, True, Phase.IDLE, now)
        # Not rebooted yet, or back but still in its trial: keep the grant (and
        # its version, and the time it was granted: the reboot timeout) as persisted.
        return replace(old, healthy=healthy)
    if desired is not None and current == desired:
        phase = Phase.IDLE
    elif desired is not None and staged == desired:
        phase = Phase.STAGED
    elif old.phase is Phase.STAGING:
        phase = Phase.STAGING
    else:
        phase = Phase.IDLE
    moved = phase is not old.phase or current != old.current_version
    return NodeFacts(
        old.name,
        old.labels,
        current,
        staged,
        healthy,
        phase,
        now if moved else old.last_transition,
    )


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class Store:
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
        except (OSError, sqlite3.Error) as e:
            raise AtollError(f"fleet store {path}: cannot open: {e}") from e
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(
        self,
        db: sqlite3.Connection,
        now: float,
        pool: str | None,
        node: str | None,
        kind: str,
        msg: str,
    ) -> None:
        cursor = db.execute(
            "INSERT INTO events(at, pool, node, kind, message) VALUES (?,?,?,?,?)",
            (now, pool, node, kind, msg),
        )
        # Keep the newest events only (a range delete on the primary key: usually one row).
        db.execute(
            "DELETE FROM events WHERE id <= ?", (int(cursor.lastrowid or 0) - self.events_kept,)
        )

    # pools ---------------------------------------------------------------
    def put_pool(self, spec: PoolSpec, now: float) -> PoolSpec:
        """Create or replace a pool; a new target remembers the old one as previous."""
        with self._tx() as db:
            row = db.execute("SELECT spec FROM pools WHERE name=?", (spec.name,)).fetchone()
            if row is not None and spec.previous_version is None:
                old = spec_from_dict(json.loads(row[0]), f"store {self.path}: pool {spec.name}")
                if old.target_version != spec.target_version:
                    spec = replace(spec, previous_version=old.target_version)
                else:
                    spec = replace(spec, previous_version=old.previous_version)
            db.execute(
                "INSERT INTO pools(name, spec, updated_at) VALUES (?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET spec=excluded.spec,"
                " updated_at=excluded.updated_at",
                (spec.name, json.dumps(spec_to_dict(spec)), now),
            )
            self._event(db, now, spec.name, None, "apply", f"target {spec.target_version}")
        return spec

    def pools(self) -> list[tuple[PoolSpec, PoolState]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, spec, pause_reason, canary_released FROM pools ORDER BY name"
            ).fetchall()
        return [
            (
                spec_from_dict(json.loads(spec), f"store {self.path}: pool {name}"),
                PoolState(pause_reason=reason, canary_released=bool(released)),
            )
            for name, spec, reason, released in rows
        ]

    def pool(self, name: str) -> tuple[PoolSpec, PoolState] | None:
        for spec, state in self.pools():
            if spec.name == name:
                return spec, state
        return None

    def pause(self, name: str, reason: str, now: float) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE pools SET pause_reason=? WHERE name=?", (reason, name))
            if cur.rowcount:
                self._event(db, now, name, None, "pause", reason)
            return cur.rowcount > 0

    def resume(self, name: str, now: float) -> bool:
        """Clear the pause, release the canary gate and retry the pool's failed nodes."""
        spec_state = self.pool(name)
        if spec_state is None:
            return False
        spec = spec_state[0]
        with self._tx() as db:
            db.execute(
                "UPDATE pools SET pause_reason=NULL, canary_released=1 WHERE name=?", (name,)
            )
            for node in self._nodes(db):
                if node.phase is Phase.FAILED and matches(spec.selector, node.labels):
                    db.execute(
                        "UPDATE nodes SET phase=?, last_transition=? WHERE name=?",
                        (Phase.IDLE.value, now, node.name),
                    )
            self._event(db, now, name, None, "resume", "resumed by operator")
        return True

    def rollback(self, name: str, now: float) -> PoolSpec | None:
        """Swap target and previous version, then resume so nodes move back."""
        spec_state = self.pool(name)
        if spec_state is None:
            return None
        spec = spec_state[0]
        if spec.previous_version is None:
            raise InputError(f"pool {name}: no previous version to roll back to")
        back = replace(
            spec, target_version=spec.previous_version, previous_version=spec.target_version
        )
        with self._tx() as db:
            db.execute(
                "UPDATE pools SET spec=?, updated_at=? WHERE name=?",
                (json.dumps(spec_to_dict(back)), now, name),
            )
            self._event(db, now, name, None, "rollback", f"target back to {back.target_version}")
        self.resume(name, now)
        return back

    # nodes ---------------------------------------------------------------
    @staticmethod
    def _row(row: Sequence[Any]) -> NodeFacts:
        name, labels, current, staged, healthy, phase, since = row
        return NodeFacts(
            name, json.loads(labels), current, staged, bool(healthy), Phase(phase), since
        )

    def _nodes(self, db: sqlite3.Connection) -> list[NodeFacts]:
        rows = db.execute(
            "SELECT name, labels, current_version, staged_version, healthy, phase, "
            "last_transition FROM nodes ORDER BY name"
        ).fetchall()
        return [self._row(r) for r in rows]

    def nodes(self) -> list[NodeFacts]:
        with self._lock:
            return self._nodes(self._db)

    def node(self, name: str) -> NodeFacts | None:
        with self._lock:
            row = self._db.execute(
                "SELECT name, labels, current_version, staged_version, healthy, phase, "
                "last_transition FROM nodes WHERE name=?",
                (name,),
            ).fetchone()
        return None if row is None else self._row(row)

    def _write_node(self, db: sqlite3.Connection, n: NodeFacts, now: float) -> None:
        db.execute(
            "INSERT INTO nodes(name, labels, current_version, staged_version, healthy, phase,"
            " last_transition, last_report) VALUES (?,?,?,?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET labels=excluded.labels,"
            " current_version=excluded.current_version, staged_version=excluded.staged_version,"
            " healthy=excluded.healthy, phase=excluded.phase,"
            " last_transition=excluded.last_transition, last_report=excluded.last_report",
            (
                n.name,
                json.dumps(dict(n.labels), sort_keys=True),
                n.current_version,
                n.staged_version,
                int(n.healthy),
                n.phase.value,
                n.last_transition,
                now,
            ),
        )

    def register(
        self, name: str, labels: Mapping[str, str], version: str, healthy: bool, now: float
    ) -> NodeFacts:
        """Register (or re-register) a node; a re-registration keeps its phase."""
        with self._tx() as db:
            row = db.execute(
                "SELECT name, labels, current_version, staged_version, healthy, phase, "
                "last_transition FROM nodes WHERE name=?",
                (name,),
            ).fetchone()
            if row is None:
                node = NodeFacts(name, dict(labels), version, None, healthy, Phase.IDLE, now)
                self._event(db, now, None, name, "register", f"version {version}")
            else:
                node = replace(self._row(row), labels=dict(labels))
            self._write_node(db, node, now)
        return node

    def report(
        self,
        name: str,
        *,
        current: str,
        staged: str | None,
        healthy: bool,
        failed: bool,
        desired: str | None,
        now: float,
    ) -> tuple[NodeFacts, bool] | None:
        """Apply an agent's report; returns the node and whether anything changed.

        An unchanged report writes nothing (no fsync), so a thousand agents
        polling cost reads, not transactions.
        """
        with self._tx() as db:
            row = db.execute(
                "SELECT name, labels, current_version, staged_version, healthy, phase, "
                "last_transition FROM nodes WHERE name=?",
                (name,),
            ).fetchone()
            if row is None:
                return None
            old = self._row(row)
            new = after_report(
                old,
                current=current,
                staged=staged,
                healthy=healthy,
                failed=failed,
                desired=desired,
                now=now,
            )
            if new == old:
                return new, False
            self._write_node(db, new, now)
            if new.phase is not old.phase:
                self._event(
                    db, now, None, name, "phase", f"{old.phase} -> {new.phase} on {current}"
                )
        return new, True

    def apply_plan(self, pool: str, plan: Plan, now: float) -> None:
        """Persist one plan's decisions atomically (grants first, agents learn later)."""
        with self._tx() as db:
            for action in plan.actions:
                if action.kind is ActionKind.STAGE:
                    db.execute(
                        "UPDATE nodes SET phase=? WHERE name=? AND phase IN (?, ?)",
                        (Phase.STAGING.value, action.node, Phase.IDLE.value, Phase.STAGED.value),
                    )
                else:
                    db.execute(
                        "UPDATE nodes SET phase=?, staged_version=?, last_transition=? "
                        "WHERE name=? AND phase NOT IN (?, ?)",
                        (
                            Phase.REBOOTING.value,
                            action.version,
                            now,
                            action.node,
                            Phase.REBOOTING.value,
                            Phase.FAILED.value,
                        ),
                    )
                self._event(db, now, pool, action.node, action.kind.value, action.version)
            if plan.pause_reason is not None:
                db.execute(
                    "UPDATE pools SET pause_reason=? WHERE name=? AND pause_reason IS NULL",
                    (plan.pause_reason, pool),
                )
                self._event(db, now, pool, None, "pause", plan.pause_reason)

    def events(self, limit: int = 100) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, pool, node, kind, message FROM events ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Event(*r) for r in reversed(rows)]

"""The controller's memory in etcd: the same :class:`FleetStore` as SQLite, shared by replicas.

Layout under a prefix (default ``/atoll/fleet``), one JSON document per key::

    PREFIX/pools/NAME     {"spec": pool.toml as JSON, "pause_reason", "canary_released",
                           "updated_at"}
    PREFIX/nodes/NAME     {"labels", "current", "staged", "healthy", "phase", "last_transition",
                           "last_report", "failure" (the protocol's JSON or null), "retry_at",
                           "step_attempts", "restart" (the protocol's JSON or null)}
                          (the last four may be absent: null, null, 0, null)
    PREFIX/events/TOKEN-I {"at", "pool", "node", "kind", "message"}
    PREFIX/leader         the elected replica's name (attached to its lease)

Design:

* **optimistic transactions instead of SQLite's ``BEGIN IMMEDIATE``**: a
  mutation reads the keys it needs (noting each key's ``mod_revision``),
  decides with :mod:`atoll.fleet.transitions` (the rules SQLite uses too),
  then writes every changed key *and its events* in one etcd transaction that
  succeeds only if none of the written keys changed since it was read. On a
  conflict (another replica or thread wrote first) it reads again and decides
  again, a bounded number of times. A plan's transaction also compares the
  pool's key (a pause or rollback since its read is seen). A transaction holds
  at most :data:`MAX_TXN_OPS` operations (etcd's ``--max-txn-ops``): a plan
  writes at most :data:`PLAN_DECISIONS` decisions (:func:`bounded`, the rest
  at the next tick), a resume its nodes in chunks of :data:`RESUME_CHUNK`;
* **fencing**: once :meth:`EtcdStore.election` made this store a candidate
  (:attr:`EtcdStore.fence` = ``(leader key, identity)``), :meth:`apply_plan`
  (the only place decisions are written) also requires the leader key to still
  hold this replica's identity, so a replica that lost its lease while planning
  cannot grant a reboot: it gets :class:`NotLeader`. Registrations, reports and
  operator verbs are facts, not decisions: any replica writes them;
* event ids are ``create_revision * 1000 + position in the transaction``, so
  they grow in the order etcd committed them, like SQLite's AUTOINCREMENT;
* only the newest ``events_kept`` events are kept: after a write with events,
  at most once a minute, the count is checked and older ones are deleted.

Time is not read here: callers pass ``now`` as with SQLite.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from atoll.errors import InputError
from atoll.fleet import transitions
from atoll.fleet.etcd import (
    EtcdClient,
    EtcdError,
    LeaderElection,
    mod_revision_is,
    parse_endpoints,
    value_is,
)
from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import ActionKind, NodeFacts, Phase, Plan, PoolSpec, PoolState
from atoll.fleet.store import EVENTS_KEPT, Decoded, Event, NotLeader, Reported, Wanted, report_step
from atoll.fleet.transitions import NewEvent, NodeStep, PoolStep
from atoll.wire.fleet import ProtocolError, Registration, Report, Restart, StepFailure

T = TypeVar("T")
log = logging.getLogger(__name__)

ATTEMPTS = 20
"""Conflicting transactions retried before giving up (each retry re-reads)."""
MAX_TXN_OPS = 100
"""Operations (compares, or writes) one transaction may hold: below etcd's default
``--max-txn-ops`` (128), which refuses a bigger one ("too many operations in txn request")."""
PLAN_DECISIONS = (MAX_TXN_OPS - 4) // 2
"""Decisions of a plan written per transaction: each writes a node and an event (and
compares the node); the pool, its pause event and the fence fit in the rest."""
RESUME_CHUNK = MAX_TXN_OPS - 8
"""Nodes a resume (or rollback) writes per transaction."""


def bounded(plan: Plan, limit: int = PLAN_DECISIONS) -> Plan:
    """``plan`` with at most ``limit`` decisions, so one transaction holds it: its
    reboot timeouts first, then its grants (reboot, rollback), then its stage
    orders, each in the plan's order; the rest is left for the next tick (the next
    plan decides them again). Pure."""
    if len(plan.failures) + len(plan.actions) <= limit:
        return plan
    failures = dict(list(plan.failures.items())[:limit])
    room = limit - len(failures)
    grants = [a for a in plan.actions if a.kind is not ActionKind.STAGE]
    stages = [a for a in plan.actions if a.kind is ActionKind.STAGE]
    return replace(plan, failures=failures, actions=tuple((grants + stages)[:room]))


@dataclass
class _Changes:
    """What one decision writes: documents by key, and events in order."""

    puts: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def append(self, events: Iterable[NewEvent]) -> None:
        self.events += [
            {"at": e.at, "pool": e.pool, "node": e.node, "kind": e.kind, "message": e.message}
            for e in events
        ]


@dataclass(frozen=True)
class _Read:
    """The documents a decision is based on, with the revision each was read at."""

    docs: Mapping[str, dict[str, Any]]
    revisions: Mapping[str, int]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.docs.get(key)


def _facts_doc(n: NodeFacts) -> dict[str, Any]:
    return {
        "labels": dict(sorted(n.labels.items())),
        "current": n.current_version,
        "staged": n.staged_version,
        "healthy": n.healthy,
        "phase": n.phase.value,
        "last_transition": n.last_transition,
        "failure": None if n.failure is None else n.failure.to_json(),
        "retry_at": n.retry_at,
        "step_attempts": n.step_attempts,
        "restart": None if n.restart is None else n.restart.to_json(),
    }


def _failure(key: str, raw: object) -> StepFailure | None:
    if raw is None:
        return None
    try:
        return StepFailure.from_json(raw)
    except ProtocolError as e:
        raise EtcdError(f"etcd key {key}: failure: {e}") from e


def _restart(key: str, raw: object) -> Restart | None:
    if raw is None:
        return None
    try:
        return Restart.from_json(raw)
    except ProtocolError as e:
        raise EtcdError(f"etcd key {key}: restart: {e}") from e


def _pool_doc(step: PoolStep, now: float) -> dict[str, Any]:
    return {
        "spec": spec_to_dict(step.spec),
        "pause_reason": step.state.pause_reason,
        "canary_released": step.state.canary_released,
        "updated_at": now,
    }


class EtcdStore:
    """etcd-backed state; see the module docstring."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        prefix: str = "/atoll/fleet",
        events_kept: int = EVENTS_KEPT,
        trim_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.prefix = prefix.rstrip("/")
        self.events_kept = events_kept
        self._trim_every = trim_every  # seconds between checks of the event count
        self._clock = clock
        self._last_trim: float | None = None
        self._decoded: Decoded[str] = Decoded(self._decode_node)
        self.fence: tuple[str, str] | None = None
        """``(leader key, identity)``: when set, plans are written only while we lead."""

    def close(self) -> None:
        pass  # one HTTP request per call: nothing stays open

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def election(self, identity: str, *, ttl: int = 5) -> LeaderElection:
        """This replica's side of the election on ``PREFIX/leader``; from now on the
        store writes plans only while that key names ``identity`` (the fence)."""
        key = f"{self.prefix}/leader"
        self.fence = (key, identity)
        return LeaderElection(self._client, key, identity, ttl=ttl)

    # keys and documents -------------------------------------------------
    def _pool_key(self, name: str) -> str:
        return f"{self.prefix}/pools/{name}"

    def _node_key(self, name: str) -> str:
        return f"{self.prefix}/nodes/{name}"

    def _decode(self, key: str, raw: str) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise EtcdError(f"etcd key {key}: not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise EtcdError(f"etcd key {key}: expected a JSON object")
        return doc

    def _pool(self, key: str, doc: dict[str, Any]) -> tuple[PoolSpec, PoolState]:
        spec = spec_from_dict(doc["spec"], f"etcd key {key}")
        return spec, PoolState(
            pause_reason=doc.get("pause_reason"),
            canary_released=bool(doc.get("canary_released", False)),
        )

    def _node(self, key: str, doc: dict[str, Any]) -> NodeFacts:
        return NodeFacts(
            key.rsplit("/", 1)[1],
            dict(doc["labels"]),
            doc["current"],
            doc.get("staged"),
            bool(doc["healthy"]),
            Phase(doc["phase"]),
            float(doc["last_transition"]),
            failure=_failure(key, doc.get("failure")),
            retry_at=None if doc.get("retry_at") is None else float(doc["retry_at"]),
            step_attempts=int(doc.get("step_attempts") or 0),
            restart=_restart(key, doc.get("restart")),
        )

    def _read(self, keys: Sequence[str] = (), prefixes: Sequence[str] = ()) -> _Read:
        docs: dict[str, dict[str, Any]] = {}
        revisions: dict[str, int] = {key: 0 for key in keys}  # 0: absent when read
        found = [kv for key in keys for kv in self._client.range(key)]
        found += [kv for p in prefixes for kv in self._client.range(p, prefix=True)]
        for kv in found:
            docs[kv.key] = self._decode(kv.key, kv.value)
            revisions[kv.key] = kv.mod_revision
        return _Read(docs, revisions)

    def _read_nodes(self, read: _Read) -> list[NodeFacts]:
        nodes = f"{self.prefix}/nodes/"
        return [self._node(k, doc) for k, doc in sorted(read.docs.items()) if k.startswith(nodes)]

    def _transact(
        self,
        decide: Callable[[_Read], tuple[_Changes, T]],
        *,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        fenced: bool = False,
        watched: Sequence[str] = (),
    ) -> T:
        """Read, decide, then write iff no written key (nor any ``watched`` one) moved
        since (see the docstring)."""
        for _attempt in range(ATTEMPTS):
            read = self._read(keys, prefixes)
            changes, result = decide(read)
            if not changes.puts and not changes.events:
                return result
            compared = [*changes.puts, *(k for k in watched if k not in changes.puts)]
            compares = [mod_revision_is(k, read.revisions.get(k, 0)) for k in compared]
            if fenced and self.fence is not None:
                compares.append(value_is(*self.fence))
            token = secrets.token_hex(6)
            puts = [(k, json.dumps(doc, sort_keys=True)) for k, doc in changes.puts.items()]
            puts += [
                (f"{self.prefix}/events/{token}-{i:03d}", json.dumps(event))
                for i, event in enumerate(changes.events)
            ]
            if self._client.txn(compares, puts):
                if changes.events:
                    self._maybe_trim()
                return result
            if fenced and self.fence is not None:
                self._check_fence()
        raise EtcdError(
            f"etcd {self.prefix}: gave up after {ATTEMPTS} conflicting transactions on "
            f"{sorted(keys) + sorted(prefixes)}"
        )

    def _check_fence(self) -> None:
        assert self.fence is not None
        key, identity = self.fence
        holder = self._client.get(key)
        if holder != identity:
            raise NotLeader(
                f"etcd key {key}: held by {holder!r}, not {identity!r}: "
                "this replica is not the leader"
            )

    def _maybe_trim(self) -> None:
        now = self._clock()
        if self._last_trim is not None and now - self._last_trim < self._trim_every:
            return
        self._last_trim = now
        try:
            self.trim_events()
        except EtcdError as e:  # the write succeeded; trimming is tried again later
            log.warning("etcd %s: trimming events: %s", self.prefix, e)

    def trim_events(self) -> int:
        """Delete all but the newest ``events_kept`` events; returns how many went."""
        events = f"{self.prefix}/events/"
        if self._client.count(events, prefix=True) <= self.events_kept:
            return 0
        newest = self._client.range(
            events, prefix=True, limit=self.events_kept + 1, newest_first=True, keys_only=True
        )
        # The oldest event to keep was created after this revision.
        cutoff = newest[-1].create_revision
        old = self._client.range(
            events, prefix=True, oldest_first=True, keys_only=True, max_create_revision=cutoff
        )
        keys = [kv.key for kv in old]
        self._client.delete(keys)
        return len(keys)

    # writing decisions ----------------------------------------------------
    def _put_nodes(self, changes: _Changes, read: _Read, nodes: Iterable[NodeFacts]) -> None:
        """Nodes the controller moved (a plan, a resume): ``last_report`` stays."""
        for n in nodes:
            key = self._node_key(n.name)
            changes.puts[key] = {**read.docs[key], **_facts_doc(n)}

    def _put_reported(self, changes: _Changes, step: NodeStep, now: float) -> None:
        """A node as its agent registered or reported it (``last_report`` = now)."""
        changes.puts[self._node_key(step.after.name)] = {
            **_facts_doc(step.after),
            "last_report": now,
        }
        changes.append(step.events)

    def _pool_change(
        self, name: str, now: float, step: Callable[[tuple[PoolSpec, PoolState], _Read], PoolStep]
    ) -> PoolStep | None:
        """Apply an operator verb to an existing pool (and the nodes); None if there is none."""
        key = self._pool_key(name)

        def decide(read: _Read) -> tuple[_Changes, PoolStep | None]:
            changes = _Changes()
            doc = read.get(key)
            if doc is None:
                return changes, None
            result = step(self._pool(key, doc), read)
            changes.puts[key] = _pool_doc(result, now)
            self._put_nodes(changes, read, result.nodes[:RESUME_CHUNK])
            changes.append(result.events)
            return changes, result

        result = self._transact(decide, keys=[key], prefixes=[f"{self.prefix}/nodes/"])
        if result is not None:
            rest = [n.name for n in result.nodes[RESUME_CHUNK:]]
            for i in range(0, len(rest), RESUME_CHUNK):
                self._resume_nodes(result, rest[i : i + RESUME_CHUNK], now)
        return result

    def _resume_nodes(self, pool: PoolStep, names: Sequence[str], now: float) -> None:
        """The nodes a resume moves beyond its first transaction, in one more each
        chunk: read again and moved by the same rule (a report since may have moved one)."""
        keys = [self._node_key(name) for name in names]

        def decide(read: _Read) -> tuple[_Changes, None]:
            changes = _Changes()
            nodes = self._read_nodes(read)
            self._put_nodes(
                changes, read, transitions.resumed(pool.spec, pool.state, nodes, now).nodes
            )
            return changes, None

        self._transact(decide, keys=keys)

    # pools ---------------------------------------------------------------
    def put_pool(self, spec: PoolSpec, now: float) -> PoolSpec:
        """Create or replace a pool; a new target remembers the old one as previous."""
        key = self._pool_key(spec.name)

        def decide(read: _Read) -> tuple[_Changes, PoolSpec]:
            doc = read.get(key)
            step = transitions.applied(None if doc is None else self._pool(key, doc), spec, now)
            changes = _Changes()
            changes.puts[key] = _pool_doc(step, now)
            changes.append(step.events)
            return changes, step.spec

        return self._transact(decide, keys=[key])

    def pools(self) -> list[tuple[PoolSpec, PoolState]]:
        kvs = self._client.range(f"{self.prefix}/pools/", prefix=True)
        return [self._pool(kv.key, self._decode(kv.key, kv.value)) for kv in kvs]

    def pool(self, name: str) -> tuple[PoolSpec, PoolState] | None:
        key = self._pool_key(name)
        kvs = self._client.range(key)
        return self._pool(key, self._decode(key, kvs[0].value)) if kvs else None

    def pause(self, name: str, reason: str, now: float) -> bool:
        key = self._pool_key(name)

        def decide(read: _Read) -> tuple[_Changes, bool]:
            changes = _Changes()
            doc = read.get(key)
            if doc is None:
                return changes, False
            step = transitions.paused(*self._pool(key, doc), reason, now)
            changes.puts[key] = _pool_doc(step, now)
            changes.append(step.events)
            return changes, True

        return self._transact(decide, keys=[key])

    def resume(self, name: str, now: float) -> bool:
        """Clear the pause, release the canary gate and retry the pool's failed nodes."""

        def step(pool: tuple[PoolSpec, PoolState], read: _Read) -> PoolStep:
            return transitions.resumed(*pool, self._read_nodes(read), now)

        return self._pool_change(name, now, step) is not None

    def rollback(self, name: str, now: float) -> PoolSpec | None:
        """Swap target and previous version and resume, so nodes move back."""

        def step(pool: tuple[PoolSpec, PoolState], read: _Read) -> PoolStep:
            return transitions.rolled_back(*pool, self._read_nodes(read), now)

        result = self._pool_change(name, now, step)
        return None if result is None else result.spec

    # nodes ---------------------------------------------------------------
    def nodes(self) -> list[NodeFacts]:
        kvs = self._client.range(f"{self.prefix}/nodes/", prefix=True)
        return self._decoded.every((kv.key, kv.value) for kv in kvs)

    def node(self, name: str) -> NodeFacts | None:
        key = self._node_key(name)
        kvs = self._client.range(key)
        return self._decoded.one(key, kvs[0].value) if kvs else None

    def _decode_node(self, key: str, raw: str) -> NodeFacts:
        return self._node(key, self._decode(key, raw))

    def register(self, registration: Registration, now: float) -> NodeFacts:
        """Register (or re-register) a node; a re-registration keeps its phase."""
        key = self._node_key(registration.name)

        def decide(read: _Read) -> tuple[_Changes, NodeFacts]:
            doc = read.get(key)
            old = None if doc is None else self._node(key, doc)
            step = transitions.registered(old, registration, now)
            changes = _Changes()
            self._put_reported(changes, step, now)
            return changes, step.after

        return self._transact(decide, keys=[key])

    def report(self, name: str, report: Report, wanted: Wanted, now: float) -> Reported | None:
        """Apply an agent's report; an unchanged report writes nothing."""
        key = self._node_key(name)

        def decide(read: _Read) -> tuple[_Changes, Reported | None]:
            changes = _Changes()
            doc = read.get(key)
            step = report_step(None if doc is None else self._node(key, doc), report, wanted, now)
            if step is None:
                return changes, None
            if step.changed:
                self._put_reported(changes, step, now)
            return changes, (step.after, step.changed)

        return self._transact(decide, keys=[key])

    def apply_plan(self, pool: str, plan: Plan, now: float) -> tuple[NodeFacts, ...]:
        """Persist one plan's decisions atomically; fenced by the leader key when set.

        The transaction compares the pool's key too (a pause or rollback since the
        plan's read is seen), and holds at most :data:`PLAN_DECISIONS` decisions
        (:func:`bounded`): the rest waits for the next tick. Returns the nodes it
        changed, as written."""
        pool_key = self._pool_key(pool)
        plan = bounded(plan)
        node_keys = sorted(self._node_key(name) for name in plan.named())

        def decide(read: _Read) -> tuple[_Changes, tuple[NodeFacts, ...]]:
            doc = read.get(pool_key)
            stored = None if doc is None else self._pool(pool_key, doc)
            nodes = {n.name: n for n in self._read_nodes(read)}
            step = transitions.after_plan(pool, stored, nodes, plan, now)
            changes = _Changes()
            self._put_nodes(changes, read, step.nodes)
            if doc is not None and step.state is not None:
                changes.puts[pool_key] = {**doc, "pause_reason": step.state.pause_reason}
            changes.append(step.events)
            return changes, step.nodes

        return self._transact(decide, keys=[pool_key, *node_keys], fenced=True, watched=[pool_key])

    def events(self, limit: int = 100) -> list[Event]:
        kvs = self._client.range(
            f"{self.prefix}/events/", prefix=True, limit=limit, newest_first=True
        )
        ordered = sorted(kvs, key=lambda kv: (kv.create_revision, kv.key))
        events = []
        for kv in ordered:
            doc = self._decode(kv.key, kv.value)
            position = int(kv.key.rsplit("-", 1)[1])
            events.append(
                Event(
                    kv.create_revision * 1000 + position,
                    float(doc["at"]),
                    doc.get("pool"),
                    doc.get("node"),
                    str(doc["kind"]),
                    str(doc["message"]),
                )
            )
        return events


def open_replica(
    url: str, replica: str, *, ttl: int = 5, prefix: str = "/atoll/fleet"
) -> tuple[EtcdStore, LeaderElection]:
    """A controller replica's store and its side of the election on ``PREFIX/leader``.

    The store is fenced by the same key, so only the elected replica writes plans."""
    try:
        endpoints = parse_endpoints(url)
    except EtcdError as e:
        raise InputError(f"--store: {e}") from e
    store = EtcdStore(EtcdClient(endpoints), prefix=prefix)
    return store, store.election(replica, ttl=ttl)

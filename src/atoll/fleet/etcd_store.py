"""The controller's memory in etcd: the same :class:`FleetStore` as SQLite, shared by replicas.

Layout under a prefix (default ``/atoll/fleet``), one JSON document per key::

    PREFIX/pools/NAME     {"spec": pool.toml as JSON, "pause_reason", "canary_released",
                           "updated_at"}
    PREFIX/nodes/NAME     {"labels", "current", "staged", "healthy", "phase", "last_transition",
                           "last_report"}
    PREFIX/events/TOKEN-I {"at", "pool", "node", "kind", "message"}

Design:

* **optimistic transactions instead of SQLite's ``BEGIN IMMEDIATE``**: a
  mutation reads the keys it needs (noting each key's ``mod_revision``),
  decides in Python with the same rules as :class:`atoll.fleet.store.Store`
  (:func:`after_report` for reports, the same conditional updates for plans),
  then writes every changed key *and its events* in one etcd transaction that
  succeeds only if none of the written keys changed since it was read. On a
  conflict (another replica or thread wrote first) it reads again and decides
  again, a bounded number of times;
* **fencing**: with :attr:`EtcdStore.fence` set to ``(leader key, identity)``,
  :meth:`apply_plan` (the only place decisions are written) also requires the
  leader key to still hold this replica's identity, so a replica that lost its
  lease while planning cannot grant a reboot: it gets :class:`NotLeader`.
  Registrations, reports and operator verbs are facts, not decisions: any
  replica writes them;
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from atoll.errors import InputError
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
from atoll.fleet.store import EVENTS_KEPT, Event, after_report, matches

T = TypeVar("T")
log = logging.getLogger(__name__)

ATTEMPTS = 20
"""Conflicting transactions retried before giving up (each retry re-reads)."""


class NotLeader(EtcdError):
    """A fenced write was refused: this replica does not hold the leader key."""


@dataclass
class _Changes:
    """What one decision writes: documents by key, and events in order."""

    puts: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def event(self, now: float, pool: str | None, node: str | None, kind: str, msg: str) -> None:
        self.events.append({"at": now, "pool": pool, "node": node, "kind": kind, "message": msg})


@dataclass(frozen=True)
class _Read:
    """The documents a decision is based on, with the revision each was read at."""

    docs: Mapping[str, dict[str, Any]]
    revisions: Mapping[str, int]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.docs.get(key)


def _node_doc(n: NodeFacts, now: float) -> dict[str, Any]:
    return {
        "labels": dict(sorted(n.labels.items())),
        "current": n.current_version,
        "staged": n.staged_version,
        "healthy": n.healthy,
        "phase": n.phase.value,
        "last_transition": n.last_transition,
        "last_report": now,
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
        self.fence: tuple[str, str] | None = None
        """``(leader key, identity)``: when set, plans are written only while we lead."""

    def close(self) -> None:
        pass  # one HTTP request per call: nothing stays open

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _transact(
        self,
        decide: Callable[[_Read], tuple[_Changes, T]],
        *,
        keys: Sequence[str] = (),
        prefixes: Sequence[str] = (),
        fenced: bool = False,
    ) -> T:
        """Read, decide, then write iff no written key moved since (see the docstring)."""
        for _attempt in range(ATTEMPTS):
            read = self._read(keys, prefixes)
            changes, result = decide(read)
            if not changes.puts and not changes.events:
                return result
            compares = [mod_revision_is(k, read.revisions.get(k, 0)) for k in changes.puts]
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
                holder = self._client.get(self.fence[0])
                if holder != self.fence[1]:
                    raise NotLeader(
                        f"etcd key {self.fence[0]}: held by {holder!r}, not {self.fence[1]!r}: "
                        "this replica is not the leader"
                    )
        raise EtcdError(
            f"etcd {self.prefix}: gave up after {ATTEMPTS} conflicting transactions on "
            f"{sorted(keys) + sorted(prefixes)}"
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

    # pools ---------------------------------------------------------------
    def put_pool(self, spec: PoolSpec, now: float) -> PoolSpec:
        """Create or replace a pool; a new target remembers the old one as previous."""
        key = self._pool_key(spec.name)

        def decide(read: _Read) -> tuple[_Changes, PoolSpec]:
            new = spec
            doc = read.get(key)
            if doc is not None and spec.previous_version is None:
                old = self._pool(key, doc)[0]
                if old.target_version != spec.target_version:
                    new = replace(spec, previous_version=old.target_version)
                else:
                    new = replace(spec, previous_version=old.previous_version)
            changes = _Changes()
            changes.puts[key] = {
                "pause_reason": None if doc is None else doc.get("pause_reason"),
                "canary_released": False if doc is None else doc.get("canary_released", False),
                "spec": spec_to_dict(new),
                "updated_at": now,
            }
            changes.event(now, spec.name, None, "apply", f"target {new.target_version}")
            return changes, new

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
            changes.puts[key] = {**doc, "pause_reason": reason}
            changes.event(now, name, None, "pause", reason)
            return changes, True

        return self._transact(decide, keys=[key])

    def resume(self, name: str, now: float) -> bool:
        """Clear the pause, release the canary gate and retry the pool's failed nodes."""
        key = self._pool_key(name)

        def decide(read: _Read) -> tuple[_Changes, bool]:
            changes = _Changes()
            doc = read.get(key)
            if doc is None:
                return changes, False
            spec = self._pool(key, doc)[0]
            changes.puts[key] = {**doc, "pause_reason": None, "canary_released": True}
            for node_key, node_doc in read.docs.items():
                if node_key == key:
                    continue
                node = self._node(node_key, node_doc)
                if node.phase is Phase.FAILED and matches(spec.selector, node.labels):
                    changes.puts[node_key] = {
                        **node_doc,
                        "phase": Phase.IDLE.value,
                        "last_transition": now,
                    }
            changes.event(now, name, None, "resume", "resumed by operator")
            return changes, True

        return self._transact(decide, keys=[key], prefixes=[f"{self.prefix}/nodes/"])

    def rollback(self, name: str, now: float) -> PoolSpec | None:
        """Swap target and previous version, then resume so nodes move back."""
        key = self._pool_key(name)

        def decide(read: _Read) -> tuple[_Changes, PoolSpec | None]:
            changes = _Changes()
            doc = read.get(key)
            if doc is None:
                return changes, None
            spec = self._pool(key, doc)[0]
            if spec.previous_version is None:
                raise InputError(f"pool {name}: no previous version to roll back to")
            back = replace(
                spec, target_version=spec.previous_version, previous_version=spec.target_version
            )
            changes.puts[key] = {**doc, "spec": spec_to_dict(back), "updated_at": now}
            changes.event(now, name, None, "rollback", f"target back to {back.target_version}")
            return changes, back

        back = self._transact(decide, keys=[key])
        if back is not None:
            self.resume(name, now)
        return back

    # nodes ---------------------------------------------------------------
    def nodes(self) -> list[NodeFacts]:
        kvs = self._client.range(f"{self.prefix}/nodes/", prefix=True)
        return [self._node(kv.key, self._decode(kv.key, kv.value)) for kv in kvs]

    def node(self, name: str) -> NodeFacts | None:
        key = self._node_key(name)
        kvs = self._client.range(key)
        return self._node(key, self._decode(key, kvs[0].value)) if kvs else None

    def register(
        self, name: str, labels: Mapping[str, str], version: str, healthy: bool, now: float
    ) -> NodeFacts:
        """Register (or re-register) a node; a re-registration keeps its phase."""
        key = self._node_key(name)

        def decide(read: _Read) -> tuple[_Changes, NodeFacts]:
            changes = _Changes()
            doc = read.get(key)
            if doc is None:
                node = NodeFacts(name, dict(labels), version, None, healthy, Phase.IDLE, now)
                changes.event(now, None, name, "register", f"version {version}")
            else:
                node = replace(self._node(key, doc), labels=dict(labels))
            changes.puts[key] = _node_doc(node, now)
            return changes, node

        return self._transact(decide, keys=[key])

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
        """Apply an agent's report; an unchanged report writes nothing."""
        key = self._node_key(name)

        def decide(read: _Read) -> tuple[_Changes, tuple[NodeFacts, bool] | None]:
            changes = _Changes()
            doc = read.get(key)
            if doc is None:
                return changes, None
            old = self._node(key, doc)
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
                return changes, (new, False)
            changes.puts[key] = _node_doc(new, now)
            if new.phase is not old.phase:
                changes.event(now, None, name, "phase", f"{old.phase} -> {new.phase} on {current}")
            return changes, (new, True)

        return self._transact(decide, keys=[key])

    def apply_plan(self, pool: str, plan: Plan, now: float) -> None:
        """Persist one plan's decisions atomically; fenced by the leader key when set."""
        pool_key = self._pool_key(pool)
        node_keys = sorted({self._node_key(a.node) for a in plan.actions})

        def decide(read: _Read) -> tuple[_Changes, None]:
            changes = _Changes()
            for action in plan.actions:
                key = self._node_key(action.node)
                doc = changes.puts.get(key) or read.get(key)
                if doc is not None:
                    phase = Phase(doc["phase"])
                    if action.kind is ActionKind.STAGE:
                        if phase in (Phase.IDLE, Phase.STAGED):
                            changes.puts[key] = {**doc, "phase": Phase.STAGING.value}
                    elif phase not in (Phase.REBOOTING, Phase.FAILED):
                        changes.puts[key] = {
                            **doc,
                            "phase": Phase.REBOOTING.value,
                            "staged": action.version,
                            "last_transition": now,
                        }
                changes.event(now, pool, action.node, action.kind.value, action.version)
            if plan.pause_reason is not None:
                doc = read.get(pool_key)
                if doc is not None and doc.get("pause_reason") is None:
                    changes.puts[pool_key] = {**doc, "pause_reason": plan.pause_reason}
                changes.event(now, pool, None, "pause", plan.pause_reason)
            return changes, None

        self._transact(decide, keys=[pool_key, *node_keys], fenced=True)

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
    client = EtcdClient(endpoints)
    store = EtcdStore(client, prefix=prefix)
    election = LeaderElection(client, f"{store.prefix}/leader", replica, ttl=ttl)
    store.fence = (f"{store.prefix}/leader", replica)
    return store, election

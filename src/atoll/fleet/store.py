"""What the controller needs from its memory: the store protocol and its shared types.

The controller (:mod:`atoll.fleet.server`) depends on this module only; two
implementations keep the same state with the same semantics:

* :class:`atoll.fleet.sqlite_store.SqliteStore` (``sqlite:///path``): one file,
  one controller;
* :class:`atoll.fleet.etcd_store.EtcdStore` (``etcd://host:port,...``): several
  controller replicas, one of them elected (:class:`Election`) to write plans.

Both decide nothing themselves: every mutation reads the facts it needs, asks
:mod:`atoll.fleet.transitions` (pure) what they become, and writes the result
with its events atomically (one SQLite transaction, one etcd transaction that
compares what it read; on etcd, a plan too big for one transaction is bounded
and a big resume chunked: :mod:`atoll.fleet.etcd_store`). Which implementation
a ``--store`` URL names is chosen by the CLI (:mod:`atoll.fleet.cli`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from atoll.errors import AtollError
from atoll.fleet.rollout import NodeFacts, Plan, PoolSpec, PoolState
from atoll.fleet.transitions import NodeStep, after_report
from atoll.wire.fleet import Registration, Report

# The newest events a store keeps; older ones are deleted as new ones arrive
# (a rollout of N nodes writes about 5 N of them).
EVENTS_KEPT = 10_000


class StoreError(AtollError):
    """The store cannot be read or written (cannot open, unreachable, refused)."""


class NotLeader(StoreError):
    """A fenced write was refused: this replica does not lead (any more)."""


@dataclass(frozen=True)
class Event:
    """A stored event (``GET /v1/events``); ids grow in the order events were written."""

    id: int
    at: float
    pool: str | None
    node: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class Wanted:
    """What the controller wants of a node when its agent reports: ``version``, the
    version its pool wants (``None``: no pool selects it), and ``spec``, that pool
    (whose ``on_step_failure`` decides what a step failure does)."""

    version: str | None
    spec: PoolSpec | None = None


Reported = tuple[NodeFacts, bool]
"""The node after a report and whether anything changed (:meth:`FleetStore.report`)."""


def report_step(
    old: NodeFacts | None, report: Report, wanted: Wanted, now: float
) -> NodeStep | None:
    """The stored node ``old`` after its agent's ``report`` (``None``: never registered),
    as both stores apply it (:func:`atoll.fleet.transitions.after_report`)."""
    if old is None:
        return None
    return after_report(old, report, wanted.version, now, spec=wanted.spec)


_Raw = TypeVar("_Raw", bound=Hashable)


class Decoded(Generic[_Raw]):
    """Decoded nodes by name, kept while their stored form is unchanged.

    The controller plans from every node after each report that changes one and on
    every tick, so a store reads all of them many times a second during a rollout;
    decoding a thousand unchanged records each time (JSON, enums, dataclasses) cost
    more than reading them. A record is decoded again as soon as its stored form
    (an SQLite row, an etcd value) differs from the one decoded. The decoded
    :class:`NodeFacts` are frozen and shared by every reader. Safe across threads:
    a race decodes the same record twice, harmlessly."""

    def __init__(self, decode: Callable[[str, _Raw], NodeFacts]) -> None:
        self._decode = decode
        self._by_name: dict[str, tuple[_Raw, NodeFacts]] = {}

    def one(self, name: str, raw: _Raw) -> NodeFacts:
        kept = self._by_name.get(name)
        if kept is not None and kept[0] == raw:
            return kept[1]
        facts = self._decode(name, raw)
        self._by_name[name] = (raw, facts)
        return facts

    def every(self, records: Iterable[tuple[str, _Raw]]) -> list[NodeFacts]:
        """All nodes, from a read of all of them (which also forgets deleted ones)."""
        before, kept = self._by_name, {}
        for name, raw in records:
            old = before.get(name)
            kept[name] = (
                old if old is not None and old[0] == raw else (raw, self._decode(name, raw))
            )
        self._by_name = kept
        return [facts for _raw, facts in kept.values()]


class Election(Protocol):
    """One replica's side of the leader election over a shared store.

    Only the leader writes plans (:meth:`FleetStore.apply_plan` raises
    :class:`NotLeader` otherwise). The methods raise :class:`StoreError` when the
    store cannot be reached: not knowing is not leading."""

    @property
    def identity(self) -> str:
        """This replica's name."""
        ...

    @property
    def ttl(self) -> int:
        """Seconds a silent leader keeps leading; campaign more often than that."""
        ...

    def campaign(self) -> bool:
        """Try to become (or stay) leader; True while this replica leads."""
        ...

    def leader(self) -> str | None:
        """The replica that leads now, if any."""
        ...

    def resign(self) -> None:
        """Stop leading at once (another replica takes over at its next campaign)."""
        ...


class FleetStore(Protocol):
    """What the controller needs from a store; every mutation is atomic.

    A mutation either happens completely (with its events) or not at all, and
    the conditional updates of :meth:`apply_plan` (stage only an idle/staged
    node, grant a reboot only to a healthy node neither rebooting nor failed and
    staged on that version, drop the actions when the pool is paused or left
    their version, fail by the reboot timeout only a node still rebooting into
    that version, pause only an unpaused pool:
    :func:`atoll.fleet.transitions.after_plan`) are checked
    against the stored state at write time. Failures raise :class:`StoreError`.
    """

    def close(self) -> None: ...

    def put_pool(self, spec: PoolSpec, now: float) -> PoolSpec: ...

    def pools(self) -> list[tuple[PoolSpec, PoolState]]:
        """Every pool, by name."""
        ...

    def pool(self, name: str) -> tuple[PoolSpec, PoolState] | None: ...

    def pause(self, name: str, reason: str, now: float) -> bool: ...

    def resume(self, name: str, now: float) -> bool: ...

    def rollback(self, name: str, now: float) -> PoolSpec | None: ...

    def nodes(self) -> list[NodeFacts]:
        """Every node, by name."""
        ...

    def node(self, name: str) -> NodeFacts | None: ...

    def register(self, registration: Registration, now: float) -> NodeFacts:
        """The node after its agent's registration (the protocol's message)."""
        ...

    def report(self, name: str, report: Report, wanted: Wanted, now: float) -> Reported | None:
        """The node after its agent's report (the protocol's message; :class:`Wanted`:
        what its pool wants of it) and whether anything changed (an unchanged report
        writes nothing); ``None`` for a node never registered (:func:`report_step`)."""
        ...

    def apply_plan(self, pool: str, plan: Plan, now: float) -> tuple[NodeFacts, ...]:
        """Persist one plan's decisions atomically (grants first, agents learn later);
        the nodes it changed, as written. :class:`NotLeader` when a replica that does
        not lead tries."""
        ...

    def events(self, limit: int = 100) -> list[Event]: ...

"""The fleet controller: an HTTP JSON API over the store, driving the planner.

Design:

* standard library only (``ThreadingHTTPServer``), bound to 127.0.0.1: TLS and
  authentication belong in front of it, not in this process;
* **the store is the truth**: every decision (a stage order, a reboot grant, a
  self-pause) is persisted by :meth:`FleetStore.apply_plan` before any agent can
  learn it, and a reboot grant is stored as phase ``rebooting``; a controller
  killed at any moment and restarted on the same file recomputes the same
  picture and never grants more than ``maxUnavailable``;
* **one planner at a time**: :meth:`Controller.reconcile` holds a lock, so two
  agents reporting at once cannot both take the last free slot;
* the planner runs after every report and on a timer (``tick``), so time-based
  rules (minReadySeconds) progress without reports;
* **self-protection**: at most ``max_in_flight`` requests are served at once;
  the rest get ``429`` with ``Retry-After`` at once (agents back off with jitter);
  the listen backlog is large so a burst of connections is not reset.

* **replicas** (etcd store): every replica answers the whole API; registrations,
  reports and operator verbs are facts any replica writes to the shared store.
  Only the replica elected through an etcd lease (:class:`atoll.fleet.store.Election`)
  *persists plans* (stage orders, reboot grants, self-pauses); a follower plans
  only to answer (reasons, status) and its agents learn new decisions from the
  leader's next tick. The store fences plans by the leader key, so a replica
  that lost its lease mid-plan writes nothing (:class:`NotLeader`). The
  election runs in its own thread every quarter of the lease TTL; a leader
  that stops resigns at once, one that dies is replaced within about one TTL.
  A replica never campaigns during one of its own plans (the plan lock), so a
  plan that passes the fence was read while this replica led throughout.

* **pushed grants**: ``GET /v1/nodes/NAME/desired?wait=ETAG`` is a node's
  watch: answered at once when the node's grant (pool, version, stage,
  may_reboot; the answer's ``etag``; not the reason nor the pool's ``reboot``
  policy, which the round acting on a reboot grant reads with it) differs
  from ``ETAG``, else parked in the
  watch hub (:mod:`atoll.fleet.watch`: one selector thread, no thread per
  watch) and answered by the first plan that changes it, or unchanged after
  the server's wait (60 s shortened by up to a quarter). Watches are bounded apart
  from ``max_in_flight`` (``max_watches``, and the open files limit, which the
  server raises to its hard limit); beyond, ``503`` with ``Retry-After``.
  Reports that change something share plans (:meth:`Controller.replan`), so a
  wave of agents answering at once costs a few plans, not one each.

* **watching** (``atoll fleet status POOL --watch``): a pool view carries an
  ``etag`` (a digest of the view); ``GET /v1/pools/NAME?wait=ETAG&timeout=S``
  answers as soon as the view differs from ``ETAG``, or after ``S`` seconds
  (at most 60) with the unchanged view. Waiters wake on every plan (after each
  report and every tick, which also picks up what other replicas wrote), so a
  change is seen within one tick. Long polls do not count against
  ``max_in_flight``; at most ``max_watchers`` wait at once (then 429).

Which pool owns a node: the first pool, by name, whose selector matches its labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import resource
import socket
import threading
import time
from collections.abc import Callable, Container
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs

from atoll.errors import AtollError, InputError
from atoll.fleet import transitions
from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import NodeFacts, Plan, PoolSpec, PoolState, plan
from atoll.fleet.store import Election, FleetStore, NotLeader, StoreError, Wanted
from atoll.fleet.watch import DEFAULT_MAX_WATCHES, DEFAULT_WATCH_SECONDS, WatchHub, watch_seconds
from atoll.wire.fleet import (
    WATCH_MAX,
    Desired,
    NodeRecord,
    ProtocolError,
    RebootPolicy,
    Registration,
    Report,
)

log = logging.getLogger(__name__)

PLAN_GATHER = 0.25
"""Seconds between the start of two plans that reports ask for (:meth:`Controller.replan`):
what a report may wait for its answer, so that a wave of reports shares a few plans."""

_Message = TypeVar("_Message", Registration, Report)


class HttpError(Exception):
    def __init__(
        self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _Parked:
    """A route's answer meaning: no answer from this thread, the watch hub answers."""


PARKED = _Parked()


_AnswerKey = tuple[str | None, NodeFacts, str | None, str, RebootPolicy | None]


class _Answers:
    """Each node's last answer with what it was computed from.

    After every plan the watch hub compares each parked watch with its node's
    answer; a thousand answers re-made (and their etags digested) per plan cost
    more than the plan. An answer is made again only when one of its inputs
    changed: the node's stored facts, its pool, the version and reason the plan
    gives it, the pool's reboot policy. Safe across threads (a race makes the same
    answer twice)."""

    def __init__(self) -> None:
        self._by_node: dict[str, tuple[_AnswerKey, Desired]] = {}

    def get(
        self, plans: dict[str, Plan], specs: dict[str, PoolSpec], pool: str | None, node: NodeFacts
    ) -> Desired:
        result = plans.get(pool) if pool is not None else None
        spec = specs.get(pool) if pool is not None else None
        key: _AnswerKey = (
            pool,
            node,
            None if result is None else result.desired.get(node.name),
            "" if result is None else result.waiting.get(node.name, ""),
            None if spec is None else spec.reboot,
        )
        kept = self._by_node.get(node.name)
        if kept is not None and kept[0] == key:
            return kept[1]
        answer = _answer(plans, specs, pool, node)
        self._by_node[node.name] = (key, answer)
        return answer

    def forget_all_but(self, names: Container[str], count: int) -> None:
        """Forget nodes no longer stored (``count`` of them are)."""
        if len(self._by_node) > count:
            self._by_node = {k: v for k, v in self._by_node.items() if k in names}


@dataclass(frozen=True)
class _Latest:
    """What the last plan says: each node's answer is computed from it on demand."""

    plans: dict[str, Plan]
    owners: dict[str, str]
    nodes: dict[str, NodeFacts]
    specs: dict[str, PoolSpec]
    answers: _Answers

    def answer(self, name: str) -> Desired | None:
        node = self.nodes.get(name)
        if node is None:
            return None
        return self.answers.get(self.plans, self.specs, self.owners.get(name), node)


def _answer(
    plans: dict[str, Plan], specs: dict[str, PoolSpec], pool: str | None, node: NodeFacts
) -> Desired:
    """What the node's agent is told (with its etag), given its pool's plan and spec
    (whose ``reboot`` it passes on; not part of the etag: a new policy wakes no watch,
    and the round that acts on a reboot grant reads the policy with it)."""
    result = plans.get(pool) if pool is not None else None
    if pool is None or result is None or node.name not in result.desired:
        return Desired(
            pool=None,
            version=node.current_version,
            stage=False,
            may_reboot=False,
            reason="no pool selects this node",
        ).tagged()
    told = transitions.instruction(node, result.desired[node.name])
    spec = specs.get(pool)
    return Desired(
        pool=pool,
        version=told.version,
        stage=told.stage,
        may_reboot=told.may_reboot,
        reason=result.waiting.get(node.name, ""),
        reboot=RebootPolicy.FULL if spec is None else spec.reboot,
    ).tagged()


class Controller:
    """Reconciles pools from the store; thread-safe.

    ``leading`` says whether this replica persists its plans (always, alone on
    SQLite; while elected, on etcd); ``leader`` names the replica that does."""

    def __init__(
        self,
        store: FleetStore,
        clock: Callable[[], float] = time.time,
        *,
        replica: str = "standalone",
        leading: bool = True,
        gather: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.clock = clock
        self.replica = replica
        self.leading = leading
        self.leader: str | None = replica if leading else None
        self.persisted = 0
        """Plans with decisions this replica wrote (a follower's stays 0)."""
        self.plan_lock = threading.Lock()
        """Held for a whole plan (read, decide, persist); the election takes it too."""
        self._plans: dict[str, Plan] = {}
        self._specs: dict[str, PoolSpec] = {}
        self._changed = threading.Condition()
        self.watches = WatchHub()
        """The parked watches of nodes (:mod:`atoll.fleet.watch`); told of every plan."""
        self._answers = _Answers()
        self._latest = _Latest({}, {}, {}, {}, self._answers)
        """The last plan's view: every node's answer (the watch hub's too)."""
        self._begun = 0  # plans begun (each reads the store after it begins)
        self._done = 0  # the last plan finished
        self.gather = gather
        """Seconds a report's plan waits after the last plan began (:meth:`replan`)."""
        self._monotonic = monotonic
        self._sleep = sleep
        self._began_at = -math.inf  # when the last plan began (monotonic)

    @staticmethod
    def owner(pools: list[tuple[PoolSpec, PoolState]], node: NodeFacts) -> str | None:
        return transitions.owner((spec for spec, _state in pools), node.labels)

    def reconcile(self) -> dict[str, Plan]:
        """Plan every pool and persist the decisions; returns the plans."""
        with self.plan_lock:
            plans = self._reconcile_locked()
        with self._changed:
            self._changed.notify_all()
        return plans

    def replan(self) -> None:
        """Make sure a plan reads the store after this call (a report changed it).

        Reports arriving together share one plan: a caller that finds a plan
        begun after its call already finished returns at once, so a wave of
        reports costs a few plans, not one each. With ``gather``, a plan begins at
        least that long after the one before: the reports of a wave of agents
        answering together (a grant pushed to a hundred watches) share a handful of
        plans instead of one per few reports, for at most ``gather`` s of delay.
        """
        target = self._begun + 1
        wait = self._began_at + self.gather - self._monotonic()
        if wait > 0:
            self._sleep(wait)
        with self.plan_lock:
            if self._done >= target:
                return
            self._reconcile_locked()
        with self._changed:
            self._changed.notify_all()

    def _reconcile_locked(self) -> dict[str, Plan]:
        self._begun += 1
        self._began_at = self._monotonic()
        generation = self._begun
        now = self.clock()
        pools = self.store.pools()
        by_name = {node.name: node for node in self.store.nodes()}
        members: dict[str, list[str]] = {spec.name: [] for spec, _ in pools}
        owners: dict[str, str] = {}
        for node in by_name.values():
            owner = self.owner(pools, node)
            if owner is not None:
                members[owner].append(node.name)
                owners[node.name] = owner
        plans: dict[str, Plan] = {}
        for spec, state in pools:
            names = members[spec.name]
            result = plan(spec, state, [by_name[name] for name in names], now)
            try:
                plans[spec.name] = self._persist(spec.name, result, names, by_name, now)
            except AtollError as e:  # one pool's failure does not stop the others
                log.warning("%s: pool %s: plan not persisted: %s", self.replica, spec.name, e)
                plans[spec.name] = result
            except Exception:
                log.exception("%s: pool %s: plan not persisted", self.replica, spec.name)
                plans[spec.name] = result
        self._plans = plans
        self._specs = {spec.name: spec for spec, _ in pools}
        self._answers.forget_all_but(by_name, len(by_name))
        self._latest = _Latest(plans, owners, by_name, self._specs, self._answers)
        self.watches.publish(self._latest.answer)
        self._done = generation
        return plans

    def _persist(
        self, name: str, result: Plan, members: list[str], by_name: dict[str, NodeFacts], now: float
    ) -> Plan:
        """Persist one pool's plan while leading; the plan as agents will now see it.

        The nodes it wrote replace theirs in ``by_name`` (what this plan read, which
        answers the agents), and the pool is planned again on them, so the answers
        (reasons, may_reboot) describe what agents will see. Reports written
        meanwhile are not lost: each asks for a plan begun after it."""
        if not (self.leading and result.decides):
            return result
        try:
            written = self.store.apply_plan(name, result, now)
        except NotLeader as e:
            log.warning("%s: %s; following from now on", self.replica, e)
            self.leading = False
            return result
        self.persisted += 1
        for node in written:
            by_name[node.name] = node
        spec_state = self.store.pool(name)  # the plan may have paused it
        if spec_state is None:
            return result
        return plan(spec_state[0], spec_state[1], [by_name[n] for n in members], now)

    def plans(self) -> dict[str, Plan]:
        """The last plans (made now if none was made yet)."""
        with self.plan_lock:
            if self._done:
                return dict(self._plans)
        return self.reconcile()

    def wanted(self, name: str) -> Wanted:
        """The version the last plans want for node ``name`` and its pool's spec
        (both ``None``: no pool selects it)."""
        plans = self.plans()
        with self.plan_lock:
            specs = dict(self._specs)
        for pool, result in plans.items():
            if name in result.desired:
                return Wanted(result.desired[name], specs.get(pool))
        return Wanted(None)

    def desired(self, name: str) -> Desired:
        if name not in self._latest.nodes:
            self.replan()  # registered after the last plan (shared with others meanwhile)
        plans = self.plans()
        node = self.store.node(name)  # after planning: the plan may have moved it
        if node is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"node {name!r} is not registered")
        pool = next((pool for pool, result in plans.items() if name in result.desired), None)
        with self.plan_lock:
            specs = dict(self._specs)
        return self._answers.get(plans, specs, pool, node)

    def pool_view(self, name: str) -> dict[str, Any]:
        spec_state = self.store.pool(name)
        if spec_state is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"pool {name!r} does not exist")
        result = self.plans().get(name) or self.reconcile().get(name)
        nodes = {n.name: n for n in self.store.nodes()}
        view: dict[str, Any] = {
            "spec": spec_to_dict(spec_state[0]),
            # Who decides, not the counters (watches, plans): those change with every
            # plan and would change the view's etag, waking its long polls for nothing.
            "controller": self.leadership(),
        }
        if result is not None:
            view["status"] = asdict(result.status)
            view["nodes"] = [
                {
                    "name": n,
                    "desired": result.desired[n],
                    "current": nodes[n].current_version if n in nodes else None,
                    "phase": nodes[n].phase.value if n in nodes else None,
                    "healthy": nodes[n].healthy if n in nodes else None,
                    "reason": result.waiting.get(n, ""),
                    **_failure_json(nodes.get(n)),
                    "restart": _restart_json(nodes.get(n)),
                }
                for n in result.desired
            ]
        digest = hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()
        view["etag"] = digest[:16]
        return view

    def wait_view(self, name: str, etag: str, timeout: float) -> dict[str, Any]:
        """The pool view once it differs from ``etag``, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.pool_view(name)
            left = deadline - time.monotonic()
            if view["etag"] != etag or left <= 0:
                return view
            with self._changed:
                # Woken by the next plan; the bound covers a notify that raced us.
                self._changed.wait(min(left, 1.0))

    def leadership(self) -> dict[str, Any]:
        """This replica, whether it leads, the leader."""
        return {"replica": self.replica, "leading": self.leading, "leader": self.leader}

    def controller_view(self) -> dict[str, Any]:
        return {
            **self.leadership(),
            "watches": {"parked": self.watches.parked, "limit": self.watches.limit},
            "plans": self._begun,
        }


def _failure_json(n: NodeFacts | None) -> dict[str, Any]:
    """A node's last step failure and when it retries, for the pool view."""
    if n is None:
        return {"failure": None, "retry_at": None}
    failure = None if n.failure is None else n.failure.to_json()
    return {"failure": failure, "retry_at": n.retry_at}


def _restart_json(n: NodeFacts | None) -> dict[str, Any] | None:
    """A node's last restart (soft or full, and why), for the pool view."""
    return None if n is None or n.restart is None else n.restart.to_json()


def _node_json(n: NodeFacts) -> dict[str, Any]:
    return NodeRecord(
        name=n.name,
        labels=dict(n.labels),
        current=n.current_version,
        staged=n.staged_version,
        healthy=n.healthy,
        phase=n.phase.value,
        last_transition=n.last_transition,
        failure=n.failure,
        retry_at=n.retry_at,
        restart=n.restart,
    ).to_json()


class FleetHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048  # a burst of agents must queue, not be reset

    def __init__(
        self,
        address: tuple[str, int],
        controller: Controller,
        max_in_flight: int,
        max_watchers: int = 32,
        *,
        watch_seconds: float = DEFAULT_WATCH_SECONDS,
    ) -> None:
        if address[0] != "127.0.0.1":
            raise InputError(f"--listen {address[0]}: the controller listens on 127.0.0.1 only")
        self.controller = controller
        self.in_flight = threading.BoundedSemaphore(max_in_flight)
        self.watchers = threading.BoundedSemaphore(max_watchers)
        """Pool long polls (``fleet status --watch``), each holding its thread."""
        self.watch_seconds = watch_seconds
        """The longest a node's watch is held (:func:`atoll.fleet.watch.watch_seconds`)."""
        self.rejected = 0
        self._detached: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def detach(self, request: socket.socket) -> None:
        """The watch hub owns ``request`` now: do not close it after its handler."""
        self._detached.add(request)

    def shutdown_request(self, request: Any) -> None:
        if request in self._detached:
            self._detached.discard(request)
            return
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    server: FleetHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass  # access logs would drown a thousand agents' reports

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw or b"{}")
        except ValueError as e:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{self.path}: body is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{self.path}: body must be a JSON object")
        return data

    def _serve(self, method: str) -> None:
        # A pool's long poll waits most of its time in its thread: it has its own,
        # separate bound. A node's watch parks without its thread (atoll.fleet.watch).
        pool_poll = "wait=" in self.path and self.path.startswith("/v1/pools/")
        slots = self.server.watchers if pool_poll else self.server.in_flight
        if not slots.acquire(blocking=False):
            self.server.rejected += 1
            # Drain the body so the connection stays in sync for the retry.
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(429, {"error": "controller busy"}, {"Retry-After": "1"})
            return
        # The slot bounds the work, not the write of its answer: it is free before the
        # client can read the answer, so a client's next request never meets it still
        # taken by its last one (a spurious 429 with --max-in-flight 1).
        headers: dict[str, str] | None = None
        try:
            status, payload = self._route(method)
        except HttpError as e:
            status, payload, headers = e.status, {"error": str(e)}, e.headers
        except AtollError as e:
            status, payload = HTTPStatus.BAD_REQUEST, {"error": str(e)}
        finally:
            slots.release()
        if payload is PARKED:
            self.close_connection = True
            self.server.detach(self.request)
        else:
            self._send(status, payload, headers)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _message(self, path: str, parse: Callable[[object], _Message]) -> _Message:
        """The request's body as a protocol message (:mod:`atoll.wire.fleet`)."""
        try:
            return parse(self._body())
        except ProtocolError as e:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"{path}: {e}") from e

    def _register(self, path: str) -> dict[str, Any]:
        ctl = self.server.controller
        record = ctl.store.register(self._message(path, Registration.from_json), ctl.clock())
        return _node_json(record)

    def _report(self, path: str, name: str) -> dict[str, Any]:
        ctl = self.server.controller
        report = self._message(path, Report.from_json)
        reported = ctl.store.report(name, report, ctl.wanted(name), ctl.clock())
        if reported is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"node {name!r} is not registered")
        if reported[1]:  # only a change can change the plan; the timer does the rest
            ctl.replan()
        return ctl.desired(name).to_json()

    def _desired(self, path: str, query: str, name: str) -> Any:
        """``GET /v1/nodes/NAME/desired``; with ``?wait=ETAG[&timeout=S]``, a watch:
        answered at once when the node's grant differs from ``ETAG``, else parked
        in the watch hub (which answers on a change or when the wait runs out)."""
        ctl = self.server.controller
        params = parse_qs(query)
        if "wait" not in params:
            return ctl.desired(name).to_json()
        raw = params.get("timeout", [str(WATCH_MAX)])[0]
        try:
            asked = float(raw)
        except ValueError:
            asked = -1.0
        if not 0 <= asked <= WATCH_MAX:
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                f"GET {path}: timeout {raw!r}: expected 0..{WATCH_MAX:g} s",
            )
        hub = ctl.watches
        since = hub.generation  # noted before the read: a plan after it is news
        fresh = ctl.desired(name)
        seconds = watch_seconds(asked, self.server.watch_seconds, random.random())  # noqa: S311
        if fresh.etag != params["wait"][0] or seconds <= 0:
            return fresh.to_json()
        refused = hub.park(self.request, name, fresh, seconds, since)
        if refused is not None:
            raise HttpError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"GET {path}: {hub.limit} watches are waiting already: poll, "
                f"and watch again in {refused} s",
                {"Retry-After": str(refused)},
            )
        return PARKED

    # operators: pools -----------------------------------------------------
    def _pool(self, path: str, query: str, name: str) -> dict[str, Any]:
        """``GET /v1/pools/NAME``; with ``?wait=ETAG&timeout=S``, a long poll."""
        ctl = self.server.controller
        params = parse_qs(query)
        if "wait" not in params:
            return ctl.pool_view(name)
        raw = params.get("timeout", ["30"])[0]
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= 60:
            raise HttpError(
                HTTPStatus.BAD_REQUEST, f"GET {path}: timeout {raw!r}: expected 0..60 s"
            )
        return ctl.wait_view(name, params["wait"][0], timeout)

    def _put_pool(self, path: str, name: str) -> dict[str, Any]:
        ctl = self.server.controller
        spec = spec_from_dict(self._body(), f"PUT {path}")
        if spec.name != name:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"PUT {path}: pool.name is {spec.name!r}")
        ctl.store.put_pool(spec, ctl.clock())
        ctl.reconcile()
        return ctl.pool_view(name)

    def _pool_verb(self, name: str, verb: str) -> dict[str, Any]:
        """``POST /v1/pools/NAME/pause|resume|rollback``."""
        ctl = self.server.controller
        store, now = ctl.store, ctl.clock()
        if verb == "pause":
            found = store.pause(name, "paused by operator", now)
        elif verb == "resume":
            found = store.resume(name, now)
        else:
            found = store.rollback(name, now) is not None
        if not found:
            raise HttpError(HTTPStatus.NOT_FOUND, f"pool {name!r} does not exist")
        ctl.reconcile()
        return ctl.pool_view(name)

    def _route(self, method: str) -> tuple[int, Any]:
        path, _, query = self.path.partition("?")
        for verb, pattern, handle in _ROUTES:
            match = pattern.match(path)
            if match is not None and verb == method:
                return 200, handle(self, _Request(path, query, match.groups()))
        raise HttpError(HTTPStatus.NOT_FOUND, f"{method} {path}: no such endpoint")


@dataclass(frozen=True)
class _Request:
    path: str
    query: str
    args: tuple[str, ...]
    """What the route's pattern captured: a node's or a pool's name, a verb."""


_ONE_POOL = re.compile(r"^/v1/pools/([^/]+)$")
_ROUTES: tuple[tuple[str, re.Pattern[str], Callable[[_Handler, _Request], Any]], ...] = (
    # agents
    ("POST", re.compile(r"^/v1/nodes/register$"), lambda h, r: h._register(r.path)),
    ("POST", re.compile(r"^/v1/nodes/([^/]+)/report$"), lambda h, r: h._report(r.path, *r.args)),
    (
        "GET",
        re.compile(r"^/v1/nodes/([^/]+)/desired$"),
        lambda h, r: h._desired(r.path, r.query, *r.args),
    ),
    # operators
    ("GET", re.compile(r"^/v1/controller$"), lambda h, _: h.server.controller.controller_view()),
    (
        "GET",
        re.compile(r"^/v1/events$"),
        lambda h, _: [asdict(e) for e in h.server.controller.store.events(limit=200)],
    ),
    (
        "GET",
        re.compile(r"^/v1/nodes$"),
        lambda h, _: [_node_json(n) for n in h.server.controller.store.nodes()],
    ),
    (
        "GET",
        re.compile(r"^/v1/pools$"),
        lambda h, _: [
            h.server.controller.pool_view(s.name) for s, _ in h.server.controller.store.pools()
        ],
    ),
    ("GET", _ONE_POOL, lambda h, r: h._pool(r.path, r.query, *r.args)),
    ("PUT", _ONE_POOL, lambda h, r: h._put_pool(r.path, *r.args)),
    (
        "POST",
        re.compile(r"^/v1/pools/([^/]+)/(pause|resume|rollback)$"),
        lambda h, r: h._pool_verb(*r.args),
    ),
)
"""Every endpoint: method, path, what answers (200 with its JSON); anything else is 404."""


class FleetService:
    """The server, the timer that reconciles and, with ``election``, the campaign.

    ``start``/``stop`` for tests and the CLI."""

    def __init__(
        self,
        store: FleetStore,
        host: str,
        port: int,
        *,
        max_in_flight: int = 64,
        tick: float = 1.0,
        clock: Callable[[], float] = time.time,
        election: Election | None = None,
        max_watches: int = DEFAULT_MAX_WATCHES,
        watch_seconds: float = DEFAULT_WATCH_SECONDS,
        gather: float = PLAN_GATHER,
    ) -> None:
        replica = "standalone" if election is None else election.identity
        self.controller = Controller(
            store, clock, replica=replica, leading=election is None, gather=gather
        )
        # Bounded by the open files limit in start(), which raises it: constructing a
        # service changes nothing process-wide.
        self.max_watches = max_watches
        self.controller.watches.limit = max_watches
        self.httpd = FleetHTTPServer(
            (host, port), self.controller, max_in_flight, watch_seconds=watch_seconds
        )
        self.tick = tick
        self.election = election
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def _timer(self) -> None:
        while not self._stop.wait(self.tick):
            self._timer_once()

    def campaign(self) -> None:
        """One round of the election; updates who leads."""
        assert self.election is not None
        ctl = self.controller
        try:
            # Never campaign while a plan is in flight: a plan whose facts were
            # read before this replica lost its lease, another replica decided,
            # and this one won again, would otherwise pass the store's fence
            # (the leader key holds our name again) with stale facts. Holding
            # the plan lock, the key can only come back to us between plans.
            with ctl.plan_lock:
                leading = self.election.campaign()
                leader = self.election.identity if leading else self.election.leader()
        except StoreError as e:
            # Not knowing is not leading; the store's fence covers a lease
            # that is still valid meanwhile.
            log.warning("%s: election: %s", ctl.replica, e)
            leading, leader = False, None
        if leading != ctl.leading:
            log.warning("%s: %s", ctl.replica, "now leading" if leading else "now following")
        ctl.leading, ctl.leader = leading, leader

    def _campaigner(self) -> None:
        assert self.election is not None
        every = max(0.2, self.election.ttl / 4)
        while not self._stop.wait(every):
            was_leading = self.controller.leading
            self.campaign()
            if self.controller.leading and not was_leading:
                self._timer_once()  # take over at once, not a tick later

    def _timer_once(self) -> None:
        try:
            self.controller.reconcile()
        except AtollError as e:  # etcd unreachable: keep serving, retry next tick
            log.warning("%s: reconcile failed: %s", self.controller.replica, e)
        except Exception:  # any other failure: log it, the timer keeps ticking
            log.exception("%s: reconcile failed", self.controller.replica)

    def start(self) -> None:
        self.controller.watches.limit = min(self.max_watches, _watch_room())
        self.controller.watches.start()
        targets: list[Callable[[], None]] = [self.httpd.serve_forever, self._timer]
        if self.election is not None:
            self.campaign()
            targets.append(self._campaigner)
        self.controller.reconcile()
        for target in targets:
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, *, resign: bool = True) -> None:
        """Stop serving; a leader resigns so a follower takes over at once.

        ``resign=False`` leaves the lease to expire, as a crashed replica would."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.controller.watches.stop()  # its agents reconnect (elsewhere, or here later)
        for thread in self._threads:
            thread.join(timeout=5)
        if self.election is not None and resign:
            try:
                self.election.resign()
            except StoreError as e:
                log.warning("%s: resign: %s", self.controller.replica, e)


FDS_KEPT = 256
"""File descriptors kept for everything but parked watches (store, requests, logs)."""


def _watch_room() -> int:
    """How many watches the process's file descriptors allow: the soft limit is raised
    to the hard one first (a watch is an open socket), less :data:`FDS_KEPT`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, e)
    return max(0, soft - FDS_KEPT)

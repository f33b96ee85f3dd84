"""The fleet controller: an HTTP JSON API over the store, driving the planner.

Design:

* standard library only (``ThreadingHTTPServer``), bound to 127.0.0.1: TLS and
  authentication belong in front of it, not in this process;
* **the store is the truth**: every decision (a stage order, a reboot grant, a
  self-pause) is persisted by :meth:`Store.apply_plan` before any agent can
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
  Only the replica elected through an etcd lease (:class:`LeaderElection`)
  *persists plans* (stage orders, reboot grants, self-pauses); a follower plans
  only to answer (reasons, status) and its agents learn new decisions from the
  leader's next tick. The store fences plans by the leader key, so a replica
  that lost its lease mid-plan writes nothing (:class:`NotLeader`). The
  election runs in its own thread every quarter of the lease TTL; a leader
  that stops resigns at once, one that dies is replaced within about one TTL.
  A replica never campaigns during one of its own plans (the plan lock), so a
  plan that passes the fence was read while this replica led throughout.

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
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from atoll.errors import AtollError, InputError
from atoll.fleet.etcd import EtcdError, LeaderElection
from atoll.fleet.etcd_store import NotLeader
from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import NodeFacts, Phase, Plan, PoolSpec, PoolState, plan
from atoll.fleet.store import FleetStore, matches

log = logging.getLogger(__name__)

_NODE = re.compile(r"^/v1/nodes/([^/]+)/(report|desired)$")
_POOL = re.compile(r"^/v1/pools/([^/]+)(?:/(pause|resume|rollback))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        self._changed = threading.Condition()

    @staticmethod
    def owner(pools: list[tuple[PoolSpec, PoolState]], node: NodeFacts) -> str | None:
        for spec, _state in pools:
            if matches(spec.selector, node.labels):
                return spec.name
        return None

    def reconcile(self) -> dict[str, Plan]:
        """Plan every pool and persist the decisions; returns the plans."""
        with self.plan_lock:
            now = self.clock()
            pools = self.store.pools()
            members: dict[str, list[NodeFacts]] = {spec.name: [] for spec, _ in pools}
            for node in self.store.nodes():
                owner = self.owner(pools, node)
                if owner is not None:
                    members[owner].append(node)
            plans: dict[str, Plan] = {}
            for spec, state in pools:
                result = plan(spec, state, members[spec.name], now)
                if self.leading and (result.actions or result.pause_reason):
                    try:
                        self.store.apply_plan(spec.name, result, now)
                    except NotLeader as e:
                        log.warning("%s: %s; following from now on", self.replica, e)
                        self.leading = False
                        plans[spec.name] = result
                        continue
                    self.persisted += 1
                    # Re-plan on the persisted facts so the cached answers
                    # (reasons, may_reboot) describe what agents will see.
                    spec_state = self.store.pool(spec.name)
                    if spec_state is not None:
                        nodes = [n for n in self.store.nodes() if self.owner(pools, n) == spec.name]
                        result = plan(spec_state[0], spec_state[1], nodes, now)
                plans[spec.name] = result
            self._plans = plans
        with self._changed:
            self._changed.notify_all()
        return plans

    def plans(self) -> dict[str, Plan]:
        with self.plan_lock:
            cached = dict(self._plans)
        return cached or self.reconcile()

    def desired(self, name: str) -> dict[str, Any]:
        plans = self.plans()
        if not any(name in p.desired for p in plans.values()):
            plans = self.reconcile()  # registered after the last plan
        node = self.store.node(name)  # after planning: the plan may have moved it
        if node is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"node {name!r} is not registered")
        for pool, result in plans.items():
            if name in result.desired:
                rebooting = node.phase is Phase.REBOOTING
                version = (
                    (node.staged_version or result.desired[name])
                    if rebooting
                    else (result.desired[name])
                )
                return {
                    "pool": pool,
                    "version": version,
                    "stage": node.phase in (Phase.STAGING, Phase.STAGED)
                    and node.current_version != version,
                    "may_reboot": rebooting and node.current_version != version,
                    "reason": result.waiting.get(name, ""),
                }
        return {
            "pool": None,
            "version": node.current_version,
            "stage": False,
            "may_reboot": False,
            "reason": "no pool selects this node",
        }

    def pool_view(self, name: str) -> dict[str, Any]:
        spec_state = self.store.pool(name)
        if spec_state is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"pool {name!r} does not exist")
        result = self.plans().get(name) or self.reconcile().get(name)
        nodes = {n.name: n for n in self.store.nodes()}
        view: dict[str, Any] = {
            "spec": spec_to_dict(spec_state[0]),
            "controller": self.controller_view(),
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

    def controller_view(self) -> dict[str, Any]:
        return {"replica": self.replica, "leading": self.leading, "leader": self.leader}


def _node_json(n: NodeFacts) -> dict[str, Any]:
    return {
        "name": n.name,
        "labels": dict(n.labels),
        "current": n.current_version,
        "staged": n.staged_version,
        "healthy": n.healthy,
        "phase": n.phase.value,
        "last_transition": n.last_transition,
    }


class FleetHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048  # a burst of agents must queue, not be reset

    def __init__(
        self,
        address: tuple[str, int],
        controller: Controller,
        max_in_flight: int,
        max_watchers: int = 32,
    ) -> None:
        if address[0] != "127.0.0.1":
            raise InputError(f"--listen {address[0]}: the controller listens on 127.0.0.1 only")
        self.controller = controller
        self.in_flight = threading.BoundedSemaphore(max_in_flight)
        self.watchers = threading.BoundedSemaphore(max_watchers)
        self.rejected = 0
        super().__init__(address, _Handler)


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
        # A long poll waits most of its time: it has its own, separate bound.
        slots = self.server.watchers if "wait=" in self.path else self.server.in_flight
        if not slots.acquire(blocking=False):
            self.server.rejected += 1
            # Drain the body so the connection stays in sync for the retry.
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send(429, {"error": "controller busy"}, {"Retry-After": "1"})
            return
        try:
            status, payload = self._route(method)
            self._send(status, payload)
        except HttpError as e:
            self._send(e.status, {"error": str(e)})
        except AtollError as e:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        finally:
            slots.release()

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _route(self, method: str) -> tuple[int, Any]:
        ctl = self.server.controller
        store = ctl.store
        path, _, query = self.path.partition("?")
        if method == "POST" and path == "/v1/nodes/register":
            body = self._body()
            name = body.get("name")
            labels = body.get("labels", {})
            version = body.get("version")
            if not isinstance(name, str) or not _NAME.match(name):
                raise HttpError(HTTPStatus.BAD_REQUEST, f"{path}: bad name {name!r}")
            if not isinstance(version, str) or not version:
                raise HttpError(HTTPStatus.BAD_REQUEST, f"{path}: bad version {version!r}")
            if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
            ):
                raise HttpError(HTTPStatus.BAD_REQUEST, f"{path}: labels must map str to str")
            node = store.register(
                name, labels, version, bool(body.get("healthy", True)), ctl.clock()
            )
            return 200, _node_json(node)
        if path == "/v1/controller" and method == "GET":
            return 200, ctl.controller_view()
        if path == "/v1/events" and method == "GET":
            return 200, [asdict(e) for e in store.events(limit=200)]
        if path == "/v1/nodes" and method == "GET":
            return 200, [_node_json(n) for n in store.nodes()]
        match = _NODE.match(path)
        if match:
            name, verb = match.groups()
            if verb == "desired" and method == "GET":
                return 200, ctl.desired(name)
            if verb == "report" and method == "POST":
                body = self._body()
                version, staged = body.get("version"), body.get("staged")
                if not isinstance(version, str) or not (staged is None or isinstance(staged, str)):
                    raise HttpError(HTTPStatus.BAD_REQUEST, f"{path}: bad version/staged")
                for key in ("healthy", "failed"):
                    if not isinstance(body.get(key, False), bool):
                        raise HttpError(
                            HTTPStatus.BAD_REQUEST, f"{path}: {key} must be true or false"
                        )
                wanted = ctl.plans()
                desired = next(
                    (p.desired[name] for p in wanted.values() if name in p.desired), None
                )
                reported = store.report(
                    name,
                    current=version,
                    staged=staged,
                    healthy=bool(body.get("healthy", True)),
                    failed=bool(body.get("failed", False)),
                    desired=desired,
                    now=ctl.clock(),
                )
                if reported is None:
                    raise HttpError(HTTPStatus.NOT_FOUND, f"node {name!r} is not registered")
                if reported[1]:  # only a change can change the plan; the timer does the rest
                    ctl.reconcile()
                return 200, ctl.desired(name)
        if path == "/v1/pools" and method == "GET":
            return 200, [ctl.pool_view(spec.name) for spec, _ in store.pools()]
        match = _POOL.match(path)
        if match:
            name, verb = match.groups()
            if verb is None and method == "GET":
                params = parse_qs(query)
                if "wait" not in params:
                    return 200, ctl.pool_view(name)
                raw = params.get("timeout", ["30"])[0]
                try:
                    timeout = float(raw)
                except ValueError:
                    timeout = -1.0
                if not 0 <= timeout <= 60:
                    raise HttpError(
                        HTTPStatus.BAD_REQUEST, f"GET {path}: timeout {raw!r}: expected 0..60 s"
                    )
                return 200, ctl.wait_view(name, params["wait"][0], timeout)
            if verb is None and method == "PUT":
                spec = spec_from_dict(self._body(), f"PUT {path}")
                if spec.name != name:
                    raise HttpError(
                        HTTPStatus.BAD_REQUEST, f"PUT {path}: pool.name is {spec.name!r}"
                    )
                store.put_pool(spec, ctl.clock())
                ctl.reconcile()
                return 200, ctl.pool_view(name)
            if verb is not None and method == "POST":
                now = ctl.clock()
                if verb == "pause":
                    found = store.pause(name, "paused by operator", now)
                elif verb == "resume":
                    found = store.resume(name, now)
                else:
                    found = store.rollback(name, now) is not None
                if not found:
                    raise HttpError(HTTPStatus.NOT_FOUND, f"pool {name!r} does not exist")
                ctl.reconcile()
                return 200, ctl.pool_view(name)
        raise HttpError(HTTPStatus.NOT_FOUND, f"{method} {path}: no such endpoint")


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
        election: LeaderElection | None = None,
    ) -> None:
        replica = "standalone" if election is None else election.identity
        self.controller = Controller(store, clock, replica=replica, leading=election is None)
        self.httpd = FleetHTTPServer((host, port), self.controller, max_in_flight)
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
        except EtcdError as e:
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

    def start(self) -> None:
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
        for thread in self._threads:
            thread.join(timeout=5)
        if self.election is not None and resign:
            try:
                self.election.resign()
            except EtcdError as e:
                log.warning("%s: resign: %s", self.controller.replica, e)

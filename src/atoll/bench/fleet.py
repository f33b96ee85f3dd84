"""Fleet benchmark (issue 6's targets): simulated agents speaking the real protocol on loopback.

Every measurement runs the controller as its own process (``atoll fleet
serve`` on a fresh SQLite file under ``workdir``), so the simulation's threads
never share its interpreter lock and its memory and CPU time can be read from
``/proc`` (:mod:`atoll.tools.procfs`). The agents are threads using
:class:`~atoll.wire.fleet.FleetClient` (with its jittered backoff, and the
protocol's typed messages), exactly what a node's agent calls.

* **registration burst**: ``agents`` threads released by one barrier register
  once each. Reported: how many registered, errors, 429 answers (visible as
  retries), p50/p90/max latency, wall time, the controller's memory.
* **rollout vs ideal**: ``rollout_nodes`` agents roll v1 -> v2 with
  maxUnavailable 10%; each reboot takes ``reboot_seconds``. The ideal is
  ``waves * reboot_seconds`` (``waves = ceil(nodes / maxUnavailable)``): the
  issue's figure is the measured time over it. Agents poll every ``poll``
  seconds (random phase), and a node granted a reboot learns it at its next
  poll, so each wave also waits up to one poll interval that belongs to the
  agents, not the controller: the overhead beyond ``waves * (reboot + poll)``
  is reported beside it. The timeline (nodes per version and nodes
  unavailable over time) comes from the agents' own clocks and is plotted by
  :mod:`atoll.bench.plots`.
* **scale**: ``scale_nodes`` nodes registered (a few client threads), then a
  pool over all of them applied: the controller's resident memory empty and at
  that size, the time to plan the pool, a pool status and node reports at
  that size.
"""

from __future__ import annotations

import json
import math
import random
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.process import PIPE, run, start
from atoll.progress import Reporter
from atoll.tools.procfs import cpu_seconds, mb, process_memory
from atoll.wire.fleet import (
    WATCH_MAX,
    Backoff,
    Desired,
    FleetClient,
    FleetError,
    Watched,
    WatchRefused,
    WatchSchedule,
    node_path,
    request_json,
)

TARGET_OVERHEAD = 0.05
TARGET_CPU_RATIO = 5.0
TICK = 1.0  # the controller's default: plans follow reports at once, the tick is for timers
TIMELINE_POINTS = 200


@dataclass(frozen=True)
class Controller:
    url: str
    pid: int


def _fresh_db(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


@contextmanager
def _controller(db: Path, *, tick: float, max_in_flight: int) -> Iterator[Controller]:
    """``atoll fleet serve`` on an ephemeral loopback port; stopped (by its pid) on exit."""
    argv = [sys.executable, "-m", "atoll", "fleet", "serve", "--store", f"sqlite:///{db}"]
    argv += ["--listen", "127.0.0.1:0", "--tick", str(tick), "--max-in-flight", str(max_in_flight)]
    with start(argv, stdout=PIPE) as proc:
        assert proc.stdout is not None
        try:
            line = proc.stdout.readline()
            if not line:
                raise FleetError(
                    f"{' '.join(argv)}: exited with {proc.wait(timeout=10)} before serving"
                )
            yield Controller("http://" + json.loads(line)["listen"], proc.pid)
        finally:
            proc.stop(grace=30.0)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _registration_burst(workdir: Path, agents: int) -> dict[str, object]:
    with _controller(_fresh_db(workdir / "burst.db"), tick=1.0, max_in_flight=64) as ctl:
        barrier = threading.Barrier(agents)
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            client = FleetClient(
                ctl.url, backoff=Backoff(base=0.05, cap=1.0, attempts=12), timeout=10
            )
            barrier.wait()
            start = time.perf_counter()
            try:
                client.register(f"node{i:05}", {"zone": "abc"[i % 3]}, "v1")
            except FleetError as e:
                with lock:
                    errors.append(str(e))
                return
            with lock:
                latencies.append(time.perf_counter() - start)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(agents)]
        wall = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        wall = time.perf_counter() - wall
        registered = len(request_json("GET", ctl.url + "/v1/nodes"))
        memory = process_memory(ctl.pid)
    ordered = sorted(latencies) or [0.0]
    return {
        "agents": agents,
        "registered": registered,
        "errors": len(errors),
        "latency p50 (ms)": round(1000 * _quantile(ordered, 0.5), 1),
        "latency p90 (ms)": round(1000 * _quantile(ordered, 0.9), 1),
        "latency max (ms)": round(1000 * ordered[-1], 1),
        "wall (s)": round(wall, 2),
        "controller peak RSS (MB)": mb(memory.get("VmHWM", memory["VmRSS"])),
    }


def _timeline(
    start: float, spans: list[tuple[float, float]], nodes: int, end: float
) -> dict[str, Any]:
    """Nodes updated and unavailable at ``TIMELINE_POINTS`` instants from the reboot spans."""
    t: list[float] = []
    updated: list[int] = []
    unavailable: list[int] = []
    for k in range(TIMELINE_POINTS + 1):
        at = start + (end - start) * k / TIMELINE_POINTS
        t.append(round(at - start, 3))
        updated.append(sum(1 for _, done in spans if done <= at))
        unavailable.append(sum(1 for began, done in spans if began <= at < done))
    return {"t": t, "updated": updated, "unavailable": unavailable, "nodes": nodes}


@dataclass
class _RolloutRecord:
    """What the simulated agents saw, from their own clocks (shared by their threads)."""

    nodes: int
    spans: list[tuple[float, float]] = field(default_factory=list)  # (reboot began, back on v2)
    failures: list[str] = field(default_factory=list)
    refusals: int = 0
    everyone_done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, error: FleetError) -> None:
        with self.lock:
            self.failures.append(str(error))

    def refused(self) -> None:
        with self.lock:
            self.refusals += 1

    def rebooted(self, began: float, back: float) -> None:
        with self.lock:
            self.spans.append((began, back))
            if len(self.spans) == self.nodes:
                self.everyone_done.set()


@dataclass
class _SimulatedAgent:
    """One node's side of the protocol as the agent's update loop speaks it: report, stage
    when told (instantly) and report at once, reboot when allowed (``reboot_seconds``),
    report back. Between rounds it polls every ``poll`` seconds, or, with ``push``,
    watches the controller as the agent does (:class:`~atoll.wire.fleet.WatchSchedule`,
    :meth:`~atoll.wire.fleet.FleetClient.watch`), a round following every watch."""

    name: str
    client: FleetClient
    poll: float
    reboot_seconds: float
    record: _RolloutRecord
    push: bool = False
    current: str = "v1"
    staged: str | None = None

    def run(self, registered: threading.Barrier, stop: threading.Event) -> None:
        self.client.register(self.name, {}, self.current)
        registered.wait()  # everyone registered: the clock starts when the pool is applied
        # Both kinds of agents start with a report at a random phase of the poll
        # interval (a thousand reports at once would only meet 429s).
        time.sleep(random.uniform(0, self.poll))  # noqa: S311 - a phase, not a secret
        desired: Desired | None = None
        schedule = WatchSchedule(self.poll)
        while not stop.is_set():
            if desired is None:
                desired = self._report()
                if desired is None:  # a real agent logs it and tries again next interval
                    time.sleep(self.poll)
                    continue
            if desired.may_reboot and desired.version != self.current:
                desired = self._reboot(desired.version, stop)
                continue
            if desired.stage and self.staged != desired.version:
                self.staged = desired.version  # staging does not count as unavailable
                desired = None  # report it at once
                continue
            self._wait(schedule, desired.etag if self.push else None, stop)
            desired = None

    def _report(self) -> Desired | None:
        try:
            return self.client.report(
                self.name, version=self.current, staged=self.staged, healthy=True
            )
        except FleetError as e:
            self.record.failed(e)
            return None

    def _wait(self, schedule: WatchSchedule, etag: str | None, stop: threading.Event) -> None:
        wait = schedule.next(etag, time.monotonic())
        if not wait.watch or etag is None:
            time.sleep(wait.seconds)
            return
        try:
            answer = self.client.watch(self.name, etag, interrupted=stop.is_set, check_every=2.0)
        except WatchRefused as e:
            self.record.refused()
            time.sleep(schedule.ended(Watched.REFUSED, time.monotonic(), e.retry_after))
            return
        except FleetError as e:
            self.record.failed(e)
            time.sleep(schedule.ended(Watched.FAILED, time.monotonic()))
            return
        outcome = Watched.INTERRUPTED if answer is None else Watched.CHANGED
        schedule.ended(outcome, time.monotonic())

    def _reboot(self, version: str, stop: threading.Event) -> Desired | None:
        began = time.perf_counter()
        time.sleep(self.reboot_seconds)
        self.current, self.staged = version, None
        back = time.perf_counter()
        desired = None
        while not stop.is_set():  # back on v2 once the controller heard it
            # The span ends when the report that got through was sent: the
            # controller frees the slot on it and may grant the next node
            # before this call returns.
            back = time.perf_counter()
            desired = self._report()
            if desired is not None:
                break
            time.sleep(self.poll)
        self.record.rebooted(began, back)
        return desired


def _rollout(
    workdir: Path, nodes: int, reboot_seconds: float, poll: float, *, push: bool
) -> tuple[dict[str, object], dict[str, Any]]:
    pool = {
        "pool": {"name": "bench", "version": "v2", "previous_version": "v1"},
        "strategy": {"max_unavailable": "10%"},
    }
    max_unavailable = max(1, nodes // 10)
    db = _fresh_db(workdir / ("rollout-push.db" if push else "rollout-poll.db"))
    with _controller(db, tick=TICK, max_in_flight=256) as ctl:
        stop = threading.Event()
        registered = threading.Barrier(nodes + 1)
        record = _RolloutRecord(nodes)

        def agent(i: int) -> None:
            _SimulatedAgent(
                f"node{i:05}",
                FleetClient(ctl.url, backoff=Backoff(base=0.05, cap=1.0, attempts=20)),
                poll,
                reboot_seconds,
                record,
                push=push,
            ).run(registered, stop)

        threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(nodes)]
        for t in threads:
            t.start()
        registered.wait(timeout=300)
        cpu_before = cpu_seconds(ctl.pid)
        plans_before = request_json("GET", ctl.url + "/v1/controller")["plans"]
        start = time.perf_counter()
        request_json("PUT", ctl.url + "/v1/pools/bench", pool)
        waves = math.ceil(nodes / max_unavailable)
        record.everyone_done.wait(timeout=2 * waves * (reboot_seconds + poll) + 60)
        spans, failures = record.spans, record.failures
        end = max((done for _, done in spans), default=time.perf_counter())
        controller_cpu = cpu_seconds(ctl.pid) - cpu_before
        plans = request_json("GET", ctl.url + "/v1/controller")["plans"] - plans_before
        status = request_json("GET", ctl.url + "/v1/pools/bench")["status"]
        memory = process_memory(ctl.pid)
        stop.set()
        for t in threads:
            t.join(timeout=2 * poll + 10)
    elapsed = end - start
    ideal = waves * reboot_seconds
    with_poll = waves * (reboot_seconds + poll)
    figures: dict[str, object] = {
        "nodes": nodes,
        "max_unavailable": max_unavailable,
        "reboot (s)": reboot_seconds,
        "agents": "watch (grants pushed)" if push else f"poll every {poll:g} s",
        "controller tick (s)": TICK,
        "updated (agents)": len(spans),
        "updated (controller)": status["updated"],
        "agent request failures (retried)": len(failures),
        "watches refused (503)": record.refusals,
        "first failure": failures[0] if failures else None,
        "ideal wave time (s)": round(ideal, 2),
        "measured (s)": round(elapsed, 2),
        "overhead": round(elapsed / ideal - 1, 3),
        "controller CPU during rollout (s)": round(controller_cpu, 1),
        "controller CPU per node per minute (ms)": round(
            1000 * controller_cpu / nodes / (elapsed / 60), 3
        ),
        "controller peak RSS (MB)": mb(memory.get("VmHWM", memory["VmRSS"])),
        "controller plans during rollout (timer and reports)": plans,
    }
    if not push:
        figures["ideal plus one poll per wave (s)"] = round(with_poll, 2)
        figures["overhead beyond the poll interval"] = round(elapsed / with_poll - 1, 3)
    timeline = _timeline(start, spans, nodes, max(end, start + ideal))
    timeline.update(
        max_unavailable=max_unavailable, reboot_seconds=reboot_seconds, **{"from": "v1", "to": "v2"}
    )
    return figures, timeline


class _Watchers:
    """Raw watches (``GET .../desired?wait=ETAG``) of ``names``, kept open as agents
    keep them: one answered unchanged (the controller's wait ran out) is sent again.
    One thread and a selector, so 10,000 of them cost the benchmark no threads.
    ``changed`` collects the nodes whose watch answered with another etag."""

    def __init__(self, url: str, names: list[str], etag: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address, self.names, self.etag = (host, int(port)), names, etag
        self.opened = 0
        self.changed: set[str] = set()
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _open(self, name: str) -> None:
        sock = socket.create_connection(self.address, timeout=30)
        path = f"{node_path(name, 'desired')}?wait={self.etag}&timeout={WATCH_MAX:g}"
        request = f"GET {path} HTTP/1.1\r\nHost: {self.address[0]}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, (name, bytearray()))

    def _run(self) -> None:
        pending = list(self.names)
        self._again: list[str] = []  # refused (429/503): sent again, as an agent backs off
        while not self._stop.is_set():
            for name in pending[:200]:  # open in batches, reading answers between them
                self._open(name)
                self.opened += 1
            pending = pending[200:]
            for key, _ in self._selector.select(0 if pending else 0.5):
                self._read(key)
            if not pending:
                again, self._again = self._again, []
                for name in again:
                    self._open(name)

    def _read(self, key: selectors.SelectorKey) -> None:
        sock = key.fileobj
        assert isinstance(sock, socket.socket)
        name, buffer = key.data
        try:
            chunk = sock.recv(65536)
        except OSError:
            chunk = b""
        buffer.extend(chunk)
        if chunk:
            return
        self._selector.unregister(sock)
        sock.close()  # the controller closes after its answer
        _, _, body = bytes(buffer).partition(b"\r\n\r\n")
        try:
            etag = json.loads(body).get("etag")
        except (ValueError, AttributeError):
            etag = None
        if self._stop.is_set():
            return
        if etag == self.etag:
            self._open(name)  # unchanged: watch again, as an agent does
        elif etag is not None:
            self.changed.add(name)
        else:
            self._again.append(name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()


def _threads_rss(count: int) -> float:
    """MB of resident memory ``count`` idle Python threads add (a thread per watch)."""
    code = (
        "import threading, time\n"
        "def rss():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0]"
        ".split()[1])\n"
        "before, stop = rss(), threading.Event()\n"
        f"for _ in range({count}): threading.Thread(target=stop.wait, daemon=True).start()\n"
        "time.sleep(1)\n"
        "print(rss() - before)\n"
    )
    out = run([sys.executable, "-c", code], timeout=120).stdout.decode()
    return mb(int(out.strip()))


def _scale(workdir: Path, nodes: int, clients: int = 16) -> dict[str, object]:
    with _controller(_fresh_db(workdir / "scale.db"), tick=1.0, max_in_flight=64) as ctl:
        time.sleep(0.5)
        empty = process_memory(ctl.pid)["VmRSS"]

        def register(part: int) -> None:
            client = FleetClient(ctl.url, backoff=Backoff(base=0.05, cap=1.0, attempts=12))
            for i in range(part, nodes, clients):
                client.register(f"node{i:05}", {"zone": "abc"[i % 3]}, "v1")

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(register, range(clients)))  # re-raises a registration's error
        registration = time.perf_counter() - started
        registered = process_memory(ctl.pid)["VmRSS"]
        etag = FleetClient(ctl.url).desired("node00000").etag
        assert etag is not None, "the controller takes no watches"
        watchers = _Watchers(ctl.url, [f"node{i:05}" for i in range(nodes)], etag)

        def parked_now() -> int:
            view = request_json("GET", ctl.url + "/v1/controller", timeout=60)
            return int(view["watches"]["parked"])

        deadline, parked = time.monotonic() + 300, 0
        while time.monotonic() < deadline and (watchers.opened < nodes or parked < nodes):
            time.sleep(0.5)  # every watch opened, and parked in the controller's hub
            parked = parked_now()
        watching = process_memory(ctl.pid)["VmRSS"]
        spec = {
            "pool": {"name": "big", "version": "v2", "previous_version": "v1"},
            "strategy": {"max_unavailable": "10%"},
        }
        started = time.perf_counter()
        request_json("PUT", ctl.url + "/v1/pools/big", spec, timeout=120)
        plan = time.perf_counter() - started
        deadline = time.monotonic() + 120
        while len(watchers.changed) < nodes and time.monotonic() < deadline:
            time.sleep(0.1)
        answered = len(watchers.changed)
        pushed = time.perf_counter() - started
        watchers.close()
        started = time.perf_counter()
        view = request_json("GET", ctl.url + "/v1/pools/big", timeout=120)
        pool_status = time.perf_counter() - started
        client = FleetClient(ctl.url, timeout=60)
        reports: list[float] = []
        for i in range(0, nodes, max(1, nodes // 20)):
            began = time.perf_counter()
            client.report(f"node{i:05}", version="v1", staged=None, healthy=True)
            reports.append(time.perf_counter() - began)
        memory = process_memory(ctl.pid)
        cpu = cpu_seconds(ctl.pid)
    return {
        "nodes": nodes,
        "nodes in pool": view["status"]["total"],
        "controller RSS empty (MB)": mb(empty),
        f"controller RSS with {nodes} nodes (MB)": mb(registered),
        f"controller RSS with {nodes} nodes, each watching (MB)": mb(watching),
        "watches parked": parked,
        "memory per parked watch (KB)": round((watching - registered) / max(1, parked), 2),
        "watches opened": watchers.opened,
        f"{nodes} idle threads, the thread-per-watch alternative (MB)": _threads_rss(nodes),
        "watches answered on apply": answered,
        "apply pool until every watch answered (s)": round(pushed, 2),
        f"controller RSS with {nodes} nodes and a pool (MB)": mb(memory["VmRSS"]),
        "controller peak RSS (MB)": mb(memory.get("VmHWM", memory["VmRSS"])),
        "registration, 16 clients (nodes/s)": round(nodes / registration, 1),
        "apply pool, first plan (s)": round(plan, 2),
        "pool status (s)": round(pool_status, 2),
        "node report, median (ms)": round(1000 * sorted(reports)[len(reports) // 2], 1),
        "controller CPU, whole run (s)": round(cpu, 1),
    }


def run_benchmark(
    workdir: Path,
    reporter: Reporter,
    *,
    agents: int = 1000,
    rollout_nodes: int = 1000,
    reboot_seconds: float = 20.0,
    poll: float = 2.0,
    scale_nodes: int = 10_000,
) -> dict[str, object]:
    workdir.mkdir(parents=True, exist_ok=True)
    with reporter.stage("fleet registration burst", f"{agents} agents"):
        burst = _registration_burst(workdir, agents)
    with reporter.stage("fleet rollout, polling", f"{rollout_nodes} nodes, poll {poll:g} s"):
        polled, _ = _rollout(workdir, rollout_nodes, reboot_seconds, poll, push=False)
    with reporter.stage("fleet rollout, pushed", f"{rollout_nodes} nodes, watches"):
        pushed, timeline = _rollout(workdir, rollout_nodes, reboot_seconds, poll, push=True)
    with reporter.stage("fleet scale", f"{scale_nodes} nodes"):
        scale = _scale(workdir, scale_nodes)
    return {
        "figures": {
            "registration burst": burst,
            "rollout, grants pushed": pushed,
            "rollout, agents polling": polled,
            "scale": scale,
        },
        "targets": _targets(burst, pushed, polled, scale, agents, rollout_nodes, scale_nodes),
        "series": {"rollout timeline": timeline},
    }


def _overhead(rollout: dict[str, object], nodes: int) -> tuple[float, bool, str]:
    overhead = float(str(rollout["overhead"]))
    complete = rollout["updated (controller)"] == nodes
    shown = f"{overhead:.1%}" + (
        "" if complete else f" (INCOMPLETE: {rollout['updated (controller)']} updated)"
    )
    return overhead, complete, shown


def _targets(
    burst: dict[str, object],
    pushed: dict[str, object],
    polled: dict[str, object],
    scale: dict[str, object],
    agents: int,
    nodes: int,
    scale_nodes: int,
) -> list[dict[str, object]]:
    push_overhead, push_complete, push_shown = _overhead(pushed, nodes)
    _, poll_complete, poll_shown = _overhead(polled, nodes)
    key = "controller CPU per node per minute (ms)"
    push_cpu, poll_cpu = float(str(pushed[key])), float(str(polled[key]))
    ratio = poll_cpu / push_cpu if push_cpu > 0 else math.inf
    watching = f"controller RSS with {scale_nodes} nodes, each watching (MB)"
    return [
        {
            "name": f"{agents} agents registering at once all registered",
            "value": f"{burst['registered']}/{agents} ({burst['errors']} errors), "
            f"p90 {burst['latency p90 (ms)']} ms",
            "target": f"{agents}/{agents}, 0 errors",
            "met": burst["registered"] == agents and burst["errors"] == 0,
        },
        {
            "name": f"rollout of {nodes} nodes over ideal wave time "
            "(maxUnavailable 10%), grants pushed",
            "value": push_shown,
            "target": f"< {TARGET_OVERHEAD:.0%}",
            "met": push_overhead < TARGET_OVERHEAD and push_complete,
        },
        {
            "name": f"same, agents that {polled['agents']} (the fallback)",
            "value": poll_shown,
            "target": "reported",
            "met": poll_complete,
        },
        {
            "name": "controller CPU per node per minute of rollout, pushed vs polling",
            "value": f"{push_cpu:.3g} ms vs {poll_cpu:.3g} ms ({ratio:.1f}x lower)",
            "target": f">= {TARGET_CPU_RATIO:g}x lower",
            "met": ratio >= TARGET_CPU_RATIO and push_complete and poll_complete,
        },
        {
            "name": f"controller memory with {scale_nodes} idle nodes holding watches",
            "value": f"{scale[watching]} MB ({scale['watches parked']} parked, "
            f"{scale['watches answered on apply']} answered by the next plan)",
            "target": "reported, all parked at once, all answered",
            "met": scale["nodes in pool"] == scale_nodes
            and scale["watches parked"] == scale_nodes
            and scale["watches answered on apply"] == scale_nodes,
        },
    ]

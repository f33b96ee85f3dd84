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
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.process import PIPE, start
from atoll.progress import Reporter
from atoll.tools.procfs import cpu_seconds, mb, process_memory
from atoll.wire.fleet import Backoff, FleetClient, FleetError, request_json

TARGET_OVERHEAD = 0.05
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
    everyone_done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, error: FleetError) -> None:
        with self.lock:
            self.failures.append(str(error))

    def rebooted(self, began: float, back: float) -> None:
        with self.lock:
            self.spans.append((began, back))
            if len(self.spans) == self.nodes:
                self.everyone_done.set()


@dataclass
class _SimulatedAgent:
    """One node's side of the protocol as the agent's update loop speaks it: report, stage
    when told (instantly), reboot when allowed (``reboot_seconds``), report back."""

    name: str
    client: FleetClient
    poll: float
    reboot_seconds: float
    record: _RolloutRecord
    current: str = "v1"
    staged: str | None = None

    def run(self, registered: threading.Barrier, stop: threading.Event) -> None:
        self.client.register(self.name, {}, self.current)
        registered.wait()  # everyone registered: the clock starts when the pool is applied
        time.sleep(random.uniform(0, self.poll))  # noqa: S311 - a phase, not a secret
        while not stop.is_set():
            try:
                desired = self.client.report(
                    self.name, version=self.current, staged=self.staged, healthy=True
                )
            except FleetError as e:  # a real agent logs it and tries again next interval
                self.record.failed(e)
                time.sleep(self.poll)
                continue
            if desired.may_reboot and desired.version != self.current:
                self._reboot(desired.version, stop)
                continue
            if desired.stage and self.staged != desired.version:
                self.staged = desired.version  # staging does not count as unavailable
                continue
            time.sleep(self.poll)

    def _reboot(self, version: str, stop: threading.Event) -> None:
        began = time.perf_counter()
        time.sleep(self.reboot_seconds)
        self.current, self.staged = version, None
        back = time.perf_counter()
        while not stop.is_set():  # back on v2 once the controller heard it
            # The span ends when the report that got through was sent: the
            # controller frees the slot on it and may grant the next node
            # before this call returns.
            back = time.perf_counter()
            try:
                self.client.report(self.name, version=self.current, staged=None, healthy=True)
                break
            except FleetError as e:
                self.record.failed(e)
                time.sleep(self.poll)
        self.record.rebooted(began, back)


def _rollout(
    workdir: Path, nodes: int, reboot_seconds: float, poll: float
) -> tuple[dict[str, object], dict[str, Any]]:
    pool = {
        "pool": {"name": "bench", "version": "v2", "previous_version": "v1"},
        "strategy": {"max_unavailable": "10%"},
    }
    max_unavailable = max(1, nodes // 10)
    db = _fresh_db(workdir / "rollout.db")
    with _controller(db, tick=0.05, max_in_flight=256) as ctl:
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
            ).run(registered, stop)

        threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(nodes)]
        for t in threads:
            t.start()
        registered.wait(timeout=300)
        cpu_before = cpu_seconds(ctl.pid)
        start = time.perf_counter()
        request_json("PUT", ctl.url + "/v1/pools/bench", pool)
        waves = math.ceil(nodes / max_unavailable)
        record.everyone_done.wait(timeout=2 * waves * (reboot_seconds + poll) + 60)
        spans, failures = record.spans, record.failures
        end = max((done for _, done in spans), default=time.perf_counter())
        controller_cpu = cpu_seconds(ctl.pid) - cpu_before
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
        "agent poll interval (s)": poll,
        "updated (agents)": len(spans),
        "updated (controller)": status["updated"],
        "agent request failures (retried)": len(failures),
        "first failure": failures[0] if failures else None,
        "ideal wave time (s)": round(ideal, 2),
        "ideal plus one poll per wave (s)": round(with_poll, 2),
        "measured (s)": round(elapsed, 2),
        "overhead": round(elapsed / ideal - 1, 3),
        "overhead beyond the poll interval": round(elapsed / with_poll - 1, 3),
        "controller CPU during rollout (s)": round(controller_cpu, 1),
        "controller peak RSS (MB)": mb(memory.get("VmHWM", memory["VmRSS"])),
    }
    timeline = _timeline(start, spans, nodes, max(end, start + ideal))
    timeline.update(
        max_unavailable=max_unavailable, reboot_seconds=reboot_seconds, **{"from": "v1", "to": "v2"}
    )
    return figures, timeline


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
        spec = {
            "pool": {"name": "big", "version": "v2", "previous_version": "v1"},
            "strategy": {"max_unavailable": "10%"},
        }
        started = time.perf_counter()
        request_json("PUT", ctl.url + "/v1/pools/big", spec, timeout=120)
        plan = time.perf_counter() - started
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
    with reporter.stage("fleet rollout", f"{rollout_nodes} nodes, reboot {reboot_seconds} s"):
        rollout, timeline = _rollout(workdir, rollout_nodes, reboot_seconds, poll)
    with reporter.stage("fleet scale", f"{scale_nodes} nodes"):
        scale = _scale(workdir, scale_nodes)
    overhead = float(str(rollout["overhead"]))
    complete = rollout["updated (controller)"] == rollout_nodes
    beyond = float(str(rollout["overhead beyond the poll interval"]))
    return {
        "figures": {"registration burst": burst, "rollout": rollout, "scale": scale},
        "targets": [
            {
                "name": f"{agents} agents registering at once all registered",
                "value": f"{burst['registered']}/{agents} ({burst['errors']} errors), "
                f"p90 {burst['latency p90 (ms)']} ms",
                "target": f"{agents}/{agents}, 0 errors",
                "met": burst["registered"] == agents and burst["errors"] == 0,
            },
            {
                "name": f"rollout of {rollout_nodes} nodes over ideal wave time "
                "(maxUnavailable 10%)",
                "value": f"{overhead:.1%}"
                + ("" if complete else f" (INCOMPLETE: {rollout['updated (controller)']} updated)"),
                "target": f"< {TARGET_OVERHEAD:.0%}",
                "met": overhead < TARGET_OVERHEAD and complete,
            },
            {
                "name": "same, beyond one agent poll interval per wave",
                "value": f"{beyond:.1%}",
                "target": f"< {TARGET_OVERHEAD:.0%}",
                "met": beyond < TARGET_OVERHEAD and complete,
            },
            {
                "name": f"controller memory at {scale_nodes} nodes (reported)",
                "value": f"{scale['controller peak RSS (MB)']} MB peak",
                "target": "reported",
                "met": scale["nodes in pool"] == scale_nodes,
            },
        ],
        "series": {"rollout timeline": timeline},
    }

"""Fleet benchmark: simulated agents speaking the real protocol on loopback.

Two measurements against an in-process controller (real HTTP, real SQLite file
under ``workdir``):

* **registration burst**: ``agents`` threads released by one barrier each
  register once through :class:`~atoll.agent.fleet_client.FleetClient` (with its
  jittered backoff). Reported: how many registered, errors, 429 answers, p50/p90
  /max latency, wall time.
* **rollout vs ideal**: a controller process (``atoll fleet serve``) and
  ``rollout_nodes`` agent threads; the agents roll v1 -> v2 with
  maxUnavailable 10%; each reboot takes ``reboot_seconds``. The ideal is
  ``waves * reboot_seconds`` with ``waves = ceil(nodes / maxUnavailable)``;
  the controller's overhead is the measured time over the ideal. The agents'
  polling interval is part of that overhead (a real agent long-polls less
  often), so the figure is an upper bound of the controller's own cost.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from atoll.agent.fleet_client import Backoff, FleetClient, FleetError, request_json
from atoll.fleet.server import FleetService
from atoll.fleet.store import Store
from atoll.progress import Reporter


def _fresh_store(path: Path) -> Store:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Store(path)


def _registration_burst(workdir: Path, agents: int) -> dict[str, object]:
    store = _fresh_store(workdir / "burst.db")
    service = FleetService(store, "127.0.0.1", 0, max_in_flight=64, tick=1.0)
    service.start()
    url = f"http://127.0.0.1:{service.address[1]}"
    barrier = threading.Barrier(agents)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = FleetClient(url, backoff=Backoff(base=0.05, cap=1.0, attempts=12), timeout=10)
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
    registered = len(store.nodes())
    rejected = service.httpd.rejected
    service.stop()
    store.close()
    ordered = sorted(latencies) or [0.0]
    return {
        "agents": agents,
        "registered": registered,
        "errors": len(errors),
        "429 answers": rejected,
        "latency p50 (ms)": round(1000 * statistics.median(ordered), 1),
        "latency p90 (ms)": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 1),
        "latency max (ms)": round(1000 * ordered[-1], 1),
        "wall (s)": round(wall, 2),
    }


def _rollout(workdir: Path, nodes: int, reboot_seconds: float) -> dict[str, object]:
    # The controller runs in its own process: sharing the agents' GIL would
    # charge the simulation's cost to the controller.
    db = workdir / "rollout.db"
    _fresh_store(db).close()
    argv = [sys.executable, "-m", "atoll", "fleet", "serve", "--store", f"sqlite:///{db}"]
    argv += ["--listen", "127.0.0.1:0", "--tick", "0.05", "--max-in-flight", "256"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = "http://" + json.loads(proc.stdout.readline())["listen"]
    max_unavailable = max(1, nodes // 10)
    pool = {
        "pool": {"name": "bench", "version": "v2", "previous_version": "v1"},
        "strategy": {"max_unavailable": "10%"},
    }
    stop = threading.Event()
    done = threading.Barrier(nodes + 1)
    poll = reboot_seconds / 10  # 100 agents at 20 reports/s would measure the HTTP stack

    def agent(i: int) -> None:
        name = f"node{i:05}"
        client = FleetClient(url, backoff=Backoff(base=0.05, cap=1.0, attempts=20), timeout=10)
        current, staged = "v1", None
        client.register(name, {}, current)
        done.wait()  # everyone registered: the clock starts when the pool is applied
        while not stop.is_set():
            desired = client.report(name, version=current, staged=staged, healthy=True)
            if desired.may_reboot and desired.version != current:
                time.sleep(reboot_seconds)
                current, staged = desired.version, None
                continue  # report at once after the reboot, as a booting agent does
            if desired.stage and staged != desired.version:
                staged = desired.version
                continue
            time.sleep(poll)

    threads = [threading.Thread(target=agent, args=(i,), daemon=True) for i in range(nodes)]
    for t in threads:
        t.start()
    done.wait()
    start = time.perf_counter()
    request_json("PUT", url + "/v1/pools/bench", pool)
    while True:
        status = request_json("GET", url + "/v1/pools/bench")["status"]
        if status["updated"] == nodes or time.perf_counter() - start > 600:
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join(timeout=10)
    proc.terminate()  # our own child, by its pid
    proc.wait(timeout=30)
    proc.stdout.close()
    waves = math.ceil(nodes / max_unavailable)
    ideal = waves * reboot_seconds
    return {
        "nodes": nodes,
        "max_unavailable": max_unavailable,
        "reboot (s)": reboot_seconds,
        "agent poll interval (s)": poll,
        "updated": status["updated"],
        "ideal wave time (s)": round(ideal, 2),
        "measured (s)": round(elapsed, 2),
        "overhead": round(elapsed / ideal - 1, 3),
    }


def run_benchmark(
    workdir: Path,
    reporter: Reporter,
    *,
    agents: int = 500,
    rollout_nodes: int = 100,
    reboot_seconds: float = 2.0,
) -> dict[str, object]:
    workdir.mkdir(parents=True, exist_ok=True)
    with reporter.stage("fleet registration burst", f"{agents} agents"):
        burst = _registration_burst(workdir, agents)
    with reporter.stage("fleet rollout", f"{rollout_nodes} nodes"):
        rollout = _rollout(workdir, rollout_nodes, reboot_seconds)
    overhead = float(str(rollout["overhead"]))
    return {
        "figures": {"registration burst": burst, "rollout": rollout},
        "targets": [
            {
                "name": f"{agents} agents registering at once all registered",
                "value": f"{burst['registered']}/{agents} ({burst['errors']} errors)",
                "target": f"{agents}/{agents}, 0 errors",
                "met": burst["registered"] == agents and burst["errors"] == 0,
            },
            {
                "name": "rollout time over ideal wave time (maxUnavailable 10%)",
                "value": f"{overhead:.1%}",
                "target": "< 5%",
                "met": overhead < 0.05,
            },
        ],
    }

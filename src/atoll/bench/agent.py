"""Agent benchmark (issue 4's targets): the real daemon, Debian's python3, mutual TLS on loopback.

The agent is started the way the image starts it (``atoll-agent.service``):
``/usr/bin/python3 -m atoll.agent`` with ``PYTHONPATH`` pointing at a copy of
exactly what compose ships (``atoll/__init__.py``, ``durable.py``,
``agent/**``, ``wire/**``, byte-compiled), so the measured memory is the
node's and no host-side package can leak in. It serves a temporary root on
127.0.0.1 with credentials made here by :mod:`atoll.pki`;
``--record-commands`` makes it record systemctl and ``ostree admin`` instead
of running them (nothing on the host is touched), so on a node
``GET /v1/status`` additionally pays one ``ostree admin status``.

Measured (all bounded in count; the run stops by itself):

* **memory**: ``VmRSS`` from ``/proc/PID/status`` when idle and after the load,
  plus the peak (``VmHWM``); beside it, in the same run, the bare interpreter
  (``/usr/bin/python3`` sleeping) as the floor any python3 daemon pays.
* **latency**: ``GET /v1/status`` from 50 concurrent clients, once with a new
  TLS connection (handshake included, as ``atoll node`` does) per request and
  once over kept-alive connections; ``PATCH /v1/settings`` (rendered into /etc
  atomically, fsynced, audited) from a few clients. The clients run in
  separate processes (``CLIENT_PROCS``) so their GIL does not serialise them,
  but they share the machine's two cores with the agent: the figures are an
  upper bound of the agent's own latency.

The bench lives outside :mod:`atoll.agent` (which must stay standard-library
only and small on the node); ``atoll.bench.page`` runs it as the ``agent`` stage.
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import socket
import ssl
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from atoll import durable
from atoll.compose.customize import copy_agent_package
from atoll.errors import AtollError
from atoll.pki import Kind, Role, init, issue
from atoll.process import PIPE, STDOUT, Child, run, start
from atoll.progress import Reporter
from atoll.tools.procfs import cpu_seconds, mb, process_memory

SYSTEM_PYTHON = Path("/usr/bin/python3")
MEMORY_TARGET_MB = 40.0
STATUS_P99_TARGET_MS = 50.0
STATUS_CLIENTS = 50
CLIENT_PROCS = 5
STATUS_REQUESTS = 2000
SETTINGS_CLIENTS = 4
SETTINGS_REQUESTS = 200
READY_TIMEOUT = 30.0
# Says it is up, then waits for stdin to close: the interpreter at rest.
IDLE_PROGRAM = "import sys; print('up', flush=True); sys.stdin.read()"
# Quantiles kept for the latency plot (every half percent): 201 numbers per
# operation instead of thousands of raw samples in docs/benchmarks.json.
QUANTILES = tuple(q / 2 for q in range(201))


class BenchError(AtollError):
    """The agent benchmark could not run (the daemon did not start, requests failed)."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``values``; q=0 is the minimum."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q}: expected 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@dataclass(frozen=True)
class Load:
    """One client process's share: ``threads`` clients, ``requests`` each."""

    endpoint: Endpoint
    operation: str  # "status-new" | "status-keepalive" | "settings"
    threads: int
    requests: int
    start_at: float  # time.time() when every process starts (a coarse barrier)
    offset: int  # distinct setting values across processes


def _request(
    conn: http.client.HTTPSConnection, method: str, path: str, body: dict[str, Any] | None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _client(load: Load, ctx: ssl.SSLContext, index: int) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    ep = load.endpoint
    conn: http.client.HTTPSConnection | None = None
    for i in range(load.requests):
        if load.operation == "settings":
            method, path = "PATCH", "/v1/settings"
            body: dict[str, Any] | None = {"hostname": f"bench-{load.offset + index}-{i}"}
        else:
            method, path, body = "GET", "/v1/status", None
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPSConnection(ep.host, ep.port, context=ctx, timeout=30)
            status, answer = _request(conn, method, path, body)
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"{method} {path}: {type(e).__name__}: {e}")
            if conn is not None:
                conn.close()
            conn = None
            continue
        latencies.append(time.perf_counter() - start)
        if status != 200:
            errors.append(f"{method} {path}: HTTP {status} {answer[:120]!r}")
        if load.operation != "status-keepalive" and conn is not None:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return latencies, errors


def run_load(load: Load) -> tuple[list[float], list[str]]:
    """A client process: ``load.threads`` threads; latencies in seconds and errors."""
    import threading  # noqa: PLC0415 - only the client processes need it

    ctx = load.endpoint.context()
    results: list[tuple[list[float], list[str]]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        got = _client(load, ctx, index)
        with lock:
            results.append(got)

    time.sleep(max(0.0, load.start_at - time.time()))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(load.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = [x for got in results for x in got[0]]
    errors = [x for got in results for x in got[1]]
    return latencies, errors


def _measure(
    pool: ProcessPoolExecutor, endpoint: Endpoint, operation: str, clients: int, requests: int
) -> tuple[dict[str, object], list[float]]:
    procs = min(CLIENT_PROCS, clients)
    threads = clients // procs
    per_client = max(1, requests // (procs * threads))
    start_at = time.time() + 1.0  # every process spawned and ready by then
    loads = [
        Load(endpoint, operation, threads, per_client, start_at, offset=p * threads)
        for p in range(procs)
    ]
    delay = start_at - time.time()
    started = time.perf_counter()
    latencies: list[float] = []
    errors: list[str] = []
    for got in pool.map(run_load, loads):
        latencies += got[0]
        errors += got[1]
    wall = time.perf_counter() - started - max(0.0, delay)
    if not latencies:
        raise BenchError(f"{operation}: every request failed, first: {errors[:1]}")
    ms = [1000 * x for x in latencies]
    figures: dict[str, object] = {
        "clients": procs * threads,
        "requests": len(ms),
        "errors": len(errors),
        "p50 (ms)": round(percentile(ms, 50), 2),
        "p90 (ms)": round(percentile(ms, 90), 2),
        "p99 (ms)": round(percentile(ms, 99), 2),
        "max (ms)": round(max(ms), 2),
        "throughput (req/s)": round(len(ms) / wall, 1) if wall > 0 else None,
    }
    if errors:
        figures["first error"] = errors[0]
    return figures, [round(percentile(ms, q), 3) for q in QUANTILES]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ship_agent(python_dir: Path) -> None:
    """The agent as compose installs it (:func:`atoll.compose.customize.copy_agent_package`:
    the agent and what it imports), byte-compiled."""
    shutil.rmtree(python_dir, ignore_errors=True)
    copy_agent_package(python_dir / "atoll")
    run([SYSTEM_PYTHON, "-m", "compileall", "-q", python_dir])


def _credentials(workdir: Path) -> tuple[Path, Endpoint]:
    pki = workdir / "pki"
    shutil.rmtree(pki, ignore_errors=True)
    init(pki)
    issue(pki, "bench-node", kind=Kind.NODE)
    issue(pki, "bench-operator", kind=Kind.CLIENT, role=Role.OPERATOR)
    tls = workdir / "tls"
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir()
    for src, dst in (
        ("nodes/bench-node.crt", "node.crt"),
        ("nodes/bench-node.key", "node.key"),
        ("ca.crt", "ca.crt"),
        ("crl.pem", "crl.pem"),
    ):
        durable.copy(pki / src, tls / dst, mode=0o600 if dst.endswith(".key") else 0o644)
    client = Endpoint(
        "127.0.0.1",
        _free_port(),
        pki / "ca.crt",
        pki / "clients/bench-operator.crt",
        pki / "clients/bench-operator.key",
    )
    return tls, client


def _wait_ready(proc: Child, endpoint: Endpoint, log: Path) -> None:
    ctx = endpoint.context()
    deadline = time.monotonic() + READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"the agent exited with {proc.returncode}: {' / '.join(tail)}")
        try:
            conn = http.client.HTTPSConnection(endpoint.host, endpoint.port, context=ctx, timeout=5)
            try:
                if _request(conn, "GET", "/v1/status", None)[0] == 200:
                    return
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.1)
    raise BenchError(
        f"the agent did not answer GET https://127.0.0.1:{endpoint.port}/v1/status "
        f"within {READY_TIMEOUT:.0f} s ({last}); its log: {log}"
    )


def _interpreter_floor() -> int:
    """RSS (KiB) of Debian's python3 doing nothing: what any python3 daemon pays."""
    with start([SYSTEM_PYTHON, "-c", IDLE_PROGRAM], stdin=PIPE, stdout=PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdout.readline()
        rss = process_memory(proc.pid)["VmRSS"]
        proc.stdin.close()  # it exits by itself
        proc.wait(timeout=10)
        return rss


def run_benchmark(workdir: Path, reporter: Reporter) -> dict[str, object]:
    if not SYSTEM_PYTHON.exists():
        raise BenchError(f"{SYSTEM_PYTHON}: missing (the agent runs on Debian's python3)")
    workdir.mkdir(parents=True, exist_ok=True)
    python_dir = workdir / "python"
    _ship_agent(python_dir)
    tls, endpoint = _credentials(workdir)
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("IMAGE_ID=atoll\nIMAGE_VERSION=1.0.0\n")
    log = workdir / "agent.log"
    argv: list[str | Path] = [SYSTEM_PYTHON, "-m", "atoll.agent", "--root", root, "--tls-dir", tls]
    argv += ["--listen", "127.0.0.1", "--port", str(endpoint.port)]
    argv += ["--socket", workdir / "run/agent.sock", "--audit", root / "var/lib/atoll/audit.jsonl"]
    argv += ["--record-commands", workdir / "commands.jsonl"]
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(python_dir),  # as atoll-agent.service sets it
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    floor = _interpreter_floor()
    with log.open("wb") as log_file:
        proc = start(argv, stdout=log_file, stderr=STDOUT, env=env)
    try:
        with reporter.stage("agent start", f"127.0.0.1:{endpoint.port}"):
            _wait_ready(proc, endpoint, log)
            time.sleep(1.0)
            idle = process_memory(proc.pid)
            cpu_idle = cpu_seconds(proc.pid)
        spawn = get_context("spawn")
        results: dict[str, dict[str, object]] = {}
        series: dict[str, list[float]] = {}
        runs = (
            ("GET /v1/status, one client, kept-alive (unloaded)", "status-keepalive", 1, 100),
            ("GET /v1/status, new TLS connection each", "status-new", STATUS_CLIENTS,
             STATUS_REQUESTS),
            ("GET /v1/status, kept-alive connections", "status-keepalive", STATUS_CLIENTS,
             STATUS_REQUESTS),
            ("PATCH /v1/settings (hostname)", "settings", SETTINGS_CLIENTS, SETTINGS_REQUESTS),
        )  # fmt: skip
        with ProcessPoolExecutor(max_workers=CLIENT_PROCS, mp_context=spawn) as pool:
            for name, operation, clients, requests in runs:
                with reporter.stage(
                    "agent load", f"{name}: {requests} requests, {clients} clients"
                ):
                    results[name], series[name] = _measure(
                        pool, endpoint, operation, clients, requests
                    )
        loaded = process_memory(proc.pid)
        cpu_load = cpu_seconds(proc.pid) - cpu_idle
    finally:
        proc.stop(grace=10.0)
    version = run([SYSTEM_PYTHON, "--version"]).stdout.decode().strip()
    peak_mb = mb(loaded.get("VmHWM", loaded["VmRSS"]))
    status_new = results[runs[1][0]]
    p99 = float(str(status_new["p99 (ms)"]))
    figures: dict[str, object] = {
        "agent RSS idle (MB)": mb(idle["VmRSS"]),
        "agent RSS after load (MB)": mb(loaded["VmRSS"]),
        "agent peak RSS, VmHWM (MB)": peak_mb,
        "baseline: bare python3 interpreter RSS (MB)": mb(floor),
        "agent CPU time serving all the load (s)": round(cpu_load, 2),
        "interpreter": f"{version} ({SYSTEM_PYTHON})",
        **results,
        "note": "ostree admin and systemctl are recorded, not run (on a node, "
        "status also runs `ostree admin status`); clients share the 2 CPUs with the agent",
    }
    return {
        "figures": figures,
        "targets": [
            {
                "name": "agent resident memory (peak over the run)",
                "value": f"{peak_mb} MB",
                "target": f"< {MEMORY_TARGET_MB:.0f} MB",
                "met": peak_mb < MEMORY_TARGET_MB,
            },
            {
                "name": f"GET /v1/status p99, {status_new['clients']} concurrent clients, "
                "new TLS connection each",
                "value": f"{p99} ms",
                "target": f"< {STATUS_P99_TARGET_MS:.0f} ms",
                "met": p99 < STATUS_P99_TARGET_MS and status_new["errors"] == 0,
            },
        ],
        "series": {"latency quantiles (ms)": {"quantiles": list(QUANTILES), **series}},
    }

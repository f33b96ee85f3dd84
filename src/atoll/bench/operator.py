"""Operator scale benchmark (issue 17, "Scale"): a NodePool rollout over 1,000 fake Nodes.

The NodePool operator (``atoll fleet operator``) runs as its own process against
``atoll cluster up``'s control plane, as the service account the shipped RBAC
makes, so its memory and CPU time can be read from ``/proc``
(:mod:`atoll.tools.procfs`). The nodes are fake:

* **kwok** (built by :mod:`atoll.cluster.kwok`, out of cluster, as the admin,
  on 127.0.0.1) keeps the ``nodes`` Node objects Ready (their Leases and
  status); ``--manage-nodes-with-annotation-selector`` limits it to the Nodes
  this benchmark creates.
* **the agents** are one asyncio task watching the pool's Nodes: each node's
  simulated agent reads the operator's answer on its Node and does what
  :func:`atoll.fleet.simulated.agent_move` says (shared with the operator's
  integration tests): stages at once, and when allowed to reboot waits
  ``reboot_seconds`` before writing the new version
  (:func:`atoll.fleet.simulated.node_state_patch`: the Node protocol's
  :class:`~atoll.wire.kubenode.NodeState` patch, as the real agent writes it).

Measured, once every node is Ready and the operator has planned the pool on
its current version (``v1``), from the moment the pool's spec says ``v2``:

* the rollout's wall time against the ideal wave time, ``waves * reboot_seconds``
  with ``waves = ceil(nodes / maxUnavailable)`` (maxUnavailable 10%);
* the operator's peak RSS (``VmHWM``) and CPU seconds during the rollout, and per
  node per minute;
* the operator's API requests per node: a FlowSchema matches the operator's
  service account, and the API server's
  ``apiserver_flowcontrol_dispatched_requests_total`` for it (``/metrics``) is
  read before and after (:func:`dispatched`);
* that maxUnavailable was never exceeded, from a recorded history: every watch
  event on the pool's Nodes, with its time, says whether that node is
  unavailable (:func:`unavailable`: cordoned, not Ready, or rebooting) and
  :func:`replay` counts them in the API server's own order of writes.

Everything is bounded in time: a rollout that does not finish within
``3 * ideal + 300`` seconds is reported as incomplete.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import ssl
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from atoll.cluster import build as kubernetes_build
from atoll.cluster import kwok
from atoll.cluster.up import ControlPlane, running_cluster
from atoll.errors import AtollError
from atoll.fleet.nodepool import A_PHASE, KIND, node_ready
from atoll.fleet.preflight import GROUP, PLURAL, VERSION
from atoll.fleet.rollout import Quantity
from atoll.fleet.simulated import AgentMove, Move, agent_move, node_state_patch
from atoll.process import DEVNULL, Child, run, start
from atoll.progress import Reporter
from atoll.tools.procfs import cpu_seconds, mb, process_memory
from atoll.wire.kubenode import CURRENT_VERSION

TARGET_OVERHEAD = 0.05
MAX_UNAVAILABLE_PERCENT = 10
POOL = "bench"
POOL_LABEL = "atoll.dev/bench-pool"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_VALUE = "fake"
POOLS = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
ACCOUNT_NAMESPACE, ACCOUNT = "atoll-system", "atoll-fleet-operator"
FLOW_SCHEMA = "atoll-bench-operator"
DISPATCHED = "apiserver_flowcontrol_dispatched_requests_total"
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
SOURCE = Path(__file__).resolve().parents[2]  # the directory atoll is imported from
CONCURRENCY = 16  # requests the benchmark itself has in flight (creating nodes, agents)
REBOOTING = "rebooting"
LEASE_SECONDS = 40
# The steps of one node's update, as the benchmark sees them (:func:`step_times`).
GRANTED, MAY_REBOOT, BACK, RELEASED = "granted", "may reboot", "back", "released"
# kwok's client-go (1.36) asks for streaming lists, which the API server cannot serve
# over etcd 3.4 (docs/kubernetes.md): the watch ends with an error, kwok's Lease cache
# goes stale, its renewals conflict and Nodes go NotReady. With the server's WatchList
# gate off the request is refused up front and client-go lists instead.
APISERVER_ARGS = ("--feature-gates=WatchList=false",)


# -- the pure part ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ideal:
    max_unavailable: int
    waves: int
    seconds: float


def ideal_wave_time(nodes: int, percent: int, reboot_seconds: float) -> Ideal:
    """maxUnavailable as the planner resolves ``percent`` (rounded down, at least 1), the
    waves it takes and their time if each wave were only its reboot."""
    limit = max(1, Quantity(percent, percent=True).resolve(nodes, round_up=False))
    waves = math.ceil(nodes / limit)
    return Ideal(limit, waves, waves * reboot_seconds)


def unavailable(node: Mapping[str, Any]) -> bool:
    """A Node counts against maxUnavailable: cordoned, not Ready, or being updated
    (the operator's phase ``rebooting``: granted, draining or rebooting)."""
    spec = node.get("spec") or {}
    notes = (node.get("metadata") or {}).get("annotations") or {}
    return (
        bool(spec.get("unschedulable")) or not node_ready(node) or notes.get(A_PHASE) == REBOOTING
    )


@dataclass(frozen=True)
class Sample:
    """One watch event: at ``t`` (seconds), Node ``node`` is (un)available, on ``version``."""

    t: float
    node: str
    unavailable: bool
    version: str


@dataclass(frozen=True)
class Replayed:
    peak: int  # most nodes unavailable at once
    peak_at: float
    over: list[tuple[float, int]]  # (t, count) each time the count went above the limit
    steps: list[tuple[float, int]]  # (t, count) at every change of the count
    updated_at: float | None  # when the last node reached the target version available


def replay(samples: Iterable[Sample], limit: int, target: str, nodes: int) -> Replayed:
    """The count of unavailable nodes after each event, in the order the events came
    (a watch delivers them in the API server's order of writes)."""
    state: dict[str, bool] = {}
    done: set[str] = set()
    count, peak, peak_at = 0, 0, 0.0
    over: list[tuple[float, int]] = []
    steps: list[tuple[float, int]] = []
    updated_at: float | None = None
    for s in samples:
        before = state.get(s.node, False)
        state[s.node] = s.unavailable
        count += int(s.unavailable) - int(before)
        if count != (steps[-1][1] if steps else 0):
            steps.append((s.t, count))
        if count > peak:
            peak, peak_at = count, s.t
        if count > limit:
            over.append((s.t, count))
        if s.version == target and not s.unavailable:
            done.add(s.node)
        else:
            done.discard(s.node)
        if updated_at is None and len(done) == nodes:
            updated_at = s.t
    return Replayed(peak, peak_at, over, steps, updated_at)


def step_times(marks: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Median seconds each step of a node's update took, over the nodes that made it:
    granted (cordoned) until allowed to reboot (the drain), the reboot itself, and back
    on the new version until available again (uncordoned)."""
    steps = {
        "grant to may-reboot (s)": (GRANTED, MAY_REBOOT),
        "may-reboot to back on the new version (s)": (MAY_REBOOT, BACK),
        "back to uncordoned (s)": (BACK, RELEASED),
    }
    medians: dict[str, float] = {}
    for label, (first, then) in steps.items():
        spans = sorted(m[then] - m[first] for m in marks.values() if first in m and then in m)
        if spans:
            medians[label] = round(spans[len(spans) // 2], 2)
    return medians


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def dispatched(metrics: str, metric: str, labels: Mapping[str, str]) -> float:
    """The sum of the samples of ``metric`` whose labels include ``labels`` (Prometheus
    text format; comments and other metrics skipped)."""
    total = 0.0
    for line in metrics.splitlines():
        found = _SAMPLE.match(line)
        if found is None or found["name"] != metric:
            continue
        have = dict(_LABEL.findall(found["labels"] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(found["value"])
    return total


def flow_schema(name: str, namespace: str, account: str) -> dict[str, Any]:
    """A FlowSchema matching every request of one service account (so the API
    server's flow-control metrics count them apart)."""
    return {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": "workload-high"},
            "matchingPrecedence": 500,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }


def fake_node(name: str, version: str) -> dict[str, Any]:
    """A Node kwok manages (its annotation), in the pool (its label), on ``version``."""
    state = node_state_patch(version, None)["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                **state["labels"],
                POOL_LABEL: POOL,
                "kubernetes.io/hostname": name,
                "type": "kwok",
            },
            "annotations": {
                KWOK_ANNOTATION: KWOK_VALUE,
                **{k: v for k, v in state["annotations"].items() if v is not None},
            },
        },
        "spec": {"taints": [{"key": KWOK_ANNOTATION, "value": KWOK_VALUE, "effect": "NoSchedule"}]},
    }


def pool_object(version: str, previous: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": POOL},
        "spec": {
            "version": version,
            "previousVersion": previous,
            "selector": {"matchLabels": {POOL_LABEL: POOL}},
            "strategy": {"maxUnavailable": f"{MAX_UNAVAILABLE_PERCENT}%"},
        },
    }


def kwok_argv(binary: Path, stages: Path, kubeconfig: Path, port: int) -> list[str]:
    return [
        os.fspath(binary),
        f"--config={stages}",
        f"--kubeconfig={kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_VALUE}",
        f"--server-address=127.0.0.1:{port}",
        # The kubelet's default; without a KwokConfiguration kwok renews no Leases, and
        # the node lifecycle controller turns its Nodes NotReady between status updates.
        f"--node-lease-duration-seconds={LEASE_SECONDS}",
    ]


def service_account_kubeconfig(server: str, ca_file: Path, token: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "atoll",
                    "cluster": {"server": server, "certificate-authority": str(ca_file)},
                }
            ],
            "users": [{"name": ACCOUNT, "user": {"token": token}}],
            "contexts": [{"name": "atoll", "context": {"cluster": "atoll", "user": ACCOUNT}}],
            "current-context": "atoll",
        }
    )


# -- the API server, as the admin ----------------------------------------------------------------


class _Api:
    """aiohttp requests to the cluster as its admin (client certificate), retried on
    429 and 5xx, bounded."""

    def __init__(self, plane: ControlPlane) -> None:
        context = ssl.create_default_context(cafile=os.fspath(plane.ca_file))
        pki = plane.layout.pki
        context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        self.server = plane.server
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY * 2),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def call(self, method: str, path: str, body: object = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        for attempt in range(20):
            async with self.session.request(
                method,
                self.server + path,
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=60),
            ) as answer:
                text = await answer.text()
                if answer.status == 429 or answer.status >= 500:
                    await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                    continue
                if answer.status >= 400:
                    raise AtollError(f"{method} {path}: {answer.status} {text[:500]}")
                return json.loads(text) if text.startswith(("{", "[")) else text
        raise AtollError(f"{method} {path}: still refused after 20 attempts")

    async def close(self) -> None:
        await self.session.close()


# -- the simulated agents and the history ----------------------------------------------------------


@dataclass
class _Fleet:
    """The pool's Nodes as the watch last saw them, the history, and the agents' work."""

    api: _Api
    reboot_seconds: float
    start: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)  # an agent's move is under way
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    agents_on: bool = False
    not_ready: set[str] = field(default_factory=set)  # Nodes seen not Ready during the rollout
    marks: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> step -> time

    def now(self) -> float:
        return time.monotonic() - self.start

    def seen(self, node: dict[str, Any], kind: str) -> None:
        """A watch event: recorded, and handed to the node's agent."""
        name = str(node["metadata"]["name"])
        if kind == "DELETED":
            self.nodes.pop(name, None)
            return
        self.nodes[name] = node
        notes = node["metadata"].get("annotations") or {}
        version = str(notes.get(CURRENT_VERSION, ""))
        down = unavailable(node)
        self.samples.append(Sample(self.now(), name, down, version))
        if self.agents_on:
            if not node_ready(node):
                self.not_ready.add(name)
            marks = self.marks.setdefault(name, {})
            if down:
                marks.setdefault(GRANTED, self.now())
            elif BACK in marks:
                marks.setdefault(RELEASED, self.now())
        self.changed.set()
        self._consider(name, notes)

    def _consider(self, name: str, notes: Mapping[str, str]) -> None:
        if not self.agents_on or name in self.busy:
            return  # an agent does one thing at a time; it looks again when done
        move = agent_move(notes)
        if move is not None:
            self.busy.add(name)
            task = asyncio.get_running_loop().create_task(self._agent(name, move))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _agent(self, name: str, move: AgentMove) -> None:
        """One node's agent doing ``move``: staging is instant, a reboot takes its time."""
        answer: dict[str, Any] | None = None
        try:
            if move.kind is Move.REBOOT:
                self.marks.setdefault(name, {}).setdefault(MAY_REBOOT, self.now())
                await asyncio.sleep(self.reboot_seconds)
                patch = node_state_patch(move.version, None)
            else:
                current = _notes(self.nodes[name]).get(CURRENT_VERSION, "")
                patch = node_state_patch(current, move.version)
            async with self.gate:
                answer = await self.api.call("PATCH", f"/api/v1/nodes/{name}", patch)
            if move.kind is Move.REBOOT:
                self.marks[name].setdefault(BACK, self.now())
        except (AtollError, aiohttp.ClientError, TimeoutError) as e:
            self.errors.append(f"agent of {name}: {e}")
        finally:
            self.busy.discard(name)
        # What the operator answered meanwhile may ask for another move: look at the
        # newest state known, the watch's or the patch's answer (never an older one).
        latest = self.nodes.get(name)
        if answer is not None and (latest is None or _version(answer) > _version(latest)):
            latest = answer
        if latest is not None:
            self._consider(name, _notes(latest))

    async def watch(self, selector: str) -> None:
        """List, then watch the pool's Nodes until cancelled (a watch that ends is resumed
        from its last resourceVersion; one too old is listed again)."""
        version = await self._list(selector)
        while True:
            path = (
                f"/api/v1/nodes?watch=1&labelSelector={selector}&resourceVersion={version}"
                "&allowWatchBookmarks=true&timeoutSeconds=600"
            )
            try:
                async with self.api.session.get(
                    self.api.server + path, timeout=aiohttp.ClientTimeout(total=None)
                ) as answer:
                    if answer.status >= 400:
                        raise AtollError(f"watch nodes: {answer.status}")
                    async for line in answer.content:
                        event = json.loads(line)
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            version = await self._list(selector)
                            break
                        version = obj["metadata"].get("resourceVersion", version)
                        if kind != "BOOKMARK":
                            self.seen(obj, kind)
            except (aiohttp.ClientError, AtollError) as e:
                self.errors.append(f"watch: {e}")
                await asyncio.sleep(1)
                version = await self._list(selector)

    async def _list(self, selector: str) -> str:
        listed = await self.api.call("GET", f"/api/v1/nodes?labelSelector={selector}")
        for node in listed["items"]:
            self.seen(node, "ADDED")
        return str(listed["metadata"]["resourceVersion"])


def _notes(node: Mapping[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("annotations") or {})


def _version(node: Mapping[str, Any]) -> int:
    """A Node's resourceVersion as a number (etcd's revision: later writes are larger)."""
    try:
        return int(node["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return 0


# -- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    plane: ControlPlane
    kubectl: Path
    kwok: Child  # running
    workdir: Path


@contextmanager
def _process(
    argv: Sequence[str | Path], log: Path, env: Mapping[str, str] | None = None
) -> Iterator[Child]:
    """A program of the benchmark's, its output in ``log``; stopped by its pid on exit."""
    with (
        open(log, "wb") as out,
        start(argv, stdout=out, stderr=out, stdin=DEVNULL, env=env) as child,
    ):
        try:
            yield child
        finally:
            child.stop(grace=15.0)


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(what: str, check: Any, timeout: float, fleet: _Fleet | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AtollError(f"timed out after {timeout:g} s waiting for {what}")
        if fleet is not None:
            fleet.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(fleet.changed.wait(), 1.0)
        else:
            await asyncio.sleep(0.5)


async def _create_nodes(api: _Api, names: Sequence[str], version: str) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(name: str) -> None:
        async with gate:
            await api.call("POST", "/api/v1/nodes", fake_node(name, version))

    await asyncio.gather(*(one(n) for n in names))


async def _token(api: _Api) -> str:
    path = f"/api/v1/namespaces/{ACCOUNT_NAMESPACE}/serviceaccounts/{ACCOUNT}/token"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    answer = await api.call("POST", path, body)
    return str(answer["status"]["token"])


async def _counted(api: _Api) -> float:
    metrics = await api.call("GET", "/metrics")
    return dispatched(str(metrics), DISPATCHED, {"flow_schema": FLOW_SCHEMA})


def _pool_phase(pool: Mapping[str, Any]) -> str:
    return str((pool.get("status") or {}).get("phase", ""))


async def _rollout(setup: _Setup, nodes: int, reboot_seconds: float, interval: float) -> Any:
    plane, workdir = setup.plane, setup.workdir
    api = _Api(plane)
    fleet = _Fleet(api, reboot_seconds)
    selector = f"{POOL_LABEL}%3D{POOL}"
    names = [f"kwok-{i:05}" for i in range(nodes)]
    watcher = asyncio.get_running_loop().create_task(fleet.watch(selector))
    try:
        await api.call("POST", "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas",
                       flow_schema(FLOW_SCHEMA, ACCOUNT_NAMESPACE, ACCOUNT))  # fmt: skip
        began = time.monotonic()
        await _create_nodes(api, names, "v1")
        created = time.monotonic() - began

        async def all_ready() -> bool:
            if setup.kwok.poll() is not None:
                raise AtollError(f"kwok exited ({setup.kwok.poll()}): see {workdir / 'kwok.log'}")
            return len(fleet.nodes) == nodes and not any(
                unavailable(n) for n in fleet.nodes.values()
            )

        await _until(f"{nodes} Nodes Ready (kwok)", all_ready, 300, fleet)
        ready = time.monotonic() - began
        config = workdir / "operator.kubeconfig"
        config.write_text(
            service_account_kubeconfig(plane.server, plane.ca_file, await _token(api))
        )
        await api.call("POST", POOLS, pool_object("v1", "v1"))
        argv: list[str | Path] = [sys.executable, "-m", "atoll", "fleet", "operator"]
        argv += ["--kubeconfig", config]
        argv += ["--interval", str(interval)]
        # The operator from this very tree (a clean clone on PYTHONPATH is measured as such).
        env = {"PYTHONPATH": os.fspath(SOURCE)}
        with _process(argv, workdir / "operator.log", env) as operator:

            async def planned() -> bool:
                if operator.poll() is not None:
                    raise AtollError(f"the operator exited ({operator.poll()}): see {workdir}")
                pool = await api.call("GET", f"{POOLS}/{POOL}")
                return _pool_phase(pool) == "Completed"

            await _until("the operator's first plan of the pool", planned, 120)
            return await _measure(api, fleet, operator.pid, nodes, reboot_seconds, interval) | {
                "nodes created (s)": round(created, 1),
                "nodes created and Ready (s)": round(ready, 1),
            }
    finally:
        watcher.cancel()
        for task in list(fleet.tasks):
            task.cancel()
        await asyncio.gather(watcher, *fleet.tasks, return_exceptions=True)
        await api.close()


async def _measure(
    api: _Api, fleet: _Fleet, pid: int, nodes: int, reboot_seconds: float, interval: float
) -> dict[str, Any]:
    ideal = ideal_wave_time(nodes, MAX_UNAVAILABLE_PERCENT, reboot_seconds)
    requests_before = await _counted(api)
    cpu_before = cpu_seconds(pid)
    fleet.agents_on = True
    history_from = len(fleet.samples)
    t0 = fleet.now()
    await api.call("PATCH", f"{POOLS}/{POOL}", {"spec": {"version": "v2", "previousVersion": "v1"}})

    async def finished() -> bool:
        done = sum(
            1
            for n in fleet.nodes.values()
            if _notes(n).get(CURRENT_VERSION) == "v2" and not unavailable(n)
        )
        return done == nodes

    complete = True
    try:
        await _until("the rollout", finished, 3 * ideal.seconds + 300, fleet)
    except AtollError as e:
        fleet.errors.append(str(e))
        complete = False
    cpu = cpu_seconds(pid) - cpu_before
    requests = await _counted(api) - requests_before
    memory = process_memory(pid)
    pool = await api.call("GET", f"{POOLS}/{POOL}")
    history = fleet.samples[history_from:]
    replayed = replay(history, ideal.max_unavailable, "v2", nodes)
    end = replayed.updated_at if replayed.updated_at is not None else fleet.now()
    elapsed = end - t0
    return {
        "nodes": nodes,
        "complete": complete,
        "max_unavailable": ideal.max_unavailable,
        "waves": ideal.waves,
        "reboot (s)": reboot_seconds,
        "operator interval (s)": interval,
        "ideal wave time (s)": round(ideal.seconds, 1),
        "measured (s)": round(elapsed, 1),
        "overhead": round(elapsed / ideal.seconds - 1, 4),
        "overhead per wave (s)": round((elapsed - ideal.seconds) / ideal.waves, 2),
        "pool phase": _pool_phase(pool),
        "pool updated": (pool.get("status") or {}).get("updated"),
        "peak unavailable (history)": replayed.peak,
        "times above maxUnavailable (history)": len(replayed.over),
        "watch events recorded": len(history),
        "nodes seen not Ready during rollout": len(fleet.not_ready),
        "median step of one node": step_times(fleet.marks),
        "first node unavailable after the spec change (s)": next(
            (round(t - t0, 2) for t, _ in replayed.steps if t >= t0), None
        ),
        "operator CPU during rollout (s)": round(cpu, 2),
        "operator CPU per node per minute (ms)": round(1000 * cpu / nodes / (elapsed / 60), 3),
        "operator peak RSS (MB)": mb(memory.get("VmHWM", memory["VmRSS"])),
        "operator RSS at end (MB)": mb(memory["VmRSS"]),
        "operator API requests during rollout": int(requests),
        "operator API requests per node": round(requests / nodes, 2),
        "agent or watch errors": len(fleet.errors),
        "first error": fleet.errors[0] if fleet.errors else None,
        "unavailable steps": [(round(t - t0, 2), c) for t, c in replayed.steps if t >= t0],
    }


def run_benchmark(
    workdir: Path,
    reporter: Reporter,
    *,
    nodes: int = 1000,
    reboot_seconds: float = 30.0,
    interval: float = 1.0,
    kubernetes: Mapping[str, Path] | None = None,
    fake: kwok.KwokBinary | None = None,
) -> dict[str, object]:
    """The stage's figures; ``kubernetes`` (the binaries by name) and ``fake`` (kwok) are
    taken from the cache, or built, unless given."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kubernetes is None:
        with reporter.stage("kubernetes binaries", "from the cache, or built"):
            kubernetes = kubernetes_build.build(reporter).binaries
    if fake is None:
        with reporter.stage("kwok", "from the cache, or built"):
            fake = kwok.build(reporter)
    cluster = workdir / "cluster"
    shutil.rmtree(cluster, ignore_errors=True)  # a fresh etcd: no Nodes of an earlier run
    with running_cluster(cluster, kubernetes, apiserver_args=APISERVER_ARGS) as plane:
        kubectl = kubernetes["kubectl"]
        config: list[str | Path] = ["--kubeconfig", plane.kubeconfig]
        run([kubectl, *config, "apply", "-f", DEPLOY / "nodepool-crd.yaml"])
        run([kubectl, *config, "apply", "-f", DEPLOY / "rbac.yaml"])
        crd = f"crd/{PLURAL}.{GROUP}"
        run([kubectl, *config, "wait", "--for=condition=Established", crd, "--timeout=60s"])
        argv = kwok_argv(fake.path, fake.stages, plane.kubeconfig, _free_port())
        with _process(argv, workdir / "kwok.log") as kwok_process:
            setup = _Setup(plane, kubectl, kwok_process, workdir)
            with reporter.stage("operator rollout", f"{nodes} nodes, reboot {reboot_seconds:g} s"):
                figures = asyncio.run(_rollout(setup, nodes, reboot_seconds, interval))
    figures["kwok"] = f"{kwok.MODULE} {fake.version}"
    steps = figures.pop("unavailable steps")
    return {
        "figures": {"rollout": figures},
        "targets": _targets(figures),
        "series": {"unavailable over time": steps},
    }


def _targets(f: Mapping[str, Any]) -> list[dict[str, object]]:
    nodes, complete = f["nodes"], f["complete"] and f["pool updated"] == f["nodes"]
    shown = f"{f['overhead']:.1%}" + ("" if complete else " (INCOMPLETE)")
    per_node = f["operator API requests per node"]
    return [
        {
            "name": f"NodePool rollout of {nodes} fake nodes over the ideal wave time "
            f"(maxUnavailable {MAX_UNAVAILABLE_PERCENT}%, reboot {f['reboot (s)']:g} s)",
            "value": f"{shown}: {f['measured (s)']} s vs {f['ideal wave time (s)']} s",
            "target": f"< {TARGET_OVERHEAD:.0%}",
            "met": complete and f["overhead"] < TARGET_OVERHEAD,
        },
        {
            "name": "maxUnavailable never exceeded (recorded watch history)",
            "value": f"peak {f['peak unavailable (history)']} of {f['max_unavailable']} "
            f"over {f['watch events recorded']} events",
            "target": f"<= {f['max_unavailable']}",
            "met": f["peak unavailable (history)"] <= f["max_unavailable"]
            and f["times above maxUnavailable (history)"] == 0,
        },
        {
            "name": "operator memory and CPU",
            "value": f"peak RSS {f['operator peak RSS (MB)']} MB, "
            f"{f['operator CPU during rollout (s)']} CPU s "
            f"({f['operator CPU per node per minute (ms)']} ms per node per minute)",
            "target": "reported",
            "met": complete,
        },
        {
            "name": "operator API requests per node during the rollout",
            "value": f"{per_node} ({f['operator API requests during rollout']} in all)",
            "target": "reported (counted by the API server)",
            "met": complete and f["operator API requests during rollout"] > 0,
        },
    ]

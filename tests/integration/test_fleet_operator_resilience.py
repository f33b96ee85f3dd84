"""The fleet operator on a real kube-apiserver when things go wrong: the ``atoll fleet
operator`` process SIGKILLed mid-rollout, and an API server that answers 429.

The control plane of this module (``atoll cluster up``) runs the legacy in-flight
limiter instead of API Priority and Fairness, with low limits
(``--max-requests-inflight``, ``--max-mutating-requests-inflight``): a request
beyond them is refused at once with 429 and ``Retry-After: 1``. Requests of
``system:masters`` are never limited, so the test's own clients (the admin: the
fake kubelet, the fake agents, the observer) are not slowed; the operator (the
shipped service account) and the load (the same identity) are.

The operator runs as users run it, ``python -m atoll fleet operator`` with a
kubeconfig, and is stopped by its pid. Availability is observed from the API,
not from the operator: :class:`Unavailability` lists and then watches the pool's
Nodes, so it sees every state the API server held, in order, and counts the
nodes that are cordoned or not Ready in each. The node's agent is played by
:class:`RebootingAgents`: it stages what it is told, and when allowed to reboot
its Node goes NotReady for a moment and comes back Ready on the new version.
The kubelet's part is the cluster test's :class:`FakeKubelet`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from atoll.cluster.build import KubernetesBinaries
from atoll.cluster.up import running_cluster
from atoll.fleet import drain
from atoll.fleet import operator as op
from atoll.process import STDOUT, Child, start
from atoll.wire import kubenode
from atoll.wire.kubenode import Grant, NodeState
from tests.integration.test_fleet_operator_cluster import (
    NAMESPACE,
    POOLS,
    Cluster,
    FakeKubelet,
    add_pool,
    budget,
    deployment,
    pool_status,
    prepared,
    ready_pods,
    until,
)
from tests.kube_api import Api

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/etcd").exists(), reason="etcd-server is not installed"
)

LIMITS = (
    "--enable-priority-and-fairness=false",
    "--max-requests-inflight=3",
    "--max-mutating-requests-inflight=2",
)
TIMEOUT = 90.0  # a bound, not a pace: the rollouts take 10-40 s here


@pytest.fixture(scope="module")
def cluster(
    kubernetes_binaries: KubernetesBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cluster")
    with running_cluster(directory, kubernetes_binaries.binaries, apiserver_args=LIMITS) as cp:
        yield prepared(cp, kubernetes_binaries.binaries["kubectl"])


# --- what the test observes and plays ------------------------------------------------------


def _ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _unavailable(nodes: dict[str, dict[str, Any]]) -> list[str]:
    """Nodes cordoned or not Ready: what maxUnavailable bounds, seen from the API."""
    return sorted(
        name for name, n in nodes.items() if n["spec"].get("unschedulable") or not _ready(n)
    )


class Unavailability:
    """Every state of the pool's Nodes the API server held (a list, then a watch from
    its resourceVersion, again when the watch ends), and the unavailable nodes in each."""

    def __init__(self, admin: Api, selector: str) -> None:
        self.admin = admin
        self.selector = selector
        self.worst: list[str] = []
        self.states = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unavailability", daemon=True)

    def _see(self, nodes: dict[str, dict[str, Any]]) -> None:
        self.states += 1
        down = _unavailable(nodes)
        if len(down) > len(self.worst):
            self.worst = down

    def _round(self) -> None:
        listed = self.admin.ok("GET", f"/api/v1/nodes?labelSelector={self.selector}")
        nodes = {n["metadata"]["name"]: n for n in listed["items"]}
        self._see(nodes)
        version = listed["metadata"]["resourceVersion"]
        path = (
            f"/api/v1/nodes?watch=1&labelSelector={self.selector}"
            f"&resourceVersion={version}&timeoutSeconds=3"
        )
        for event in self.admin.lines(path):
            obj = event["object"]
            if event["type"] in ("ADDED", "MODIFIED"):
                nodes[obj["metadata"]["name"]] = obj
            elif event["type"] == "DELETED":
                nodes.pop(obj["metadata"]["name"], None)
            else:  # ERROR (410: too old): list again
                return
            self._see(nodes)
            if self._stop.is_set():
                return

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except (OSError, urllib.error.URLError, AssertionError) as e:
                self.errors.append(repr(e))
                time.sleep(0.2)

    def __enter__(self) -> Unavailability:
        self._thread.start()
        until("the first state observed", lambda: self.states > 0)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class RebootingAgents:
    """The agents of ``nodes``: stage what they are told; when allowed (and ``rebooting``
    is set), reboot: the Node goes NotReady, then after ``down_for`` seconds it is
    Ready again on the granted version."""

    admin: Api
    nodes: set[str]
    down_for: float = 1.0
    rebooting: threading.Event = field(default_factory=threading.Event)
    down: dict[str, tuple[float, str]] = field(default_factory=dict)
    rebooted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def tick(self) -> None:
        for name in sorted(self.nodes):
            node = self.admin.ok("GET", f"/api/v1/nodes/{name}")
            # Read and written as the agent does: the Node protocol's types.
            state, grant = NodeState.from_node(node), Grant.from_node(node)
            assert state is not None, name
            if name in self.down:
                since, version = self.down[name]
                if time.monotonic() - since >= self.down_for:
                    self._publish(name, replace(state, version=version, staged=None))
                    self._ready(name, True)
                    del self.down[name]
                    self.rebooted.append(name)
            elif grant is not None and grant.version != state.version:
                if grant.may_reboot and self.rebooting.is_set():
                    if drain_left(self.admin, name):
                        self.errors.append(f"{name} allowed to reboot with pods left")
                    self._ready(name, False)
                    self.down[name] = (time.monotonic(), grant.version)
                elif grant.stage and state.staged != grant.version:
                    self._publish(name, replace(state, staged=grant.version))

    def _publish(self, name: str, state: NodeState) -> None:
        self.admin.ok("PATCH", f"/api/v1/nodes/{name}", state.patch())

    def _ready(self, name: str, ready: bool) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        condition = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        self.admin.ok(
            "PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [condition]}}
        )


def drain_left(admin: Api, node: str) -> list[str]:
    pods = admin.items(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
    return [drain.pod_name(p) for p in pods if drain.fate(p) is drain.Fate.EVICT]


def write_kubeconfig(cluster: Cluster, token: str, path: Path) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "atoll",
                "cluster": {
                    "server": cluster.plane.server,
                    "certificate-authority": os.fspath(cluster.plane.ca_file),
                },
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "atoll", "context": {"cluster": "atoll", "user": "operator"}}],
        "current-context": "atoll",
    }
    path.write_text(json.dumps(document))
    return path


@dataclass
class OperatorProcess:
    """``python -m atoll fleet operator``, started and killed by the test (by its pid)."""

    kubeconfig: Path
    log: Path
    child: Child | None = None
    starts: int = 0

    def start(self) -> None:
        assert self.child is None
        with self.log.open("ab") as out:
            argv = [sys.executable, "-m", "atoll", "fleet", "operator"]
            argv += ["--kubeconfig", os.fspath(self.kubeconfig), "--interval", "0.5"]
            self.child = start(argv, stdout=out, stderr=STDOUT)
        self.starts += 1

    def kill(self) -> None:
        assert self.child is not None
        assert self.child.poll() is None, f"the operator ended by itself: {self.tail()}"
        self.child.kill()  # SIGKILL to its pid: no cleanup, no last patch
        self.child = None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(10)
            self.child = None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def until(self, admin: Api, pool: str, what: str, check: Callable[[], Any]) -> Any:
        """:func:`until`, bounded by :data:`TIMEOUT`; a timeout shows the pool's status
        and the end of the operator's log."""
        try:
            return until(what, check, TIMEOUT)
        except AssertionError as e:
            status = json.dumps(pool_status(admin, pool), indent=1)[:3000]
            raise AssertionError(f"{e}\npool status: {status}\noperator log:\n{self.tail()}") from e


@dataclass
class Pool:
    """Three nodes, a Deployment of three with a PDB allowing one disruption, and a
    NodePool rolling them 1.0 -> 2.0, maxUnavailable 1, in reverse name order when
    all are staged (a priority label): a node finishing and the next being granted
    are then written in the opposite order of their names."""

    name: str
    nodes: list[str]
    selector: str


def set_up_pool(cluster: Cluster, kubelet: FakeKubelet, name: str) -> Pool:
    admin = cluster.admin
    nodes = [f"{name}-{i}" for i in (1, 2, 3)]
    for i, node in enumerate(nodes, 1):
        kubelet.add_node(node, {"pool": name, "atoll.dev/priority": str(i)}, "1.0")
    apps = f"/apis/apps/v1/namespaces/{NAMESPACE}"
    admin.ok("POST", f"{apps}/deployments", deployment(name, 3, {"pool": name}))
    admin.ok(
        "POST",
        f"/apis/policy/v1/namespaces/{NAMESPACE}/poddisruptionbudgets",
        budget(name, name, minAvailable=2),
    )
    until(f"3 {name} pods Ready", lambda: len(ready_pods(admin, name)) == 3)
    return Pool(name, nodes, f"pool%3D{name}")


def start_rollout(admin: Api, pool: Pool) -> None:
    add_pool(
        admin,
        pool.name,
        {
            "version": "2.0",
            "previousVersion": "1.0",
            "selector": {"matchLabels": {"pool": pool.name}},
            "strategy": {"maxUnavailable": 1, "priorityLabel": "atoll.dev/priority"},
        },
    )


def finish(operator: OperatorProcess, admin: Api, agents: RebootingAgents, pool: Pool) -> None:
    """The agents play on until the pool is Completed; then it is checked finished."""

    def completed() -> bool:
        agents.tick()
        return pool_status(admin, pool.name).get("phase") == "Completed"

    operator.until(admin, pool.name, "the rollout to complete", completed)
    assert_finished(admin, pool)


def assert_finished(admin: Api, pool: Pool) -> None:
    """Every node on 2.0, uncordoned, unmarked; the pool Completed."""
    status = pool_status(admin, pool.name)
    assert (status["total"], status["updated"], status["failed"]) == (3, 3, 0), status

    def settled() -> bool:
        return all(
            not n["spec"].get("unschedulable")
            for n in admin.items(f"/api/v1/nodes?labelSelector={pool.selector}")
        )

    until("every node uncordoned", settled)
    for node in admin.items(f"/api/v1/nodes?labelSelector={pool.selector}"):
        notes = node["metadata"]["annotations"]
        assert notes[kubenode.CURRENT_VERSION] == "2.0", node["metadata"]["name"]
        assert notes[op.A_PHASE] == "idle", notes
        assert not set(drain.AUTOSCALER_MARKS) & set(notes), notes
        assert drain.A_MARKED not in notes
        assert op.A_GRANTED not in notes


def node_notes(admin: Api, name: str) -> tuple[bool, dict[str, str]]:
    node = admin.ok("GET", f"/api/v1/nodes/{name}")
    return node["spec"].get("unschedulable") is True, node["metadata"].get("annotations") or {}


# --- the tests ------------------------------------------------------------------------------


def test_the_operator_sigkilled_mid_rollout_resumes_from_the_api(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The operator process is SIGKILLed three times: when the first node is granted and
    cordoned, when it is drained and allowed to reboot (it then reboots while no
    operator runs), and when the second node is granted. Restarted each time, it
    finishes the rollout: every node on 2.0, uncordoned and unmarked, and at no state
    the API server held were more than maxUnavailable (1) nodes cordoned or NotReady."""
    admin = cluster.admin
    kubeconfig = write_kubeconfig(
        cluster, cluster.token("atoll-fleet-operator"), tmp_path / "operator.kubeconfig"
    )
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log")
    with FakeKubelet(admin) as kubelet:
        pool = set_up_pool(cluster, kubelet, "kill")
        agents = RebootingAgents(admin, set(pool.nodes))
        with Unavailability(admin, pool.selector) as seen:
            try:
                operator.start()
                start_rollout(admin, pool)

                def granted(but: str = "") -> str | None:
                    """A node granted and cordoned (other than ``but``)."""
                    agents.tick()
                    for node in pool.nodes:
                        cordoned, notes = node_notes(admin, node)
                        if node != but and cordoned and notes.get(op.A_PHASE) == "rebooting":
                            return node
                    return None

                # The planner grants the staged node of highest priority: which one
                # that is depends on what the agents had staged when it planned.
                first = operator.until(admin, pool.name, "a node granted and cordoned", granted)
                operator.kill()
                assert set(drain.AUTOSCALER_MARKS) <= set(node_notes(admin, first)[1])
                operator.start()

                def may_reboot(node: str) -> bool:
                    agents.tick()
                    return node_notes(admin, node)[1].get(kubenode.MAY_REBOOT) == "true"

                operator.until(
                    admin,
                    pool.name,
                    f"{first} drained, allowed to reboot",
                    lambda: may_reboot(first),
                )
                operator.kill()
                assert drain_left(admin, first) == []
                agents.rebooting.set()  # it reboots while no operator runs

                def back(node: str) -> bool:
                    agents.tick()
                    return node in agents.rebooted

                operator.until(admin, pool.name, f"{first} back on 2.0", lambda: back(first))
                cordoned, notes = node_notes(admin, first)
                assert cordoned  # nobody uncordoned it: the operator is dead
                assert notes[op.A_PHASE] == "rebooting"
                operator.start()
                operator.until(
                    admin, pool.name, "a second node granted", lambda: granted(but=first)
                )
                operator.kill()
                operator.start()

                finish(operator, admin, agents, pool)
            finally:
                operator.stop()
                admin.call("DELETE", f"{POOLS}/{pool.name}")
    assert operator.starts == 4
    assert sorted(agents.rebooted) == sorted(pool.nodes)
    assert agents.errors == []
    assert seen.errors == []
    assert len(seen.worst) <= 1, f"more than maxUnavailable at once: {seen.worst}"
    assert kubelet.errors == []


RETRY_LINE = re.compile(
    r"HTTP 429, retry \d+ of \d+ in (?P<wait>[0-9.]+) s \(Retry-After: (?P<asked>\S+)\)"
)


class Load:
    """Threads LISTing as the operator's identity (which the in-flight limit covers), as
    fast as they can, until stopped; each counts the 429s it was answered."""

    def __init__(self, api: Api, threads: int) -> None:
        self.api = api
        self.refused = 0
        self.answered = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"load-{i}", daemon=True)
            for i in range(threads)
        ]

    def _status(self) -> int:
        request = urllib.request.Request(  # noqa: S310 (the test's own https:// server)
            self.api.server + "/api/v1/pods", headers=self.api.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.api.context) as answer:  # noqa: S310
                answer.read()
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return int(e.code)  # the in-flight limit's 429 is plain text: no JSON to read

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                code = self._status()
            except OSError:
                continue
            with self._lock:
                self.answered += 1
                self.refused += code == 429

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_an_api_server_answering_429_slows_the_operator_but_breaks_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Parallel LISTs as the operator's own identity keep the API server at its in-flight
    limit while the pool rolls: the operator is answered 429, waits at least the
    Retry-After the server asks for (its log says each wait), and the rollout
    finishes within maxUnavailable once the load is gone."""
    admin = cluster.admin
    token = cluster.token("atoll-fleet-operator")
    kubeconfig = write_kubeconfig(cluster, token, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(kubeconfig, tmp_path / "operator.log")
    with FakeKubelet(admin) as kubelet:
        pool = set_up_pool(cluster, kubelet, "busy")
        agents = RebootingAgents(admin, set(pool.nodes))
        agents.rebooting.set()
        with Unavailability(admin, pool.selector) as seen:
            try:
                operator.start()
                with Load(Api(cluster.plane, token=token), threads=12) as load:
                    start_rollout(admin, pool)

                    def refused_and_moving() -> bool:
                        agents.tick()
                        told = RETRY_LINE.search(operator.log.read_text(errors="replace"))
                        return told is not None and bool(agents.rebooted)

                    operator.until(
                        admin, pool.name, "a 429 to the operator while it rolls", refused_and_moving
                    )
                assert load.refused > 0, "the load was never refused: no 429 to see"

                finish(operator, admin, agents, pool)
            finally:
                operator.stop()
                admin.call("DELETE", f"{POOLS}/{pool.name}")
    waits = [m.groupdict() for m in RETRY_LINE.finditer(operator.log.read_text())]
    assert waits, operator.tail()
    for wait in waits:
        if wait["asked"] != "none":
            assert float(wait["wait"]) >= float(wait["asked"]), wait
    assert "Traceback" not in operator.log.read_text(), operator.tail()
    assert sorted(agents.rebooted) == sorted(pool.nodes)
    assert agents.errors == []
    assert seen.errors == []
    assert len(seen.worst) <= 1, f"more than maxUnavailable at once: {seen.worst}"
    assert kubelet.errors == []

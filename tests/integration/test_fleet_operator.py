"""The fleet operator (kopf) against kmock's Kubernetes API emulator over real HTTP.

The fast tier of the operator's tests: the real kopf operator (login,
discovery, watch, handlers, timers) runs against ``kmock``'s in-memory
emulator on a loopback port, in a thread of this process or as the
``atoll fleet operator`` process. The rollout decisions themselves are the
shared planner's, tested in tests/unit/test_fleet_rollout.py, and the pure
translation of objects in tests/unit/test_fleet_operator.py; these tests check
the wiring: the planner's decisions land on the right Node objects,
maxUnavailable and partition hold across ticks, and a failed report pauses the
pool in its status. The same operator against a real API server (RBAC, the
CRD's schema, real evictions and budgets): test_fleet_operator_cluster.py.

"Nothing more happens" is asserted after counted plans (:meth:`Cluster.plans`:
the emulator counts the operator's status patches), never after a sleep, so a
stalled operator fails the test instead of passing it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import kmock
import kopf

from atoll.fleet import operator as op
from atoll.fleet.rollout import Phase
from atoll.process import DEVNULL, Child, start
from atoll.wire import kubenode
from atoll.wire.kubenode import NodeState

POOLS = f"/apis/{op.GROUP}/{op.VERSION}/{op.PLURAL}"
TIMEOUT = 20.0


class Cluster:
    """A kmock API server with nodes, pools and a running operator."""

    def __init__(self, emulator: EvictingEmulator, client: aiohttp.ClientSession, url: str) -> None:
        self.emulator = emulator
        self.client = client
        self.url = url

    async def _json(self, method: str, path: str, body: object = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.client.request(method, path, json=body, headers=headers) as r:
            assert r.status < 400, f"{method} {path}: {r.status} {await r.text()}"
            return await r.json(content_type=None)

    async def add_node(self, name: str, version: str, **labels: str) -> None:
        await self._json(
            "POST",
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            },
        )
        await self._json("PATCH", f"/api/v1/nodes/{name}", NodeState(version).patch())

    async def report(self, name: str, **changes: Any) -> None:
        """What the node's agent does: publish its whole state on its own Node
        (:class:`NodeState`'s patch), changed by ``changes`` (its fields)."""
        state = NodeState.from_node(await self._json("GET", f"/api/v1/nodes/{name}"))
        assert state is not None, f"node {name} has no state"
        patch = replace(state, **changes).patch()
        await self._json("PATCH", f"/api/v1/nodes/{name}", patch)

    async def add_pool(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{op.GROUP}/{op.VERSION}",
            "kind": op.KIND,
            # kmock keeps no resourceVersion of its own; kopf's JSON patches test it.
            "metadata": {"name": name, "resourceVersion": "1"},
            "spec": spec,
        }
        await self._json("POST", POOLS, body)

    async def nodes(self) -> dict[str, dict[str, Any]]:
        items = (await self._json("GET", "/api/v1/nodes"))["items"]
        return {n["metadata"]["name"]: n for n in items}

    async def pool_status(self, name: str) -> dict[str, Any]:
        return dict((await self._json("GET", f"{POOLS}/{name}")).get("status") or {})

    async def plans(self, pool: str, count: int = 3) -> None:
        """Wait until the operator has planned ``pool`` ``count`` more times.

        Each plan ends with a patch of the pool's status, and plans run one at a
        time (one lock): from the second patch counted here on, each comes from
        a plan that read the objects after this call. Three are "several ticks".
        """
        start = self.emulator.plans_of(pool)

        async def planned() -> bool:
            return self.emulator.plans_of(pool) >= start + count

        await self.until(f"{count} plans of {pool}", planned)

    async def until(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll ``check`` (async) until it returns a truthy value, bounded in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            value = await check()
            if value:
                return value
            if loop.time() > deadline:
                nodes = await self.nodes()
                notes = {n: node["metadata"].get("annotations") for n, node in nodes.items()}
                raise AssertionError(f"timed out waiting for {what}: {json.dumps(notes)}")
            await asyncio.sleep(0.05)


def notes(node: dict[str, Any]) -> dict[str, str]:
    return dict(node["metadata"].get("annotations") or {})


class EvictingEmulator(kmock.KubernetesEmulator):
    """kmock plus the Eviction subresource, which kmock does not emulate: an
    eviction deletes the pod, unless the pod is in ``protected`` (as if a
    PodDisruptionBudget allowed no disruption), which answers 429 like the API.

    It also counts the operator's plans per pool: each one ends with a merge
    patch of the pool's status that carries its ``phase``."""

    protected: set[str]

    def plans_of(self, pool: str) -> int:
        counts: collections.Counter[str] = self.__dict__.get("plan_counts", collections.Counter())
        return counts[pool]

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # The operator's preflight: every permission is granted here (RBAC is
        # tested against a real API server, test_fleet_operator_cluster.py).
        if request.url.path.endswith("/selfsubjectaccessreviews"):
            return aiohttp.web.json_response({"status": {"allowed": True}}, status=201)
        if request.url.path.endswith("/selfsubjectreviews"):
            return aiohttp.web.json_response({"status": {"userInfo": {"username": "kmock"}}})
        if request.subresource != "eviction" or request.resource is None or request.name is None:
            response = await super()._handle(request)
            if _is_plan(request) and response.status < 400:
                counts = self.__dict__.setdefault("plan_counts", collections.Counter())
                counts[request.name] += 1
            return response
        key = (request.resource, request.namespace, request.name)
        if f"{request.namespace}/{request.name}" in getattr(self, "protected", set()):
            # The real API server's refusal names the budget as a cause (an overloaded
            # server's 429 does not, and the operator retries that one).
            cause = {"reason": "DisruptionBudget", "message": "The disruption budget allows none"}
            body = {
                "kind": "Status",
                "code": 429,
                "reason": "TooManyRequests",
                "details": {"causes": [cause]},
            }
            return aiohttp.web.json_response(body, status=429)
        if key not in self.objects or self.objects[key].deleted:
            return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)
        self.objects[key].delete()
        return aiohttp.web.json_response({"kind": "Status", "code": 201}, status=201)


def _is_plan(request: kmock.Request) -> bool:
    """The status patch that ends one of the operator's plans (``KubeApi.patch_pool_status``)."""
    body = request.data if isinstance(request.data, dict) else {}
    return (
        request.method == kmock.method.PATCH
        and request.resource is not None
        and request.resource.plural == op.PLURAL
        and request.subresource == "status"
        and "phase" in (body.get("status") or {})
    )


@asynccontextmanager
async def cluster(*, operator: bool = True) -> AsyncIterator[Cluster]:
    async with EvictingEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources[f"{op.GROUP}/{op.VERSION}/{op.PLURAL}"] = kmock.ResourceInfo(
            kind=op.KIND,
            singular="nodepool",
            namespaced=False,
            verbs={"list", "watch", "get", "patch", "create", "update"},
            subresources={"status"},
        )
        emulator.resources["v1/nodes"] = kmock.ResourceInfo(
            kind="Node", singular="node", namespaced=False, verbs={"list", "watch", "get", "patch"}
        )
        emulator.resources["v1/pods"] = kmock.ResourceInfo(
            kind="Pod", singular="pod", namespaced=True, verbs={"list", "get", "create"}
        )
        emulator.resources["policy/v1/poddisruptionbudgets"] = kmock.ResourceInfo(
            kind="PodDisruptionBudget",
            singular="poddisruptionbudget",
            namespaced=True,
            verbs={"list", "create"},
        )
        # kopf's backbone: it waits for these to be discoverable before it watches anything.
        emulator.resources["v1/events"] = kmock.ResourceInfo(
            kind="Event", singular="event", namespaced=True, verbs={"create"}
        )
        emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", singular="namespace", namespaced=False, verbs={"list", "watch"}
        )
        emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = (
            kmock.ResourceInfo(
                kind="CustomResourceDefinition",
                singular="customresourcedefinition",
                namespaced=False,
                verbs={"list", "watch"},
            )
        )
        url = str(server.url).rstrip("/")
        if not operator:
            yield Cluster(emulator, server.client, url)
            return
        # The operator gets its own thread and loop: on stop kopf waits for every
        # task of its loop, which would include the emulator's.
        stop = threading.Event()
        ready = threading.Event()
        config = op.OperatorConfig(
            interval=0.2, login=lambda: kopf.ConnectionInfo(server=url, insecure=True)
        )
        failure: list[BaseException] = []

        def operate() -> None:
            try:
                asyncio.run(op.run_operator(config, stop_flag=stop, ready_flag=ready))
            except BaseException as e:
                failure.append(e)

        thread = threading.Thread(target=operate, name="operator")
        thread.start()
        try:
            assert await asyncio.to_thread(ready.wait, TIMEOUT), "the operator never got ready"
            yield Cluster(emulator, server.client, url)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, TIMEOUT)
        assert not thread.is_alive(), "the operator did not stop"
        assert not failure, failure


def run(scenario: Callable[[Cluster], Any]) -> None:
    async def main() -> None:
        async with cluster() as c:
            await scenario(c)

    asyncio.run(asyncio.wait_for(main(), 3 * TIMEOUT))


def granted(nodes: dict[str, dict[str, Any]]) -> set[str]:
    """Nodes holding a reboot slot (phase rebooting: cordoned, draining or rebooting)."""
    return {n for n, node in nodes.items() if notes(node).get(op.A_PHASE) == "rebooting"}


async def reboot_when_allowed(c: Cluster, names: set[str], version: str) -> None:
    """What the agents do: wait for may-reboot (after the drain), then come back on ``version``."""
    for name in sorted(names):

        async def allowed(name: str = name) -> bool:
            return notes((await c.nodes())[name]).get(kubenode.MAY_REBOOT) == "true"

        await c.until(f"may-reboot on {name}", allowed)
        await c.report(name, version=version)


def test_pool_rolls_nodes_within_max_unavailable_and_partition() -> None:
    async def scenario(c: Cluster) -> None:
        for i in range(1, 6):
            await c.add_node(f"n{i}", "1.0", role="web")
        await c.add_node("db1", "1.0", role="db")
        await c.add_pool(
            "web",
            {
                "version": "2.0",
                "previousVersion": "1.0",
                "selector": {"matchLabels": {"role": "web"}},
                "strategy": {"partition": 1, "maxUnavailable": 2},
            },
        )

        # Staging is free: the four nodes of the update set are told to stage at
        # once; the last by name (n5) is held on 1.0 by the partition.
        async def staged_orders() -> bool:
            # One reconcile writes the five nodes one patch after another: wait for the
            # held node's answer too, not only the four stage orders.
            nodes = await c.nodes()
            told = all(notes(nodes[f"n{i}"]).get(kubenode.STAGE) == "true" for i in range(1, 5))
            return told and notes(nodes["n5"]).get(kubenode.DESIRED_VERSION) is not None

        await c.until("stage orders", staged_orders)
        nodes = await c.nodes()
        assert {n: notes(nodes[n]).get(kubenode.DESIRED_VERSION) for n in nodes} == {
            "n1": "2.0",
            "n2": "2.0",
            "n3": "2.0",
            "n4": "2.0",
            "n5": "1.0",
            "db1": None,  # not selected by the pool: never touched
        }
        assert granted(nodes) == set()

        for i in range(1, 5):
            await c.report(f"n{i}", staged="2.0")

        # Waves of maxUnavailable = 2, each node rebooting when granted; a
        # sampler checks the bound all along, not only at the waves.
        samples: list[set[str]] = []

        async def sample() -> None:
            while True:
                samples.append(granted(await c.nodes()))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())

        async def first_wave() -> set[str] | None:
            now = granted(await c.nodes())
            return now if len(now) == 2 else None

        assert await c.until("the first wave", first_wave) == {"n1", "n2"}
        done: set[str] = set()
        while len(done) < 4:

            async def new_grants(done: set[str] = done) -> set[str]:
                return granted(await c.nodes()) - done

            wave = await c.until("reboot grants", new_grants)
            nodes = await c.nodes()
            for name in wave:
                node = nodes[name]
                assert notes(node)[op.A_GRANTED] == "2.0"
                assert node["spec"].get("unschedulable") is True  # cordoned with the grant
            await reboot_when_allowed(c, wave, "2.0")
            done |= wave
        sampler.cancel()
        assert max(len(s) for s in samples) == 2, [s for s in samples if len(s) > 2]
        assert done == {"n1", "n2", "n3", "n4"}

        async def completed() -> dict[str, Any] | None:
            status = await c.pool_status("web")
            return status if status.get("phase") == "Completed" else None

        status = await c.until("phase Completed", completed)
        assert (status["total"], status["updated"], status["held"], status["failed"]) == (
            5,
            4,
            1,
            0,
        )
        nodes = await c.nodes()
        for i in range(1, 5):
            assert nodes[f"n{i}"]["spec"].get("unschedulable") is False  # uncordoned
            assert notes(nodes[f"n{i}"])[op.A_PHASE] == Phase.IDLE.value
        assert notes(nodes["n5"]).get(kubenode.MAY_REBOOT) == "false"
        assert notes(nodes["n5"])[kubenode.CURRENT_VERSION] == "1.0"

    run(scenario)


def test_failed_node_pauses_the_pool_until_resumed() -> None:
    async def scenario(c: Cluster) -> None:
        for i in range(1, 4):
            await c.add_node(f"n{i}", "1.0", role="web")
        await c.add_pool(
            "web",
            {
                "version": "2.0",
                "previousVersion": "1.0",
                "selector": {"matchLabels": {"role": "web"}},
                "strategy": {"maxUnavailable": 1, "failureBudget": 0},
            },
        )
        for i in range(1, 4):
            await c.report(f"n{i}", staged="2.0")

        async def one_grant() -> set[str]:
            return granted(await c.nodes())

        first = await c.until("a reboot grant", one_grant)
        assert first == {"n1"}

        async def allowed() -> bool:
            return notes((await c.nodes())["n1"]).get(kubenode.MAY_REBOOT) == "true"

        await c.until("may-reboot on n1", allowed)
        # n1 reboots into 2.0 and its health trial fails (the agent's verdict).
        await c.report("n1", version="2.0", healthy=False, failed=True, failure="unhealthy")

        async def paused() -> dict[str, Any] | None:
            status = await c.pool_status("web")
            return status if status.get("phase") == "Paused" else None

        status = await c.until("phase Paused", paused)
        assert "failure budget exceeded" in status["pauseReason"]
        assert "n1" in status["pauseReason"]
        assert status["failed"] == 1
        condition = next(x for x in status["conditions"] if x["type"] == "Paused")
        assert condition["status"] == "True"
        await c.plans("web")  # several timer ticks: nobody else is granted
        nodes = await c.nodes()
        assert granted(nodes) == set()
        assert notes(nodes["n1"])[op.A_PHASE] == Phase.FAILED.value
        assert notes(nodes["n2"])[op.A_PHASE] != Phase.REBOOTING.value

        # The agent rolled back; the operator resumes the pool by annotation.
        await c.report("n1", version="1.0", staged="2.0", healthy=True)
        await c._json(
            "PATCH",
            f"{POOLS}/web",
            {"metadata": {"annotations": {op.A_RESUME: "2026-11-23T10:00:00Z"}}},
        )

        async def resumed() -> dict[str, Any] | None:
            status = await c.pool_status("web")
            return status if status.get("resumedAt") and not status.get("failurePause") else None

        status = await c.until("resume", resumed)
        assert status["phase"] == "Progressing"
        assert await c.until("a grant after resume", one_grant)

    run(scenario)


def _kubeconfig(path: Path, url: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def _start_cli(kubeconfig: Path, log: Path) -> Child:
    with log.open("ab") as stderr:
        return start(
            [
                sys.executable,
                "-m",
                "atoll.cli",
                "fleet",
                "operator",
                "--kubeconfig",
                kubeconfig,
                "--interval",
                "0.2",
            ],
            stdout=DEVNULL,
            stderr=stderr,
        )


def test_cli_operator_killed_mid_rollout_resumes_from_the_nodes(tmp_path: Path) -> None:
    """`atoll fleet operator` (a real process, kubeconfig login) is SIGKILLed after
    granting a wave; a new process counts those grants from the Node annotations
    and grants nothing more until they report back."""

    async def main() -> None:
        async with cluster(operator=False) as c:
            kubeconfig = _kubeconfig(tmp_path / "kubeconfig", c.url)
            for i in range(1, 5):
                await c.add_node(f"n{i}", "1.0", role="web")
                await c.report(f"n{i}", staged="2.0")
            await c.add_pool(
                "web",
                {
                    "version": "2.0",
                    "previousVersion": "1.0",
                    "selector": {"matchLabels": {"role": "web"}},
                    "strategy": {"maxUnavailable": 2},
                },
            )
            first = _start_cli(kubeconfig, tmp_path / "first.log")
            try:

                async def grants() -> set[str] | None:
                    now = granted(await c.nodes())
                    return now if len(now) == 2 else None

                wave: set[str] = await c.until("the first wave", grants)
            finally:
                first.kill()  # SIGKILL: no cleanup, no last patch (a no-op if it died)
            assert wave == {"n1", "n2"}

            log = tmp_path / "second.log"
            second = _start_cli(kubeconfig, log)
            try:

                async def planned_again() -> bool:
                    status = await c.pool_status("web")
                    return bool(status.get("unavailable") == 2 and status.get("updating") == 2)

                await c.until("the restarted operator's status", planned_again)
                await c.plans("web")  # several ticks of the new process
                assert granted(await c.nodes()) == {"n1", "n2"}
                await reboot_when_allowed(c, wave, "2.0")

                async def next_wave() -> set[str] | None:
                    # n1 and n2 report one after the other: each frees one slot.
                    more = granted(await c.nodes()) - wave
                    return more if len(more) == 2 else None

                assert await c.until("the second wave", next_wave) == {"n3", "n4"}
            finally:
                second.send_signal(signal.SIGTERM)
                status = await asyncio.to_thread(second.wait, TIMEOUT)
            assert status == 0, log.read_text()[-2000:]

    asyncio.run(asyncio.wait_for(main(), 4 * TIMEOUT))


def _pod(name: str, node: str, *, daemonset: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "apps"}
    if daemonset:
        meta["ownerReferences"] = [{"kind": "DaemonSet", "name": "agent", "apiVersion": "apps/v1"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": node},
        "status": {"phase": "Running"},
    }


def test_granted_node_is_drained_through_evictions_before_it_may_reboot() -> None:
    async def scenario(c: Cluster) -> None:
        await c.add_node("n1", "1.0", role="web")
        await c.report("n1", staged="2.0")
        c.emulator.protected = {"apps/db-0"}
        for pod in (
            _pod("web-0", "n1"),
            _pod("db-0", "n1"),
            _pod("logs-0", "n1", daemonset=True),
            _pod("web-1", "n2"),  # on another node: untouched
        ):
            await c._json("POST", "/api/v1/namespaces/apps/pods", pod)
        await c.add_pool(
            "web",
            {"version": "2.0", "selector": {"matchLabels": {"role": "web"}}},
        )

        async def refused() -> dict[str, Any] | None:
            node = (await c.nodes())["n1"]
            return node if "PodDisruptionBudget" in notes(node).get(kubenode.REASON, "") else None

        node = await c.until("an eviction refused by the budget", refused)
        assert notes(node)[op.A_PHASE] == Phase.REBOOTING.value
        assert notes(node)[kubenode.MAY_REBOOT] == "false"
        assert node["spec"]["unschedulable"] is True
        assert "apps/db-0" in notes(node)[kubenode.REASON]
        pods = {p["metadata"]["name"] for p in (await c._json("GET", "/api/v1/pods"))["items"]}
        assert pods == {"db-0", "logs-0", "web-1"}  # web-0 evicted; DaemonSet pod stays

        c.emulator.protected = set()  # the budget allows a disruption again

        async def may_reboot() -> bool:
            return notes((await c.nodes())["n1"]).get(kubenode.MAY_REBOOT) == "true"

        await c.until("may-reboot after the drain", may_reboot)
        pods = {p["metadata"]["name"] for p in (await c._json("GET", "/api/v1/pods"))["items"]}
        assert pods == {"logs-0", "web-1"}
        assert notes((await c.nodes())["n1"])[op.A_DRAINED] == "true"

        # Rebooted into 2.0: the agent is healthy before the kubelet is Ready.
        await c._json(
            "PATCH",
            "/api/v1/nodes/n1",
            {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        )
        await c.report("n1", version="2.0")
        await c.plans("web")  # several ticks: the gate stays closed, not failed
        node = (await c.nodes())["n1"]
        assert notes(node)[op.A_PHASE] == Phase.REBOOTING.value
        assert node["spec"]["unschedulable"] is True
        await c._json(
            "PATCH",
            "/api/v1/nodes/n1",
            {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        )

        async def uncordoned() -> bool:
            node = (await c.nodes())["n1"]
            return node["spec"].get("unschedulable") is False and op.A_DRAINED not in notes(node)

        await c.until("uncordon after the health gate", uncordoned)

    run(scenario)


def test_invalid_pool_is_reported_in_its_status_and_touches_no_node() -> None:
    async def scenario(c: Cluster) -> None:
        await c.add_node("n1", "1.0", role="web")
        await c.add_pool("web", {"version": "2.0", "strategy": {"maxUnavailable": "lots"}})

        async def invalid() -> dict[str, Any] | None:
            status = await c.pool_status("web")
            return status if status.get("phase") == "Invalid" else None

        status = await c.until("phase Invalid", invalid)
        assert "NodePool web: strategy.max_unavailable" in status["pauseReason"]
        assert kubenode.DESIRED_VERSION not in notes((await c.nodes())["n1"])

    run(scenario)


def test_a_node_breaking_the_node_protocol_blocks_its_pool_until_it_reads_again() -> None:
    async def scenario(c: Cluster) -> None:
        for i in (1, 2):
            await c.add_node(f"n{i}", "1.0", role="web")
        broken = {"metadata": {"annotations": {kubenode.HEALTHY: "yes"}}}
        await c._json("PATCH", "/api/v1/nodes/n2", broken)
        await c.add_pool("web", {"version": "2.0", "selector": {"matchLabels": {"role": "web"}}})

        async def blocked() -> dict[str, Any] | None:
            status = await c.pool_status("web")
            return status if status.get("phase") == "Blocked" else None

        status = await c.until("the pool blocked", blocked)
        assert "node n2: annotation atoll.dev/healthy" in status["pauseReason"]
        await c.plans("web")  # blocked reconciles patch the status too: counted
        nodes = await c.nodes()
        assert all(kubenode.DESIRED_VERSION not in notes(n) for n in nodes.values())

        # The agent publishes its whole state again: n2 reads again.
        await c._json("PATCH", "/api/v1/nodes/n2", NodeState("1.0").patch())

        async def staging() -> bool:
            nodes = await c.nodes()
            return all(notes(nodes[n]).get(kubenode.STAGE) == "true" for n in ("n1", "n2"))

        await c.until("stage orders once n2 reads again", staging)
        assert (await c.pool_status("web"))["unreadable"] == []

    run(scenario)

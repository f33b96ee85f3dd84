"""The agent's update loop on a cluster: its grant read from its own Node on a real
kube-apiserver (``atoll cluster up``, no VMs), as the node (a client certificate from
TLS bootstrapping, as the kubelet gets one).

First :class:`~atoll.agent.kubegrant.NodeGrants` alone: the answer without a grant,
a watch that wakes on the operator's grant, runs out, or is interrupted, a step
failure said on the Node until the operator wants another version, and a grant
that breaks the protocol. Then the whole way: the real operator rolls a NodePool
over two nodes whose agents are the real update loop (:class:`Updater`, with only
``ostree admin`` and ``systemctl reboot`` emulated, as in
``test_agent_update_loop.py``): each stages the signed commit from a real update
server when its Node says so, and reboots only once the operator has cordoned and
drained it and granted the reboot on the Node.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.agent.deployments import Deployments
from atoll.agent.kubegrant import NO_POOL, NodeGrants
from atoll.agent.kubenode import Publisher
from atoll.agent.softreboot import KernelFacts, Restarter
from atoll.agent.update_loop import Updater, UpdaterConfig, last_restart
from atoll.cluster.build import KubernetesBinaries
from atoll.cluster.up import ControlPlane, running_cluster
from atoll.fleet import nodepool
from atoll.process import as_text, run
from atoll.wire import kubenode as protocol
from atoll.wire.fleet import FleetError, Restart, RestartKind, Step, StepFailure
from atoll.wire.kubenode import Grant, Health, NodeState
from tests.integration.test_agent_kubenode import _node_root
from tests.integration.test_agent_update_loop import FakeSysroot
from tests.integration.test_fleet_operator_cluster import (
    Cluster,
    FakeKubelet,
    add_pool,
    pool_status,
    prepared,
    start_operator,
    stop_operator,
    until,
)
from tests.integration.test_publish import World, _node, _publish, world  # noqa: F401

pytestmark = [
    pytest.mark.skipif(not Path("/usr/bin/etcd").exists(), reason="etcd-server is not installed"),
    # The operator runs in a thread here, as in test_fleet_operator_cluster.py (see there).
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <(socket\.socket|function _SelectorTransport\.__del__)"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]


@pytest.fixture(scope="module")
def cluster(
    kubernetes_binaries: KubernetesBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), kubernetes_binaries.binaries) as cp:
        yield prepared(cp, kubernetes_binaries.binaries["kubectl"])


def _publisher(root: Path, name: str, state: Callable[[], NodeState | None]) -> Publisher:
    return Publisher(root, state, node=lambda: name, log=lambda _: None)


def _annotations(cluster: Cluster, name: str) -> dict[str, str]:
    node = cluster.admin.ok("GET", f"/api/v1/nodes/{name}")
    return dict(node["metadata"].get("annotations") or {})


def _grant(cluster: Cluster, name: str, grant: Grant) -> None:
    cluster.admin.ok("PATCH", f"/api/v1/nodes/{name}", grant.patch())


def test_the_grant_on_the_node_reaches_the_loop_and_a_watch_wakes_on_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    plane: ControlPlane = cluster.plane
    root = _node_root(plane, "grant-1", tmp_path)
    state = NodeState("1.0.0", commit="a" * 64, health=Health.HEALTHY)
    grants = NodeGrants(root, _publisher(root, "grant-1", lambda: state), watch_seconds=3)

    # No pool has said anything: stay on what runs. The report is on the Node.
    first = grants.report("grant-1", version="1.0.0", staged=None, healthy=True, failed=False)
    assert (first.version, first.stage, first.may_reboot, first.pool) == (
        "1.0.0", False, False, None
    )  # fmt: skip
    etag = first.etag
    assert first.reason == NO_POOL and etag
    notes = _annotations(cluster, "grant-1")
    assert notes[protocol.CURRENT_VERSION] == "1.0.0" and notes[protocol.HEALTHY] == "true"

    # Nothing changes: the watch runs out and answers with the same grant.
    assert grants.watch("grant-1", etag).etag == first.etag  # type: ignore[union-attr]
    # Interrupted (the agent stops, or the node's health changed): None, at once.
    started = time.monotonic()
    assert grants.watch("grant-1", etag, interrupted=lambda: True) is None
    assert time.monotonic() - started < 3

    # The operator grants: a waiting watch wakes with the grant.
    answers: list[Any] = []
    watcher = threading.Thread(target=lambda: answers.append(grants.watch("grant-1", etag)))
    grants.watch_seconds = 50
    watcher.start()
    time.sleep(0.5)
    granted = Grant("1.1.0", stage=True, may_reboot=False, pool="web")
    _grant(cluster, "grant-1", granted)
    watcher.join(30)
    assert not watcher.is_alive(), "the watch did not wake on the grant"
    [answer] = answers
    assert (answer.version, answer.stage, answer.may_reboot, answer.pool) == (
        "1.1.0", True, False, "web"
    )  # fmt: skip
    assert answer.etag != etag
    assert grants.desired("grant-1") == answer
    # The next report says which grant it answers (the operator counts a failure only
    # from a state that has seen its current grant).
    grants.report("grant-1", version="1.0.0", staged=None, healthy=True, failed=False)
    assert _annotations(cluster, "grant-1")[protocol.OBSERVED_GRANT] == granted.etag()


def test_a_step_failure_stays_on_the_node_until_the_operator_answers_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    root = _node_root(cluster.plane, "grant-2", tmp_path)
    state = NodeState("1.0.0", commit="b" * 64, health=Health.HEALTHY)
    grants = NodeGrants(root, _publisher(root, "grant-2", lambda: state))
    staging = Grant("1.1.0", stage=True, may_reboot=False, pool="web")
    _grant(cluster, "grant-2", staging)
    failure = StepFailure(Step.FETCH, "1.1.0", "update server unreachable")

    def report(failure: StepFailure | None = None) -> dict[str, str]:
        grants.report(
            "grant-2", version="1.0.0", staged=None, healthy=True, failed=False, failure=failure
        )
        return _annotations(cluster, "grant-2")

    report()
    notes = report(failure)
    assert notes[protocol.FAILED] == "true"
    assert notes[protocol.FAILURE] == "fetch of 1.1.0 failed: update server unreachable"
    assert notes[protocol.OBSERVED_GRANT] == staging.etag()  # failed under this grant
    # Sent once by the loop, kept on the Node while the grant is the one it failed under.
    assert report()[protocol.FAILED] == "true"
    # The operator answers (the node failed: no stage until a resume); the failure is
    # its news now, and the next grant, the resume's, is tried afresh.
    failed = Grant("1.1.0", stage=False, may_reboot=False, pool="web", reason="failed")
    _grant(cluster, "grant-2", failed)
    report()
    notes = report()
    assert notes[protocol.FAILED] == "false" and protocol.FAILURE not in notes
    assert notes[protocol.OBSERVED_GRANT] == failed.etag()


def test_a_grant_that_breaks_the_protocol_is_refused_naming_the_node_and_key(
    cluster: Cluster, tmp_path: Path
) -> None:
    root = _node_root(cluster.plane, "grant-3", tmp_path)
    state = NodeState("1.0.0", commit="c" * 64)
    grants = NodeGrants(root, _publisher(root, "grant-3", lambda: state))
    patch = {"metadata": {"annotations": {protocol.DESIRED_VERSION: "1.1.0",
                                          protocol.POOL: "web",
                                          protocol.MAY_REBOOT: "maybe"}}}  # fmt: skip
    cluster.admin.ok("PATCH", "/api/v1/nodes/grant-3", patch)
    with pytest.raises(FleetError, match=r"node grant-3: annotation atoll\.dev/may-reboot"):
        grants.desired("grant-3")


def test_before_the_kubelet_has_joined_the_loop_hears_so(tmp_path: Path) -> None:
    grants = NodeGrants(tmp_path, _publisher(tmp_path, "nobody", lambda: None))
    with pytest.raises(FleetError, match="nobody: the kubelet has not joined yet"):
        grants.report("nobody", version="1.0.0", staged=None, healthy=True, failed=False)


# --- the whole way: the operator, the Node, the agent's loop ----------------------------


class Node:
    """One node: its root, an emulated sysroot, the real loop following its Node."""

    def __init__(
        self, cluster: Cluster, w: World, tmp_path: Path, name: str, url: str | None = None
    ) -> None:
        self.name = name
        v1, v2 = w.commits["1.0.0"], w.commits["1.1.0"]
        self.sysroot = FakeSysroot(v1, {v1: "1.0.0", v2: "1.1.0"})
        base = tmp_path / name
        (base / "root").mkdir(parents=True)
        self.root = _node_root(cluster.plane, name, base / "root", create=False)
        repo, keys = _node(base, w)
        (self.root / "var/lib/atoll").mkdir(parents=True)
        (self.root / "ostree").mkdir()
        (self.root / "ostree/repo").symlink_to(repo)
        self.repo = repo
        deployments = Deployments(self.sysroot.run, lambda: None)
        self.publisher = _publisher(self.root, name, self.state)
        config = UpdaterConfig("kubernetes", url or w.url, "stable", name, {}, 0.2)
        # The kernel would allow a soft-reboot: the pool's policy decides.
        kernel = KernelFacts("6.12.43+deb13-cloud-amd64", base / "vmlinuz", ("rw",))
        restarter = Restarter(
            self.sysroot.run, root=self.root, running=lambda: kernel, staged=lambda _: kernel,
            same_image=lambda a, b: True, now=lambda: "2026-12-07T07:00:00+00:00",
        )  # fmt: skip
        self.updater = Updater(
            config, deployments, keys, root=self.root, log=lambda _: None,
            health=lambda: (True, False), controller=NodeGrants(self.root, self.publisher),
            restarter=restarter,
        )  # fmt: skip
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.updater.run_forever, args=(self.stop,))

    def state(self) -> NodeState:
        s = self.sysroot
        pending = None if s.pending is None else s.versions[s.pending]
        return NodeState(
            s.versions[s.booted], pending, commit=s.booted, health=Health.HEALTHY,
            restart=last_restart(self.root),
        )  # fmt: skip


def test_the_operator_rolls_a_pool_over_nodes_whose_loops_follow_their_nodes(
    cluster: Cluster,
    world: World,  # noqa: F811
    tmp_path: Path,
) -> None:
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    admin = cluster.admin
    with FakeKubelet(admin) as kubelet:
        nodes = [Node(cluster, world, tmp_path, f"loop-{i}") for i in (1, 2)]
        for node in nodes:
            kubelet.add_node(node.name, {"pool": "loops"}, "1.0.0")
            node.thread.start()
        operator = start_operator(cluster, cluster.token("atoll-fleet-operator"))
        try:
            spec = {
                "version": "1.1.0",
                "previousVersion": "1.0.0",
                "selector": {"matchLabels": {"pool": "loops"}},
                "strategy": {"maxUnavailable": 1, "reboot": "full"},
            }
            add_pool(admin, "loops", spec)
            until(
                "the pool to complete",
                lambda: pool_status(admin, "loops").get("phase") == "Completed",
                timeout=120,
            )
        finally:
            for node in nodes:
                node.stop.set()
            for node in nodes:
                node.thread.join(30)
            stop_operator(operator)
        assert not kubelet.errors, kubelet.errors
    v2 = world.commits["1.1.0"]
    for node in nodes:
        # Pulled for real and verified, deployed beside the running one, then
        # rebooted once: only after the operator had granted it on the Node.
        assert node.sysroot.booted == v2
        ran = [c for c in node.sysroot.commands if c[:3] != ["ostree", "admin", "status"]]
        assert ran == [["ostree", "admin", "deploy", v2], ["systemctl", "reboot"]]
        notes = _annotations(cluster, node.name)
        assert notes[protocol.CURRENT_VERSION] == "1.1.0"
        assert protocol.STAGED_VERSION not in notes
        # The pool's policy reached the agent on the grant, and the kind of restart it
        # used (and why) is on its Node.
        assert notes[protocol.REBOOT] == "full"
        assert protocol.read_restart(notes) == Restart(
            RestartKind.FULL, "policy full", "1.1.0", "2026-12-07T07:00:00+00:00"
        )
        assert not admin.ok("GET", f"/api/v1/nodes/{node.name}")["spec"].get("unschedulable")
    # atoll fleet status reads the NodePool from the cluster, as for a standalone pool.
    status = [sys.executable, "-m", "atoll", "fleet", "status", "--kubeconfig"]
    shown = as_text(run([*status, os.fspath(cluster.plane.kubeconfig), "loops"])).stdout
    assert shown.startswith("pool loops -> 1.1.0: complete: updated 2 "), shown
    # Every node of the pool, each with the kind of its last restart and why.
    restarted = "    last restart: full into 1.1.0 at 2026-12-07T07:00:00+00:00 (policy full)"
    lines = shown.splitlines()
    for node in nodes:
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {node.name} "))
        assert lines[at + 1] == restarted, shown
    # --watch on a cluster reads the NodePool again every --interval; --until-done
    # ends it once the rollout is complete (this one already is).
    watched = run(
        [*status, os.fspath(cluster.plane.kubeconfig), "loops", "--watch", "--until-done"],
        timeout=60,
    )
    assert as_text(watched).stdout == shown, as_text(watched).stdout
    missing = run([*status, os.fspath(cluster.plane.kubeconfig), "nope"], check=False)
    assert missing.returncode == 2
    assert b"NodePool 'nope': not found in the cluster of" in missing.stderr


def _waiting(admin: Any, pool: str, name: str) -> str:
    """Why the pool's status says node ``name`` waits ("" when it does not say)."""
    for entry in pool_status(admin, pool).get("waiting") or []:
        if entry.get("name") == name:
            return str(entry.get("reason") or "")
    return ""


def test_a_step_that_fails_on_a_cluster_is_retried_as_the_pool_says(
    cluster: Cluster,
    world: World,  # noqa: F811
    tmp_path: Path,
) -> None:
    """onStepFailure retry on a NodePool, the whole way: the real loop's fetch fails
    (no update server answers), the step failure reaches the operator on the Node,
    the node waits out the backoff (30 s), is told to stage again, fails again and,
    one retry being all its pool allows, is failed."""
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    admin = cluster.admin
    with FakeKubelet(admin) as kubelet:
        node = Node(cluster, world, tmp_path, "retry-1", url="http://127.0.0.1:9")
        kubelet.add_node(node.name, {"pool": "retries"}, "1.0.0")
        node.thread.start()
        operator = start_operator(cluster, cluster.token("atoll-fleet-operator"))
        try:
            spec = {
                "version": "1.1.0",
                "previousVersion": "1.0.0",
                "selector": {"matchLabels": {"pool": "retries"}},
                "strategy": {"maxUnavailable": 1, "onStepFailure": "retry", "maxStepRetries": 1},
            }
            add_pool(admin, "retries", spec)
            reason = until(
                "the first retry", lambda: "retry 1 of 1" in _waiting(admin, "retries", node.name)
                and _waiting(admin, "retries", node.name), timeout=60,
            )  # fmt: skip
            assert reason.startswith("fetch of 1.1.0 failed: "), reason
            notes = _annotations(cluster, node.name)
            assert notes[nodepool.A_PHASE] == "idle" and notes[nodepool.A_STEP_ATTEMPTS] == "1"
            assert float(notes[nodepool.A_RETRY_AT]) > time.time()  # the backoff holds it
            assert json.loads(notes[nodepool.A_STEP_FAILURE])["step"] == "fetch"
            until("the node failed", lambda: pool_status(admin, "retries").get("failed") == 1,
                  timeout=120)  # fmt: skip
        finally:
            node.stop.set()
            node.thread.join(30)
            stop_operator(operator)
    notes = _annotations(cluster, node.name)
    assert notes[nodepool.A_PHASE] == "failed" and notes[nodepool.A_STEP_ATTEMPTS] == "2"
    assert nodepool.A_RETRY_AT not in notes  # no retry is coming
    # Nothing was deployed: each round failed at its fetch.
    assert [c for c in node.sysroot.commands if c[:3] != ["ostree", "admin", "status"]] == []

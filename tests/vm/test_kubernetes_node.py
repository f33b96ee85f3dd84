"""A node boots the Kubernetes image, joins a real control plane and becomes Ready.

``atoll cluster up`` (:func:`atoll.cluster.up.running_cluster`) runs etcd and the
control plane on 127.0.0.1; the node boots ``examples/kubernetes.toml`` (direct
mode, TCG) with first-boot user data made from the cluster's ``join.json`` (the
server a guest dials through a guestfwd relay, the CA, the bootstrap token). The
kubelet asks for its client certificate with a CSR, the controller-manager
approves it, and the Node ``node-1`` must become Ready with nothing pulled: the
pause image is atoll's, preloaded; the pod network is the image's bridge config.
The agent then puts the image version on its own Node (label ``atoll.dev/version``)
and its update condition (``AtollUpdate``) beside the kubelet's, and a Pod of the
preloaded image with ``imagePullPolicy: Never`` runs on the node.

A second node boots at the same time with a wrong bootstrap token (and the agent's
TLS credentials, its port forwarded): its agent says through ``GET /v1/status`` that
the API server refused the token, and it answers while its kubelet cannot join. It
is stopped once it has said so, before the first node's wait for Ready.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import kubenode
from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.cluster.build import KubernetesBinaries
from atoll.cluster.up import ControlPlane, running_cluster
from atoll.compose import compose
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.ops.client import NodeClient, NodeError
from atoll.pki import Kind, Role, init, issue
from atoll.process import as_text, run
from atoll.progress import PlainReporter
from atoll.tools.qemu import HostService
from tests.conftest import ROOT, TEST_CACHE, TEST_EPOCH
from tests.kube_api import admin_api

# Compose, disk, boot under TCG, the kubelet's start and its CSR: well past the default.
pytestmark = pytest.mark.timeout(2400)

NODE = "node-1"
WRONG = "node-2"  # boots with a wrong token
AGENT_PORT = 7443
BOOT_TIMEOUT = 900.0
NODE_READY_TIMEOUT = 900.0
LABEL_TIMEOUT = 300.0  # the agent looks every 30 s; TCG on shared cores is slow
VERDICT_TIMEOUT = 300.0  # the agent checks the join data right after READY
POD_TIMEOUT = 300.0
PAUSE = "localhost/atoll/pause:1"  # atoll's pause image, preloaded


@pytest.fixture(scope="module")
def kubernetes_disk(
    kubernetes_binaries: KubernetesBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    # kubernetes_binaries: the compose finds the kubelet built (in the background).
    work = tmp_path_factory.mktemp("kubernetes-disk")
    result = compose(
        ROOT / "examples" / "kubernetes.toml",
        work / "repo",
        PlainReporter(),
        cache=TEST_CACHE,
        source_date_epoch=TEST_EPOCH,
    )
    image = work / "kubernetes.img"
    build_disk(plan_disk(work / "repo", result.commit, image, size=3072 * MIB), PlainReporter())
    return image


@pytest.fixture
def cluster(kubernetes_binaries: KubernetesBinaries, tmp_path: Path) -> Iterator[ControlPlane]:
    with running_cluster(tmp_path / "cluster", kubernetes_binaries.binaries) as plane:
        yield plane


def _user_data(join: dict[str, Any], hostname: str = NODE, files: str = "") -> str:
    return (
        f'[node]\nhostname = "{hostname}"\n{files}[kubernetes]\n'
        f"server = {json.dumps(join['server'])}\nca = {json.dumps(join['ca'])}\n"
        f"token = {json.dumps(join['token'])}\n"
    )


def _agent_credentials(pki: Path) -> str:
    """User data ``[[files]]``: the agent's TLS credentials, so its API is reachable."""
    init(pki)
    issue(pki, WRONG, kind=Kind.NODE)
    issue(pki, "vera", kind=Kind.CLIENT, role=Role.VIEWER)
    files = []
    for name, source, mode in (
        ("node.crt", pki / f"nodes/{WRONG}.crt", "0644"),
        ("node.key", pki / f"nodes/{WRONG}.key", "0600"),
        ("ca.crt", pki / "ca.crt", "0644"),
    ):
        content = base64.b64encode(source.read_bytes()).decode()
        files.append(
            f'[[files]]\npath = "/etc/atoll/agent/{name}"\ncontent = "{content}"\n'
            f'encoding = "base64"\nmode = "{mode}"\n'
        )
    return "".join(files)


def _join_verdict(agent: NodeClient, vm: Machine) -> dict[str, Any]:
    """The agent's verdict on its join data (``GET /v1/status``), once it has one. A
    request may time out while the starved guest starts its services: asked again."""
    deadline = time.monotonic() + VERDICT_TIMEOUT
    while True:
        try:
            status: dict[str, Any] = agent.request("GET", "/v1/status")
        except NodeError:
            if time.monotonic() > deadline or not vm.running:
                raise
            status = {}
        if status.get("kubernetes") or time.monotonic() > deadline or not vm.running:
            return status
        time.sleep(3)
        vm.poll()


def _node(kubectl: Path, plane: ControlPlane) -> dict[str, Any] | None:
    done = as_text(
        run(
            [kubectl, "--kubeconfig", plane.kubeconfig, "get", "node", NODE, "-o", "json"],
            check=False,
            timeout=60,
        )
    )
    if done.returncode != 0:
        return None
    node: dict[str, Any] = json.loads(done.stdout)
    return node


def _version_label(node: dict[str, Any] | None) -> str | None:
    labels: dict[str, str] = (node or {}).get("metadata", {}).get("labels", {})
    return labels.get(kubenode.LABEL_VERSION)


def _ready(node: dict[str, Any] | None) -> bool:
    conditions = (node or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _update_condition(node: dict[str, Any] | None) -> dict[str, Any] | None:
    conditions = (node or {}).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kubenode.CONDITION), None)


def _published(node: dict[str, Any] | None) -> bool:
    return _version_label(node) == "1.0.0" and _update_condition(node) is not None


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "preloaded", "namespace": "default"},
    "spec": {
        "nodeName": NODE,  # pinned: no scheduler decision in the way
        "automountServiceAccountToken": False,
        "dnsPolicy": "Default",  # the node's resolver: this cluster has no DNS service
        "containers": [{"name": "pause", "image": PAUSE, "imagePullPolicy": "Never"}],
    },
}


def _run_pod(plane: ControlPlane, vm: Machine) -> dict[str, Any]:
    """Create :data:`POD` (the service account may not exist yet: retried) and wait
    until it runs; the Pod as the API server last said it."""
    api, path = admin_api(plane), "/api/v1/namespaces/default/pods"
    deadline = time.monotonic() + POD_TIMEOUT
    code, pod = api.call("POST", path, POD)
    while code != 201 and time.monotonic() < deadline:  # e.g. serviceaccount not found
        time.sleep(2)
        code, pod = api.call("POST", path, POD)
    assert code == 201, pod
    while pod.get("status", {}).get("phase") != "Running" and time.monotonic() < deadline:
        time.sleep(3)
        vm.poll()
        pod = api.ok("GET", f"{path}/preloaded")
    return dict(pod)


def _pod_events(plane: ControlPlane) -> list[dict[str, Any]]:
    query = "fieldSelector=involvedObject.name%3Dpreloaded"
    return admin_api(plane).items(f"/api/v1/namespaces/default/events?{query}")


def test_a_node_joins_the_cluster_and_becomes_ready(
    kubernetes_disk: Path,
    cluster: ControlPlane,
    kubernetes_binaries: KubernetesBinaries,
    tmp_path: Path,
) -> None:
    join = json.loads(cluster.join_file.read_text())
    user_data = tmp_path / "node.toml"
    user_data.write_text(_user_data(join))
    relay = (HostService(join["port"], join["port"]),)
    spec = BootSpec(
        kubernetes_disk,
        Firmware.DIRECT,
        user_data=user_data,
        snapshot=True,
        memory_mib=2048,
        host_services=relay,
    )
    # The second node: same cluster, a token the API server does not know.
    wrong = {**join, "token": join["token"].split(".")[0] + "." + "0" * 16}
    wrong_data = tmp_path / "wrong.toml"
    wrong_data.write_text(_user_data(wrong, WRONG, _agent_credentials(tmp_path / "pki")))
    wrong_spec = BootSpec(
        kubernetes_disk,
        Firmware.DIRECT,
        user_data=wrong_data,
        guest_ports=(AGENT_PORT,),
        snapshot=True,
        memory_mib=1536,
        host_services=relay,
    )
    kubectl = kubernetes_binaries.binaries["kubectl"]
    with ExitStack() as machines:
        vm = machines.enter_context(Machine(spec))
        started = time.monotonic()
        other = machines.enter_context(Machine(wrong_spec))
        # Several VMs may share the 2 cores under TCG: the boot alone can take minutes.
        vm.wait_ready(BOOT_TIMEOUT)
        boot_seconds = time.monotonic() - started
        other.wait_ready(BOOT_TIMEOUT)
        creds = tmp_path / "pki"
        agent = NodeClient(
            f"https://127.0.0.1:{other.host_port(AGENT_PORT)}",
            creds / "ca.crt",
            creds / "clients/vera.crt",
            creds / "clients/vera.key",
        )
        status = _join_verdict(agent, other)
        verdict_seconds = time.monotonic() - started
        other.stop(grace=0.0)  # said; the CPU goes back to the first node
        assert status["hostname"] == WRONG, status
        verdict = status["kubernetes"]
        assert verdict is not None, f"no join verdict: {status}"
        assert verdict["state"] == "refused", verdict
        assert verdict["message"].startswith(
            f"{join['server']}: credentials refused (HTTP 401, unknown or expired)"
        ), verdict

        deadline = time.monotonic() + NODE_READY_TIMEOUT
        node = _node(kubectl, cluster)
        while not _ready(node) and time.monotonic() < deadline and vm.running:
            time.sleep(5)
            vm.poll()
            node = _node(kubectl, cluster)
        tail = "\n".join(vm.console.tail[-40:])
        assert _ready(node), f"node not Ready: {json.dumps(node)[-2000:]}\nconsole:\n{tail}"
        ready = time.monotonic() - started
        pod = _run_pod(cluster, vm)
        events = [(e["reason"], e.get("message", "")) for e in _pod_events(cluster)]
        assert pod["status"]["phase"] == "Running", (pod["status"], events)
        # The agent says its OS version on its own Node (atoll.agent.kubenode), with the
        # kubelet's certificate: kubectl get nodes -L atoll.dev/version shows it.
        deadline = time.monotonic() + LABEL_TIMEOUT
        while not _published(node) and time.monotonic() < deadline and vm.running:
            time.sleep(5)
            vm.poll()
            node = _node(kubectl, cluster)
        assert _version_label(node) == "1.0.0", f"no version label: {json.dumps(node)[-2000:]}"
    assert node is not None
    print(
        f"boot to ready marker {boot_seconds:.0f} s, to Node Ready {ready:.0f} s, "
        f"wrong token's verdict at {verdict_seconds:.0f} s (TCG, two guests booting)"
    )
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.35.4"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    assert info["osImage"].startswith("atoll kubernetes 1.0.0"), info
    # Beside the kubelet's own conditions: nothing staged, nothing failed.
    update = _update_condition(node)
    assert update is not None and (update["status"], update["reason"]) == ("False", "Idle"), update
    # Nothing was pulled: the only image the node has is atoll's pause, preloaded, and the
    # Pod's container found it there.
    images = [name for image in node["status"].get("images", []) for name in image["names"]]
    assert PAUSE in images, images
    assert all("pause" in name for name in images), images
    assert "Started" in [reason for reason, _ in events], events
    assert not [e for e in events if e[0] in ("Pulling", "Failed", "ErrImageNeverPull")], events
    pulled = [message for reason, message in events if reason == "Pulled"]
    assert all("already present on machine" in message for message in pulled), events

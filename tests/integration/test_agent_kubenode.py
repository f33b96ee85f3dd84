"""The agent's Node publisher and join check against a real kube-apiserver (``atoll cluster
up``), as a node: a client certificate from TLS bootstrapping (the kubelet's CSR, made
here), the files first boot and the kubelet leave, then the Node's labels, annotations
and update condition; and, before the kubelet has joined, the verdict on the join data
first boot wrote (right or wrong token, wrong CA, closed port, a pre-issued certificate)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import kubejoin, kubenode
from atoll.agent.kubenode import Join, JoinWatch, NodeError, Publisher
from atoll.agent.provision import NodeFacts, kubelet_files
from atoll.cluster.build import KubernetesBinaries
from atoll.cluster.up import ControlPlane, running_cluster
from atoll.pki import init
from atoll.wire import kubelet
from atoll.wire import kubenode as protocol
from atoll.wire.kubenode import Health, NodeState
from atoll.wire.userdata import KubernetesJoin
from tests.integration.test_cluster_up import _bootstrap
from tests.kube_api import Api, admin_api


@pytest.fixture(scope="module")
def plane(
    kubernetes_binaries: KubernetesBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), kubernetes_binaries.binaries) as cp:
        yield cp


def _node_root(plane: ControlPlane, name: str, root: Path, *, create: bool = True) -> Path:
    """A node's root as first boot and the kubelet leave it, and its Node created
    (unless ``create`` is false: a test's stand-in kubelet creates it)."""
    cert = _bootstrap(plane, name, root)
    client = root / kubenode.CLIENT_CERT
    client.parent.mkdir(parents=True)
    client.write_bytes(cert.read_bytes() + cert.with_suffix(".key").read_bytes())
    (root / kubelet.CA).parent.mkdir(parents=True)
    (root / kubelet.CA).write_bytes(plane.ca_file.read_bytes())
    config = {"clusters": [{"cluster": {"server": plane.server}}]}
    (root / kubelet.BOOTSTRAP_KUBECONFIG).write_text(json.dumps(config))
    if create:
        code, created = Api(plane, cert=cert).call(
            "POST", "/api/v1/nodes", {"metadata": {"name": name}}
        )
        assert code == 201, created
    return root


def test_the_node_publishes_its_os_state_on_its_own_node(
    plane: ControlPlane, tmp_path: Path
) -> None:
    root = _node_root(plane, "node-k1", tmp_path)
    state = NodeState("1.2.0", "1.3.0", False, commit="c" * 64, health=Health.TRIAL)
    publisher = Publisher(root, lambda: state, node=lambda: "node-k1")
    assert publisher.once()
    code, node = admin_api(plane).call("GET", "/api/v1/nodes/node-k1")
    assert code == 200, node
    assert node["metadata"]["labels"][kubenode.LABEL_VERSION] == "1.2.0"
    assert NodeState.from_node(node) == state  # what the operator reads back
    annotations = node["metadata"]["annotations"]
    assert annotations[protocol.COMMIT] == "c" * 64
    assert annotations[protocol.STAGED_VERSION] == "1.3.0"
    assert annotations[protocol.HEALTH] == "in trial"
    # After the reboot: the new version, nothing staged, healthy; a bad version removes the label.
    state = NodeState("1.3.0", commit="d" * 64, health=Health.HEALTHY)
    assert publisher.once()
    state = NodeState("1.3.0+beta", commit="d" * 64, health=Health.HEALTHY)
    assert publisher.once()
    code, node = admin_api(plane).call("GET", "/api/v1/nodes/node-k1")
    assert kubenode.LABEL_VERSION not in node["metadata"].get("labels", {})
    assert protocol.STAGED_VERSION not in node["metadata"]["annotations"]
    assert NodeState.from_node(node) == state


def test_the_node_may_not_change_another_node(plane: ControlPlane, tmp_path: Path) -> None:
    root = _node_root(plane, "node-k2", tmp_path)
    code, _ = admin_api(plane).call("POST", "/api/v1/nodes", {"metadata": {"name": "node-k3"}})
    assert code == 201
    join = kubenode.find_join(root)
    assert isinstance(join, Join)
    with pytest.raises(NodeError, match=r"node node-k3: HTTP 403: .*not allowed to modify node"):
        kubenode.patch_node(join, "node-k3", {"metadata": {"labels": {"x": "y"}}})


def _conditions(plane: ControlPlane, name: str) -> dict[str, dict[str, Any]]:
    code, node = admin_api(plane).call("GET", f"/api/v1/nodes/{name}")
    assert code == 200, node
    return {c["type"]: c for c in node.get("status", {}).get("conditions", [])}


def test_the_update_condition_sits_beside_the_kubelets_own(
    plane: ControlPlane, tmp_path: Path
) -> None:
    root = _node_root(plane, "node-k4", tmp_path)
    join = kubenode.find_join(root)
    assert isinstance(join, Join)
    # What a kubelet says about itself, as the kubelet says it (as the node, on status).
    kubelets = [
        {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
        {"type": "Ready", "status": "True", "reason": "KubeletReady"},
    ]
    kubenode.patch_node_status(join, "node-k4", {"status": {"conditions": kubelets}})
    state = NodeState("1.2.0", "1.3.0", commit="c" * 64, health=Health.HEALTHY)
    publisher = Publisher(root, lambda: state, node=lambda: "node-k4")
    assert publisher.once()
    conditions = _conditions(plane, "node-k4")
    assert {"MemoryPressure", "Ready", kubenode.CONDITION} <= set(conditions)
    assert conditions["Ready"]["reason"] == "KubeletReady"
    update = conditions[kubenode.CONDITION]
    assert (update["status"], update["reason"]) == ("True", "Staged")
    assert update["message"] == "version 1.3.0 is staged and waits for a reboot"
    assert update["lastTransitionTime"]
    # The update failed its health check and was rolled back; then the next one is idle.
    failure = f"rolled back from {'d' * 64}: its health trial failed"
    state = NodeState("1.2.0", None, True, True, failure, "c" * 64, Health.ROLLED_BACK)
    assert publisher.once()
    update = _conditions(plane, "node-k4")[kubenode.CONDITION]
    assert (update["status"], update["reason"]) == ("True", "Failed")
    assert "d" * 64 in update["message"]
    state = NodeState("1.3.0", commit="d" * 64, health=Health.HEALTHY)
    assert publisher.once()
    conditions = _conditions(plane, "node-k4")
    assert (conditions[kubenode.CONDITION]["status"], conditions[kubenode.CONDITION]["reason"]) == (
        "False", "Idle"
    )  # fmt: skip
    assert {"MemoryPressure", "Ready"} <= set(conditions)


def test_the_node_may_not_set_another_nodes_condition(plane: ControlPlane, tmp_path: Path) -> None:
    root = _node_root(plane, "node-k5", tmp_path)
    code, _ = admin_api(plane).call("POST", "/api/v1/nodes", {"metadata": {"name": "node-k6"}})
    assert code == 201
    join = kubenode.find_join(root)
    assert isinstance(join, Join)
    condition = kubenode.node_condition(NodeState("1", "2", commit="c", health=Health.HEALTHY))
    with pytest.raises(NodeError, match=r"node node-k6: HTTP 403: .*not allowed to modify node"):
        kubenode.patch_node_status(join, "node-k6", kubenode.condition_patch(condition, 0.0))
    assert kubenode.CONDITION not in _conditions(plane, "node-k6")


def _first_boot(root: Path, join: KubernetesJoin) -> Path:
    """The files first boot writes from the user data's ``[kubernetes]`` section."""
    for write in kubelet_files(join, NodeFacts()):
        path = root / write.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(write.content)
    return root


def _verdict(root: Path) -> dict[str, Any]:
    watch = JoinWatch(root, log=lambda _: None)
    watch.once()
    report = kubejoin.read_report(root)
    assert report is not None
    return report


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_join_data_is_checked_before_the_kubelet_has_joined(
    plane: ControlPlane, tmp_path: Path
) -> None:
    ca = plane.ca_pem.decode()
    token_id = plane.token.split(".")[0]
    right = _first_boot(tmp_path / "right", KubernetesJoin(plane.server, ca, token=plane.token))
    report = _verdict(right)
    assert report["state"] == "ok", report
    assert report["message"] == (
        f"{plane.server}: credentials accepted as system:bootstrap:{token_id} "
        "(groups system:bootstrappers, system:bootstrappers:atoll, system:authenticated)"
    )

    wrong = f"{token_id}.{'0' * 16}"
    report = _verdict(_first_boot(tmp_path / "wrong", KubernetesJoin(plane.server, ca, wrong)))
    assert report["state"] == "refused", report
    assert report["message"].startswith(
        f"{plane.server}: credentials refused (HTTP 401, unknown or expired): "
    )

    other_ca = init(tmp_path / "other-ca").read_bytes().decode()
    report = _verdict(
        _first_boot(tmp_path / "other", KubernetesJoin(plane.server, other_ca, plane.token))
    )
    assert report["state"] == "untrusted", report
    assert report["message"] == (
        f"{plane.server}: server certificate not trusted by the cluster CA "
        f"{tmp_path / 'other' / kubelet.CA}: unable to get local issuer certificate"
    )

    closed = f"https://127.0.0.1:{_closed_port()}"
    report = _verdict(_first_boot(tmp_path / "closed", KubernetesJoin(closed, ca, plane.token)))
    assert report == {**report, "state": "unreachable", "server": closed}
    assert report["message"] == f"{closed}: unreachable: connection refused"

    # Once the kubelet holds its certificate: joined, and no more questions.
    (right / kubenode.CLIENT_CERT).parent.mkdir(parents=True)
    (right / kubenode.CLIENT_CERT).write_text("PEM")
    assert _verdict(right)["state"] == "joined"


def test_a_pre_issued_client_certificate_is_checked_too(
    plane: ControlPlane, tmp_path: Path
) -> None:
    cert = _bootstrap(plane, "node-k7", tmp_path)
    join = KubernetesJoin(
        plane.server,
        plane.ca_pem.decode(),
        certificate=cert.read_text(),
        key=cert.with_suffix(".key").read_text(),
    )
    report = _verdict(_first_boot(tmp_path / "node", join))
    assert report["state"] == "ok", report
    assert "credentials accepted as system:node:node-k7" in report["message"]

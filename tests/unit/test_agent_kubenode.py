"""The node's OS state on its Node: what is written (pure), where the join data is found,
and when the publisher sends (a fake API server call)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import kubenode
from atoll.agent.kubenode import (
    Facts,
    Join,
    NodeError,
    Publisher,
    condition_patch,
    node_condition,
    node_state,
)
from atoll.wire import kubelet
from atoll.wire import kubenode as protocol
from atoll.wire.fleet import Restart, RestartKind
from atoll.wire.kubenode import Health, NodeState

BOOTED = {"booted": True, "pending": False, "staged": False, "version": "1.2.0", "checksum": "c1"}
PENDING = {"booted": False, "pending": True, "staged": False, "version": "1.3.0", "checksum": "c2"}
OLD = {"booted": False, "pending": False, "staged": False, "version": "1.1.0", "checksum": "c0"}
TRIAL = {"healthy": True, "trial": {"new": "c1"}}
ROLLED = {"rolled_back": True, "rollback": {"from_commit": "c9"}, "healthy": True, "trial": None}


OK = Facts(healthy=True, unhealthy=False, rolled_back_from=None)
TRIAL_FACTS = Facts(healthy=False, unhealthy=False, rolled_back_from=None)
SICK = Facts(healthy=False, unhealthy=True, rolled_back_from=None)
ROLLED_FACTS = Facts(healthy=True, unhealthy=False, rolled_back_from="c9")


def _state(
    version: str = "1.2.0",
    staged: str | None = None,
    health: Health = Health.HEALTHY,
    *,
    healthy: bool = True,
    failure: str | None = None,
) -> NodeState:
    failed = failure is not None
    return NodeState(version, staged, healthy, failed, failure, "c1", health)


@pytest.mark.parametrize(
    ("deployments", "record", "facts", "expected"),
    [
        ([BOOTED, OLD], {"healthy": True}, OK, _state()),
        ([PENDING, BOOTED], {"healthy": False}, SICK,
         _state(staged="1.3.0", health=Health.UNHEALTHY, healthy=False,
                failure="unhealthy outside a health trial")),
        ([BOOTED], None, OK, _state(health=Health.UNKNOWN)),
        ([BOOTED], TRIAL, TRIAL_FACTS, _state(health=Health.TRIAL, healthy=False)),
        ([BOOTED], ROLLED, ROLLED_FACTS,
         _state(health=Health.ROLLED_BACK, failure="rolled back from c9: its health trial failed")),
        ([{**PENDING, "version": None}, BOOTED], None, OK,
         _state(staged="c2", health=Health.UNKNOWN)),
        ([{**BOOTED, "version": None}], None, OK, _state("c1", health=Health.UNKNOWN)),
        ([], None, OK, None),  # nothing booted: nothing to say
    ],
)  # fmt: skip
def test_node_state(
    deployments: list[dict[str, Any]],
    record: dict[str, Any] | None,
    facts: Facts,
    expected: NodeState | None,
) -> None:
    assert node_state(deployments, record, facts) == expected


def test_the_last_restart_goes_with_the_state() -> None:
    soft = Restart(
        RestartKind.SOFT, "same kernel and arguments", "1.2.0", "2026-12-07T07:00:00+00:00"
    )
    state = node_state([BOOTED], None, OK, soft)
    assert state is not None and state.restart == soft
    notes = state.patch()["metadata"]["annotations"]
    assert protocol.read_restart(notes) == soft
    # None recorded: the annotation goes (a merge patch's null), nothing stale stays.
    none = node_state([BOOTED], None, OK)
    assert none is not None and none.restart is None
    assert none.patch()["metadata"]["annotations"][protocol.RESTART] is None


def test_what_the_agent_writes_is_what_the_operator_reads() -> None:
    state = _state(staged="1.3.0", health=Health.TRIAL, healthy=False)
    node = {"metadata": {"name": "node-1", **state.patch()["metadata"]}}
    assert NodeState.from_node(node) == state
    assert node["metadata"]["labels"] == {kubenode.LABEL_VERSION: "1.2.0"}
    assert node["metadata"]["annotations"][protocol.CURRENT_VERSION] == "1.2.0"
    assert node["metadata"]["annotations"][protocol.STAGED_VERSION] == "1.3.0"


def _joined(root: Path, kubeconfig: str = kubelet.BOOTSTRAP_KUBECONFIG, cert: bool = True) -> None:
    config = {"clusters": [{"cluster": {"server": "https://10.0.2.100:6443"}}]}
    (root / kubeconfig).parent.mkdir(parents=True, exist_ok=True)
    (root / kubeconfig).write_text(json.dumps(config))
    if cert:
        (root / kubenode.CLIENT_CERT).parent.mkdir(parents=True, exist_ok=True)
        (root / kubenode.CLIENT_CERT).write_text("PEM")


def test_join_data_is_found_once_the_kubelet_has_its_certificate(tmp_path: Path) -> None:
    assert kubenode.find_join(tmp_path) is None  # never joins
    _joined(tmp_path, cert=False)
    assert kubenode.find_join(tmp_path) is None  # before TLS bootstrapping
    _joined(tmp_path)
    assert kubenode.find_join(tmp_path) == Join(
        "https://10.0.2.100:6443", tmp_path / kubelet.CA, tmp_path / kubenode.CLIENT_CERT
    )


def test_a_kubeconfig_the_kubelet_wrote_is_skipped_for_the_agents(tmp_path: Path) -> None:
    _joined(tmp_path, kubelet.KUBECONFIG)
    (tmp_path / kubelet.KUBECONFIG).write_text("apiVersion: v1\nclusters: []\n")  # YAML
    assert kubenode.find_join(tmp_path) is None
    _joined(tmp_path, kubelet.BOOTSTRAP_KUBECONFIG)
    assert kubenode.find_join(tmp_path) is not None


def test_a_node_name_that_is_not_one_is_refused_before_any_request(tmp_path: Path) -> None:
    join = Join("https://127.0.0.1:1", tmp_path / "ca", tmp_path / "cert")
    with pytest.raises(NodeError, match="not a Kubernetes node name"):
        kubenode.patch_node(join, "Node_1/../x", {})


@pytest.mark.parametrize(
    ("state", "status", "reason", "message"),
    [
        (_state(staged="1.3.0"), "True", "Staged",
         "version 1.3.0 is staged and waits for a reboot"),
        (_state(health=Health.ROLLED_BACK, failure="rolled back from c9: its health trial failed"),
         "True", "Failed", "an update failed: rolled back from c9: its health trial failed"),
        (_state(), "False", "Idle", "running 1.2.0, no update staged or failed"),
        (_state("c1", health=Health.TRIAL, healthy=False), "False", "Idle",
         "running c1, no update staged or failed"),
        (_state(health=Health.UNHEALTHY, healthy=False, failure="unhealthy outside a health trial"),
         "False", "Idle", "running 1.2.0, no update staged or failed"),
    ],
)  # fmt: skip
def test_the_update_condition(state: NodeState, status: str, reason: str, message: str) -> None:
    assert node_condition(state) == {
        "type": kubenode.CONDITION, "status": status, "reason": reason, "message": message,
    }  # fmt: skip


def test_the_condition_patch_carries_its_times() -> None:
    condition = node_condition(_state(staged="1.3.0"))
    assert condition_patch(condition, 1_800_000_000.5) == {
        "status": {"conditions": [{
            **condition,
            "lastHeartbeatTime": "2027-01-15T08:00:00Z",
            "lastTransitionTime": "2027-01-15T08:00:00Z",
        }]}
    }  # fmt: skip


def test_the_publisher_sends_changes_and_retries_failures_saying_each_once(
    tmp_path: Path,
) -> None:
    _joined(tmp_path)
    state = _state()
    sent: list[tuple[str, Mapping[str, Any]]] = []
    statuses: list[Mapping[str, Any]] = []
    failing: list[str] = []
    logged: list[str] = []

    def patch(join: Join, node: str, body: Mapping[str, Any]) -> None:
        if failing:
            raise NodeError(failing[0])
        sent.append((node, body))

    def patch_status(join: Join, node: str, body: Mapping[str, Any]) -> None:
        assert node == "node-1"
        statuses.append(body)

    publisher = Publisher(tmp_path, lambda: state, node=lambda: "node-1", patch=patch,
                          patch_status=patch_status, clock=lambda: 0.0,
                          log=logged.append)  # fmt: skip
    assert publisher.once() and len(sent) == 1 and sent[0][0] == "node-1"
    assert statuses == [condition_patch(node_condition(state), 0.0)]
    assert not publisher.once() and len(sent) == 1  # unchanged: nothing sent
    state = _state(staged="1.3.0")
    failing.append("https://x: node node-1: HTTP 403: forbidden")
    assert not publisher.once() and not publisher.once()
    assert logged == ["kubernetes node: https://x: node node-1: HTTP 403: forbidden"]
    assert len(statuses) == 1  # not before the labels went through
    failing.clear()
    assert publisher.once() and len(sent) == 2  # the failed change is sent again
    assert sent[1][1] == state.patch()
    assert statuses[-1]["status"]["conditions"][0]["reason"] == "Staged"
    assert not publisher.once()


def test_a_failed_condition_is_sent_again(tmp_path: Path) -> None:
    _joined(tmp_path)
    statuses: list[Mapping[str, Any]] = []
    failing = ["https://x: node node-1: HTTP 500: etcd"]
    logged: list[str] = []

    def patch_status(join: Join, node: str, body: Mapping[str, Any]) -> None:
        if failing:
            raise NodeError(failing.pop())
        statuses.append(body)

    state = _state(
        health=Health.ROLLED_BACK, failure="rolled back from c9: its health trial failed"
    )
    publisher = Publisher(tmp_path, lambda: state, node=lambda: "node-1",
                          patch=lambda *_: None, patch_status=patch_status,
                          log=logged.append)  # fmt: skip
    assert publisher.once()  # the labels went, the condition did not
    assert statuses == [] and logged == ["kubernetes node: https://x: node node-1: HTTP 500: etcd"]
    assert publisher.once() and len(statuses) == 1
    assert statuses[0]["status"]["conditions"][0]["reason"] == "Failed"
    assert not publisher.once()


def test_the_publisher_is_idle_without_join_data(tmp_path: Path) -> None:
    def patch(join: Join, node: str, body: Mapping[str, Any]) -> None:
        raise AssertionError("no request without join data")

    publisher = Publisher(tmp_path, _state, patch=patch,
                          patch_status=patch)  # fmt: skip
    assert not publisher.once()

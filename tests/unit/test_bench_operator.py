"""The pure parts of the operator's scale benchmark, kwok's build and the simulated agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atoll.bench import operator as bench
from atoll.bench.operator import Sample, dispatched, ideal_wave_time, replay, unavailable
from atoll.cluster import kwok
from atoll.cluster.build import parse_go_mod
from atoll.errors import InputError
from atoll.fleet import simulated
from atoll.fleet.simulated import AgentMove, Move, agent_move
from atoll.wire import kubenode


@pytest.mark.parametrize(
    ("nodes", "percent", "reboot", "limit", "waves", "seconds"),
    [
        (1000, 10, 30.0, 100, 10, 300.0),
        (20, 10, 1.0, 2, 10, 10.0),
        (1001, 10, 10.0, 100, 11, 110.0),  # 10% of 1001 rounds down; one more wave
        (5, 10, 2.0, 1, 5, 10.0),  # at least one node at a time
        (3, 100, 7.0, 3, 1, 7.0),
    ],
)
def test_ideal_wave_time(
    nodes: int, percent: int, reboot: float, limit: int, waves: int, seconds: float
) -> None:
    ideal = ideal_wave_time(nodes, percent, reboot)
    assert (ideal.max_unavailable, ideal.waves, ideal.seconds) == (limit, waves, seconds)


def _node(
    *, cordoned: bool = False, ready: str | None = "True", phase: str | None = None
) -> dict[str, Any]:
    notes = {} if phase is None else {"atoll.dev/phase": phase}
    conditions = [] if ready is None else [{"type": "Ready", "status": ready}]
    return {
        "metadata": {"name": "n", "annotations": notes},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {"conditions": conditions},
    }


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (_node(), False),
        (_node(phase="staged"), False),
        (_node(cordoned=True), True),
        (_node(ready="False"), True),
        (_node(ready="Unknown"), True),
        (_node(ready=None), True),  # no Ready condition yet
        (_node(phase="rebooting"), True),  # granted, not cordoned yet
    ],
)
def test_unavailable(node: dict[str, Any], expected: bool) -> None:
    assert unavailable(node) is expected


def _samples(*events: tuple[float, str, bool, str]) -> list[Sample]:
    return [Sample(t, node, down, version) for t, node, down, version in events]


def test_replay_counts_unavailable_nodes_in_event_order() -> None:
    history = _samples(
        (0.0, "a", False, "v1"),
        (0.0, "b", False, "v1"),
        (1.0, "a", True, "v1"),  # a cordoned
        (1.5, "a", True, "v1"),  # a again: still one
        (2.0, "b", True, "v1"),
        (3.0, "a", True, "v2"),  # rebooted, still cordoned
        (3.5, "a", False, "v2"),  # uncordoned
        (4.0, "b", False, "v2"),  # b done in one event
    )
    replayed = replay(history, limit=2, target="v2", nodes=2)
    assert replayed.peak == 2
    assert replayed.peak_at == 2.0
    assert replayed.over == []
    assert replayed.steps == [(1.0, 1), (2.0, 2), (3.5, 1), (4.0, 0)]
    assert replayed.updated_at == 4.0


def test_replay_reports_every_moment_above_the_limit() -> None:
    history = _samples(
        (1.0, "a", True, "v1"),
        (2.0, "b", True, "v1"),
        (3.0, "c", True, "v1"),
        (4.0, "a", False, "v2"),
    )
    replayed = replay(history, limit=1, target="v2", nodes=3)
    assert replayed.peak == 3
    assert replayed.over == [(2.0, 2), (3.0, 3), (4.0, 2)]
    assert replayed.updated_at is None  # b and c never reached v2


def test_replay_a_node_that_leaves_the_target_is_not_done() -> None:
    history = _samples(
        (1.0, "a", False, "v2"),
        (2.0, "a", True, "v2"),
        (3.0, "b", False, "v2"),
        (4.0, "a", False, "v2"),
    )
    assert replay(history, limit=1, target="v2", nodes=2).updated_at == 4.0


def test_step_times_are_medians_over_the_nodes_that_made_each_step() -> None:
    g, m, b, r = bench.GRANTED, bench.MAY_REBOOT, bench.BACK, bench.RELEASED
    marks = {
        "a": {g: 0.0, m: 2.0, b: 32.0, r: 33.0},
        "b": {g: 0.0, m: 4.0, b: 34.0, r: 37.0},
        "c": {g: 0.0, m: 6.0, b: 36.0},  # not released yet
        "d": {g: 1.0},  # still draining
    }
    assert bench.step_times(marks) == {
        "grant to may-reboot (s)": 4.0,
        "may-reboot to back on the new version (s)": 30.0,
        "back to uncordoned (s)": 3.0,
    }
    assert bench.step_times({}) == {}


_D = "apiserver_flowcontrol_dispatched_requests_total"
METRICS = "\n".join(
    [
        f"# HELP {_D} [BETA] Number of requests executed by API Priority and Fairness",
        f"# TYPE {_D} counter",
        _D + '{flow_schema="atoll-bench-operator",priority_level="workload-high"} 1234',
        _D + '{flow_schema="exempt",priority_level="exempt"} 99',
        _D + '{flow_schema="atoll-bench-operator",priority_level="other"} 6',
        _D + '_other{flow_schema="atoll-bench-operator"} 1000',
        'apiserver_request_total{code="200",verb="GET"} 5e+03',
    ]
)


@pytest.mark.parametrize(
    ("metric", "labels", "expected"),
    [
        (bench.DISPATCHED, {"flow_schema": "atoll-bench-operator"}, 1240.0),
        (bench.DISPATCHED, {"flow_schema": "exempt"}, 99.0),
        (bench.DISPATCHED, {"flow_schema": "nobody"}, 0.0),
        (bench.DISPATCHED, {}, 1339.0),
        ("apiserver_request_total", {"verb": "GET"}, 5000.0),
    ],
)
def test_dispatched_sums_the_matching_series(
    metric: str, labels: dict[str, str], expected: float
) -> None:
    assert dispatched(METRICS, metric, labels) == expected


def test_the_flow_schema_matches_the_operators_service_account() -> None:
    schema = bench.flow_schema("fs", "atoll-system", "atoll-fleet-operator")
    (rule,) = schema["spec"]["rules"]
    assert rule["subjects"] == [
        {
            "kind": "ServiceAccount",
            "serviceAccount": {"name": "atoll-fleet-operator", "namespace": "atoll-system"},
        }
    ]
    assert rule["resourceRules"][0]["clusterScope"] is True


def test_a_fake_node_is_kwoks_in_the_pool_and_reports_its_version() -> None:
    node = bench.fake_node("kwok-00001", "v1")
    meta = node["metadata"]
    assert meta["annotations"][bench.KWOK_ANNOTATION] == bench.KWOK_VALUE
    assert meta["labels"][bench.POOL_LABEL] == bench.POOL
    assert meta["annotations"][kubenode.CURRENT_VERSION] == "v1"
    assert kubenode.STAGED_VERSION not in meta["annotations"]  # nothing staged: absent
    assert meta["labels"][kubenode.LABEL_VERSION] == "v1"


def test_kwok_listens_on_loopback_and_manages_only_the_annotated_nodes() -> None:
    argv = bench.kwok_argv(Path("/c/kwok"), Path("/c/stages.yaml"), Path("/k/a.conf"), 4321)
    assert "--config=/c/stages.yaml" in argv
    assert "--server-address=127.0.0.1:4321" in argv
    assert "--manage-all-nodes=false" in argv
    assert "--node-lease-duration-seconds=40" in argv  # Leases keep the Nodes Ready
    assert "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake" in argv


# -- the simulated agent ---------------------------------------------------------------------


D, C, S = kubenode.DESIRED_VERSION, kubenode.CURRENT_VERSION, kubenode.STAGED_VERSION


@pytest.mark.parametrize(
    ("notes", "expected"),
    [
        ({C: "v1"}, None),  # not planned
        ({C: "v1", D: "v1", kubenode.MAY_REBOOT: "true"}, None),  # on its version
        ({C: "v1", D: "v2"}, None),  # waits
        ({C: "v1", D: "v2", kubenode.STAGE: "true"}, AgentMove(Move.STAGE, "v2")),
        ({C: "v1", D: "v2", kubenode.STAGE: "true", S: "v2"}, None),  # staged already
        ({C: "v1", D: "v2", S: "v2", kubenode.MAY_REBOOT: "true"}, AgentMove(Move.REBOOT, "v2")),
        ({C: "v1", D: "v2", kubenode.MAY_REBOOT: "true"}, AgentMove(Move.REBOOT, "v2")),
        ({C: "v2", D: "v1", kubenode.MAY_REBOOT: "true"}, AgentMove(Move.REBOOT, "v1")),  # back
    ],
)
def test_agent_move(notes: dict[str, str], expected: AgentMove | None) -> None:
    assert agent_move(notes) == expected


def test_the_whole_state_is_the_node_protocols() -> None:
    patch = simulated.node_state_patch("v2", None)
    assert patch["metadata"]["labels"] == {kubenode.LABEL_VERSION: "v2"}
    notes = patch["metadata"]["annotations"]
    assert (notes[C], notes[S], notes[kubenode.HEALTHY]) == ("v2", None, "true")
    node = {"metadata": {"name": "n", **simulated.node_state_patch("v2", "v3")["metadata"]}}
    state = kubenode.NodeState.from_node(node)
    assert state is not None
    assert (state.version, state.staged, state.healthy) == ("v2", "v3", True)
    assert state.commit == notes[kubenode.COMMIT]  # the same version, the same commit


# -- kwok's build ----------------------------------------------------------------------------


def _mod(text: str) -> Any:
    return parse_go_mod(text, source="go.mod")


def test_the_wrapper_pins_one_kwok_release_and_replaces_nothing() -> None:
    assert kwok.wrapper_version(_mod(kwok.WRAPPER.joinpath("go.mod").read_text()), source="w") == (
        "v0.8.0"
    )
    with pytest.raises(InputError, match=r"does not require sigs\.k8s\.io/kwok"):
        kwok.wrapper_version(_mod("module m\n"), source="w")
    with pytest.raises(InputError, match="not a release"):
        kwok.wrapper_version(_mod("module m\nrequire sigs.k8s.io/kwok v0.8.0-rc.1\n"), source="w")
    replacing = "module m\nrequire sigs.k8s.io/kwok v0.8.0\nreplace a/b => a/b v1.0.0\n"
    with pytest.raises(InputError, match="replace directives"):
        kwok.wrapper_version(_mod(replacing), source="w")


def test_a_kwok_release_with_replace_directives_is_refused() -> None:
    kwok.check_upstream(_mod("module sigs.k8s.io/kwok\ngo 1.26.0\n"), "v0.8.0", source="u")
    upstream = _mod("module sigs.k8s.io/kwok\nreplace k8s.io/api => k8s.io/api v0.36.0\n")
    with pytest.raises(InputError, match=r"replaces k8s.io/api"):
        kwok.check_upstream(upstream, "v0.9.0", source="u")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("kwok version v0.8.0 go1.26.8 (linux/amd64)", True),
        ("Version: 0.8.0\n", True),
        ("kwok version v0.8.01", False),
        ("kwok version 10.8.0", False),
        ("kwok version v0.9.0", False),
    ],
)
def test_reports_version(output: str, expected: bool) -> None:
    assert kwok.reports_version(output, "v0.8.0") is expected


def test_kwok_is_built_reproducibly_from_the_shared_go_environment() -> None:
    argv = kwok.build_argv(Path("/out/kwok"))
    assert argv[-1] == kwok.PACKAGE
    assert "-ldflags=-s -w -buildid=" in argv


def test_the_stages_are_one_yaml_stream() -> None:
    stream = kwok.stage_documents(["kind: Stage\nname: a\n", "\nkind: Stage\nname: b"])
    assert stream == "---\nkind: Stage\nname: a\n---\nkind: Stage\nname: b\n"

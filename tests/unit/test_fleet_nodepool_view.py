"""``atoll fleet status --kubeconfig``: a NodePool shown as the standalone controller's
pool view, so the same lines say why a pool on a cluster waits."""

from __future__ import annotations

from typing import Any

from atoll.fleet.cli import _pool_lines
from atoll.fleet.nodepool import nodepool_view, observe
from atoll.wire.fleet import Restart, RestartKind
from atoll.wire.kubenode import Grant, NodeState

PAUSED: dict[str, Any] = {
    "apiVersion": "atoll.dev/v1alpha1",
    "kind": "NodePool",
    "metadata": {"name": "demo"},
    "spec": {"version": "1.1.0", "previousVersion": "1.0.0"},
    "status": {
        "phase": "Paused",
        "total": 3,
        "updated": 2,
        "updating": 0,
        "pending": 0,
        "failed": 1,
        "held": 0,
        "unavailable": 1,
        "maxUnavailable": 1,
        "pauseReason": "failure budget exceeded: 1 failed node(s) (node-2) > budget 0",
        "stalledReason": "",
        "drainBlockedNodes": [],
        "waiting": [
            {
                "name": "node-2",
                "current": "1.0.0",
                "desired": "1.1.0",
                "phase": "failed",
                "healthy": True,
                "reason": "failed while moving to 1.1.0 (on 1.0.0); not retried until resumed",
            }
        ],
    },
}


def test_a_paused_nodepool_says_why_as_a_standalone_pool_does() -> None:
    view = nodepool_view(PAUSED)
    assert view["status"]["max_unavailable"] == 1
    assert view["status"]["stalled_reason"] is None  # "" on the NodePool: none
    assert _pool_lines(view) == [
        "pool demo -> 1.1.0: failed: updated 2 updating 0 pending 0 failed 1 held 0 of 3 "
        "(unavailable 1/1)",
        "  paused: failure budget exceeded: 1 failed node(s) (node-2) > budget 0",
        "  node-2                   1.0.0 -> 1.1.0 failed  failed while moving to 1.1.0 "
        "(on 1.0.0); not retried until resumed",
    ]


def test_a_blocked_drain_is_named_and_a_new_pool_has_no_status_yet() -> None:
    blocked = {**PAUSED, "status": {**PAUSED["status"], "pauseReason": "", "failed": 0,
                                   "drainBlockedNodes": ["node-1"], "waiting": []}}  # fmt: skip
    lines = _pool_lines(nodepool_view(blocked))
    assert lines[1:] == ["  drain blocked: node-1"]
    fresh = nodepool_view({"metadata": {"name": "new"}, "spec": {"version": "2"}})
    assert _pool_lines(fresh)[0].startswith("pool new -> 2: rolling: updated 0 updating 0")


SOFT = Restart(RestartKind.SOFT, "same kernel and arguments", "1.1.0", "2026-12-07T07:00:00+00:00")
FULL = Restart(RestartKind.FULL, "kernel changed 6.1 -> 6.12", "1.0.0", "2026-12-07T07:05:00+00:00")


def _node(name: str, state: NodeState, grant: Grant | None, phase: str = "idle") -> dict[str, Any]:
    notes = {k: v for k, v in state.annotations().items() if v is not None}
    if grant is not None:
        notes.update({k: v for k, v in grant.annotations().items() if v is not None})
    notes["atoll.dev/phase"] = phase
    return {"metadata": {"name": name, "annotations": notes}}


def test_the_pools_nodes_show_the_kind_of_their_last_restart_and_why() -> None:
    raw_nodes = [
        _node("node-3", NodeState("1.1.0", restart=SOFT), Grant("1.1.0", False, False, "demo")),
        _node(
            "node-2",
            NodeState("1.0.0", failed=True, restart=FULL),
            Grant("1.1.0", False, False, "demo", "failed"),
            "failed",
        ),
        _node("node-1", NodeState("1.1.0"), Grant("1.1.0", False, False, "demo")),
        _node("other", NodeState("1.1.0", restart=SOFT), Grant("1.1.0", False, False, "web")),
        _node("new", NodeState("1.0.0"), None),  # no grant yet: not planned
        {"metadata": {"name": "bad", "annotations": {"atoll.dev/current-version": "\n"}}},
    ]
    view = nodepool_view(PAUSED, raw_nodes)
    assert [n["name"] for n in view["nodes"]] == ["node-1", "node-2", "node-3"]
    assert view["nodes"][1]["reason"] == PAUSED["status"]["waiting"][0]["reason"]  # the status's
    assert _pool_lines(view)[2:] == [
        "  node-1                   1.1.0 -> 1.1.0 idle",
        "  node-2                   1.0.0 -> 1.1.0 failed  failed while moving to 1.1.0 "
        "(on 1.0.0); not retried until resumed",
        "    last restart: full into 1.0.0 at 2026-12-07T07:05:00+00:00 (kernel changed 6.1 "
        "-> 6.12)",
        "  node-3                   1.1.0 -> 1.1.0 idle",
        "    last restart: soft into 1.1.0 at 2026-12-07T07:00:00+00:00 (same kernel and "
        "arguments)",
    ]
    # Without the Nodes (an identity that may not list them): the waiting nodes, as before.
    assert [n["name"] for n in nodepool_view(PAUSED)["nodes"]] == ["node-2"]


def test_a_restart_annotation_that_is_none_is_shown_unreadable_and_plans_on() -> None:
    node = _node("node-1", NodeState("1.1.0"), Grant("1.1.0", False, False, "demo"))
    node["metadata"]["annotations"]["atoll.dev/restart"] = "soft"  # edited by hand
    view = nodepool_view(PAUSED, [node])
    assert _pool_lines(view)[3].startswith(
        "    last restart: unreadable (annotation atoll.dev/restart: expected a restart's JSON"
    )
    # Display only: the node's state still reads, so its pool keeps planning.
    seen = observe([node], now=0.0)
    assert seen.unreadable == [] and [n.name for n in seen.facts] == ["node-1"]

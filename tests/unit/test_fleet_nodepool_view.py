"""``atoll fleet status --kubeconfig``: a NodePool shown as the standalone controller's
pool view, so the same lines say why a pool on a cluster waits."""

from __future__ import annotations

from typing import Any

from atoll.fleet.cli import _pool_lines
from atoll.fleet.nodepool import nodepool_view

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

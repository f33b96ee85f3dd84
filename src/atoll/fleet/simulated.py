"""A node's agent as the NodePool operator sees it, for tests and benchmarks (pure).

On a cluster the Node is the rollout's mailbox (the Node protocol,
:mod:`atoll.wire.kubenode`): the operator answers each node with a
:class:`~atoll.wire.kubenode.Grant` on its Node (``desired-version``, ``stage``,
``may-reboot``), and the node's agent says its
:class:`~atoll.wire.kubenode.NodeState` on the same Node. :func:`agent_move` is
what an agent does with the operator's answer: stage the desired version when
told to, reboot into it when allowed. The operator's integration tests' fake
agents (tests/integration/test_fleet_operator_cluster.py) and the operator's
scale benchmark (:mod:`atoll.bench.operator`) both play the agent with it;
:func:`node_state_patch` is the whole state a healthy simulated agent writes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from atoll.wire.kubenode import (
    CURRENT_VERSION,
    DESIRED_VERSION,
    MAY_REBOOT,
    STAGE,
    STAGED_VERSION,
    Health,
    NodeState,
)


class Move(Enum):
    STAGE = "stage"
    REBOOT = "reboot"


@dataclass(frozen=True)
class AgentMove:
    kind: Move
    version: str


def agent_move(notes: Mapping[str, str]) -> AgentMove | None:
    """What the agent of a Node with annotations ``notes`` does next, if anything."""
    desired = notes.get(DESIRED_VERSION)
    if not desired or desired == notes.get(CURRENT_VERSION):
        return None
    if notes.get(MAY_REBOOT) == "true":
        return AgentMove(Move.REBOOT, desired)
    if notes.get(STAGE) == "true" and notes.get(STAGED_VERSION) != desired:
        return AgentMove(Move.STAGE, desired)
    return None


def node_state_patch(current: str, staged: str | None) -> dict[str, Any]:
    """The Node protocol's merge patch of a healthy simulated node booted into
    ``current`` with ``staged`` waiting for a reboot (``None``: nothing staged);
    its commit is derived from the version."""
    commit = hashlib.sha256(current.encode()).hexdigest()[:16]
    return NodeState(current, staged=staged, commit=commit, health=Health.HEALTHY).patch()

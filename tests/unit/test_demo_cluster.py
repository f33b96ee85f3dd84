"""The cluster demo's summary line of a node's last restart, from its Node's annotations."""

from __future__ import annotations

import pytest

from atoll.demo_cluster import restart_said
from atoll.wire import kubenode
from atoll.wire.fleet import Restart, RestartKind

SOFT = Restart(RestartKind.SOFT, "same kernel and arguments", "2.0", "2026-12-07T07:00:00+00:00")


@pytest.mark.parametrize(
    ("notes", "said"),
    [
        (
            {kubenode.RESTART: kubenode.restart_text(SOFT)},
            "last restart soft (same kernel and arguments)",
        ),
        ({}, "no restart recorded"),
        ({kubenode.RESTART: "soft"}, "last restart unreadable (annotation atoll.dev/restart: "),
    ],
)
def test_the_summary_says_the_kind_of_each_nodes_last_restart(
    notes: dict[str, str], said: str
) -> None:
    assert restart_said(notes).startswith(said)

"""The rollout phase ``fleet status`` shows (and ``--watch --until-done`` stops on),
and the etcd prefix range end, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from atoll.fleet.cli import rollout_phase
from atoll.fleet.etcd import prefix_end


def _status(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"total": 3, "updated": 1, "updating": 1, "pending": 1}
    base.update({"failed": 0, "held": 0, "paused_reason": None})
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        (_status(), "rolling"),
        (_status(total=0, updated=0, updating=0, pending=0), "rolling"),  # no node yet
        (_status(updated=3, updating=0, pending=0), "complete"),
        (_status(updated=2, held=1, updating=0, pending=0), "complete"),  # partition held
        (_status(updated=3, updating=1, pending=0), "rolling"),  # a rollback reboot
        (_status(paused_reason="paused by operator"), "paused"),
        (_status(paused_reason="canary: the first 1 node(s) are updated; ..."), "paused"),
        (_status(failed=1, paused_reason="failure budget exceeded: 1 failed"), "failed"),
        (_status(updated=2, failed=1, updating=0, pending=0), "failed"),  # within budget
        (_status(updated=1, failed=1, updating=1, pending=0), "rolling"),
        # Failed nodes hold every reboot slot while others wait: nothing moves by itself.
        (_status(updated=1, failed=1, updating=0, stalled_reason="every reboot slot"), "stalled"),
        (
            _status(failed=2, stalled_reason="every...", paused_reason="failure budget exceeded"),
            "failed",
        ),
        (_status(updated=2, failed=1, updating=0, pending=0, stalled_reason=None), "failed"),
    ],
)
def test_rollout_phase(status: dict[str, Any], phase: str) -> None:
    assert rollout_phase(status) == phase


@pytest.mark.parametrize(
    ("prefix", "end"), [("/atoll/fleet/nodes/", "/atoll/fleet/nodes0"), ("a", "b")]
)
def test_prefix_end(prefix: str, end: str) -> None:
    assert prefix_end(prefix) == end

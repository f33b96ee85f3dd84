"""A real rollout across three booted nodes: the demo's story, checked.

``atoll.demo.run_demo`` (what ``make demo`` runs) with the test cache: the
default image v1, v2 and a broken build of v2 (a unit that always fails),
published to channels ``stable`` (v1, v2) and ``edge`` (v1, broken v2); three
UEFI guests from one v1 disk, each provisioned by its user data (agent
credentials, controller, update server, channel, trusted key); a pool
v1 -> v2 with maxUnavailable 1 and failure budget 0. node-2 follows ``edge``:
it boots the broken build, fails its health trial, rolls itself back and the
pool pauses itself; the good build is published to ``edge``, the pool resumed,
and every node ends on v2. Everything real: qemu (TCG), systemd-boot, ostree,
the agents, the controller on SQLite, signed pulls through the host services.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.demo import BROKEN, NODES, run_demo
from atoll.progress import PlainReporter
from tests.conftest import TEST_CACHE, TEST_EPOCH

# Two composes, three guests on two shared cores, five reboots under TCG.
pytestmark = pytest.mark.timeout(3600)

PREPARE_ROOT = "atoll-prepare-root: booting"


def _boots(console: str) -> list[str]:
    return [line for line in console.splitlines() if PREPARE_ROOT in line]


def test_three_nodes_roll_to_v2_and_the_broken_one_rolls_back_and_pauses_the_pool(
    tmp_path: Path,
) -> None:
    outcome = run_demo(
        tmp_path / "demo", PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH
    )
    v1, v2, broken = outcome.builds.v1, outcome.builds.v2, outcome.builds.broken
    rollout = outcome.rollout

    # The pool paused itself because of node-2, and only node-2.
    assert "failure budget exceeded" in rollout.paused_reason
    assert BROKEN in rollout.paused_reason
    assert not any(n in rollout.paused_reason for n in NODES if n != BROKEN)
    # Resumed after the fix: every node on v2, none failed; never two reboots at once.
    final = rollout.final
    assert (final["updated"], final["failed"], final["total"]) == (3, 0, 3), final
    assert rollout.max_rebooting == 1, rollout.timeline

    # The consoles: each healthy node booted v1 then v2 (one reboot); node-2
    # booted v1, the broken build, v1 again (its rollback), then the good v2.
    for name in NODES:
        boots = _boots(outcome.consoles[name])
        if name == BROKEN:
            expected = [v1.commit, broken.commit, v1.commit, v2.commit]
        else:
            expected = [v1.commit, v2.commit]
        booted = [
            next((c for c in (v1.commit, v2.commit, broken.commit) if c in b), b) for b in boots
        ]
        assert booted == expected, (name, boots)
        assert outcome.reboots[name] == len(expected) - 1, name

    # A setting changed through node-1's API before the rollout outlived the upgrade.
    assert outcome.settings_kept == {"vm.swappiness": "10"}, outcome.settings_kept

    # node-2's own account, through its API: the trial, the rollback, the confirmed fix.
    seen = [(r.get("what"), r.get("result")) for r in outcome.audit]
    assert ("health: rollback", "rolled-back") in seen, seen
    assert ("health: rollback complete", "ok") in seen, seen
    assert ("health: confirmed", "ok") in seen, seen
    rolled = next(r for r in outcome.audit if r.get("what") == "health: rollback")
    assert rolled["params"]["from"] == broken.commit
    assert "demo-broken.service" in rolled["params"]["reason"], rolled
    assert outcome.audit_verdict.get("ok") is True, outcome.audit_verdict

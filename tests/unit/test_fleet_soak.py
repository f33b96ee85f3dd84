"""Canary soak time and the failure window, table-style: facts -> actions and reasons."""

from __future__ import annotations

from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import (
    ActionKind,
    NodeFacts,
    Phase,
    PoolSpec,
    PoolState,
    Quantity,
    plan,
)


def _canary_fleet(canary_since: float) -> list[NodeFacts]:
    return [
        NodeFacts("a", {}, "v2", "v2", True, Phase.IDLE, canary_since),
        NodeFacts("b", {}, "v1", "v2", True, Phase.STAGED, 0.0),
        NodeFacts("c", {}, "v1", "v2", True, Phase.STAGED, 0.0),
    ]


SOAK = PoolSpec("p", "v2", "v1", max_unavailable=Quantity(3), canary=1, canary_soak_seconds=600)


def test_canary_soaking_holds_the_rest() -> None:
    result = plan(SOAK, PoolState(), _canary_fleet(canary_since=1000.0), now=1300.0)
    assert result.actions == ()
    assert "soaking 300s of 600s" in result.waiting["b"]


def test_canary_soaked_releases_without_resume() -> None:
    result = plan(SOAK, PoolState(), _canary_fleet(canary_since=1000.0), now=1600.0)
    assert {(a.kind, a.node) for a in result.actions} == {
        (ActionKind.REBOOT, "b"),
        (ActionKind.REBOOT, "c"),
    }


def test_unhealthy_canary_never_soaks() -> None:
    fleet = _canary_fleet(canary_since=0.0)
    fleet[0] = NodeFacts("a", {}, "v2", "v2", False, Phase.IDLE, 0.0)
    result = plan(SOAK, PoolState(), fleet, now=10_000.0)
    assert result.actions == ()
    assert "canary" in result.waiting["b"]


def test_without_soak_the_canary_waits_for_resume_forever() -> None:
    spec = PoolSpec("p", "v2", "v1", max_unavailable=Quantity(3), canary=1)
    result = plan(spec, PoolState(), _canary_fleet(canary_since=0.0), now=1e9)
    assert result.actions == ()
    assert "explicit resume" in result.waiting["b"]


def _failed_fleet(failed_at: float) -> list[NodeFacts]:
    return [
        NodeFacts("a", {}, "v1", "v2", True, Phase.FAILED, failed_at),
        NodeFacts("b", {}, "v1", "v2", True, Phase.STAGED, 0.0),
    ]


WINDOWED = PoolSpec("p", "v2", "v1", failure_budget=Quantity(0), failure_window_seconds=3600)


def test_recent_failure_counts_towards_budget() -> None:
    result = plan(WINDOWED, PoolState(), _failed_fleet(failed_at=5000.0), now=6000.0)
    assert result.actions == ()
    assert result.pause_reason is not None
    assert "within 3600s (a)" in result.pause_reason


def test_old_failure_is_outside_the_window() -> None:
    result = plan(WINDOWED, PoolState(), _failed_fleet(failed_at=1000.0), now=9000.0)
    assert result.pause_reason is None
    assert {(a.kind, a.node) for a in result.actions} == {(ActionKind.REBOOT, "b")}
    assert result.status.failed == 1  # still reported
    assert "failed" in result.waiting["a"]  # and not retried


def test_without_window_every_failure_counts() -> None:
    spec = PoolSpec("p", "v2", "v1", failure_budget=Quantity(0))
    result = plan(spec, PoolState(), _failed_fleet(failed_at=0.0), now=1e9)
    assert result.pause_reason is not None


def test_timed_out_reboot_fails_when_the_timeout_expires() -> None:
    spec = PoolSpec("p", "v2", "v1", reboot_timeout_seconds=600, failure_window_seconds=3600)
    fleet = [
        NodeFacts("a", {}, "v1", "v2", True, Phase.REBOOTING, 0.0),
        NodeFacts("b", {}, "v1", "v2", True, Phase.STAGED, 0.0),
    ]
    # Timed out at 600; at 4000 that is 3400 s ago: inside the window.
    assert plan(spec, PoolState(), fleet, now=4000.0).pause_reason is not None
    # At 4300 it is 3700 s ago: outside (granted at 0, which alone would be 4300 s).
    assert plan(spec, PoolState(), fleet, now=4300.0).pause_reason is None


def test_soak_and_window_round_trip_through_pool_dict() -> None:
    raw = {
        "pool": {"name": "p", "version": "v2"},
        "strategy": {"canary": 2, "canary_soak_seconds": 900, "failure_window_seconds": 3600},
    }
    spec = spec_from_dict(raw, "pool.toml")
    assert (spec.canary_soak_seconds, spec.failure_window_seconds) == (900.0, 3600.0)
    assert spec_from_dict(spec_to_dict(spec), "again") == spec

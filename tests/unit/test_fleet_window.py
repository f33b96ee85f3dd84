"""Maintenance windows: the planner grants reboots only inside the window (staging
continues outside it), and ``pool.toml`` validation names the bad key."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from atoll.errors import InputError
from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import (
    ActionKind,
    MaintenanceWindow,
    NodeFacts,
    Phase,
    PoolSpec,
    PoolState,
    plan,
)

PARIS = ZoneInfo("Europe/Paris")


def at(year: int, month: int, day: int, hour: int, minute: int, tz: ZoneInfo = PARIS) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


# 2026-11-21 is a Saturday, 2026-11-23 a Monday.
WEEKEND_NIGHT = MaintenanceWindow(("sat", "sun"), 2 * 60, 180, "Europe/Paris")
LATE_FRIDAY = MaintenanceWindow(("fri",), 23 * 60, 120, "Europe/Paris")


@pytest.mark.parametrize(
    ("window", "now", "open_"),
    [
        (WEEKEND_NIGHT, at(2026, 11, 21, 2, 0), True),
        (WEEKEND_NIGHT, at(2026, 11, 21, 4, 59), True),
        (WEEKEND_NIGHT, at(2026, 11, 21, 5, 0), False),
        (WEEKEND_NIGHT, at(2026, 11, 21, 1, 59), False),
        (WEEKEND_NIGHT, at(2026, 11, 23, 3, 0), False),  # Monday
        # The time zone matters: 02:30 UTC is 03:30 in Paris (inside) ...
        (WEEKEND_NIGHT, at(2026, 11, 21, 2, 30, ZoneInfo("UTC")), True),
        # ... and 04:30 UTC is 05:30 in Paris (outside).
        (WEEKEND_NIGHT, at(2026, 11, 21, 4, 30, ZoneInfo("UTC")), False),
        # Crossing midnight: Friday 23:00 + 2h covers Saturday 00:30, not Saturday 23:30.
        (LATE_FRIDAY, at(2026, 11, 21, 0, 30), True),
        (LATE_FRIDAY, at(2026, 11, 21, 23, 30), False),
        (LATE_FRIDAY, at(2026, 11, 20, 23, 30), True),
    ],
)
def test_window_is_open(window: MaintenanceWindow, now: float, open_: bool) -> None:
    assert window.is_open(now) is open_


def _nodes() -> list[NodeFacts]:
    return [
        NodeFacts("a", {}, "v1", "v2", True, Phase.STAGED, 0.0),
        NodeFacts("b", {}, "v1", None, True, Phase.IDLE, 0.0),
    ]


def test_outside_window_stages_but_does_not_reboot() -> None:
    spec = PoolSpec("p", "v2", "v1", maintenance_window=WEEKEND_NIGHT)
    result = plan(spec, PoolState(), _nodes(), at(2026, 11, 23, 3, 0))
    assert {(a.kind, a.node) for a in result.actions} == {(ActionKind.STAGE, "b")}
    assert "outside the maintenance window" in result.waiting["a"]


def test_inside_window_reboots() -> None:
    spec = PoolSpec("p", "v2", "v1", maintenance_window=WEEKEND_NIGHT)
    result = plan(spec, PoolState(), _nodes(), at(2026, 11, 21, 3, 0))
    assert {(a.kind, a.node) for a in result.actions} == {
        (ActionKind.STAGE, "b"),
        (ActionKind.REBOOT, "a"),
    }


def _pool(window: object) -> dict[str, object]:
    return {"pool": {"name": "p", "version": "v2"}, "strategy": {"maintenance_window": window}}


def test_window_round_trips_through_pool_dict() -> None:
    raw = {"days": ["sat"], "start": "02:30", "length_minutes": 60, "timezone": "Europe/Paris"}
    spec = spec_from_dict(_pool(raw), "pool.toml")
    assert spec.maintenance_window == MaintenanceWindow(("sat",), 150, 60, "Europe/Paris")
    assert spec_from_dict(spec_to_dict(spec), "again") == spec


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"days": ["someday"], "start": "02:00", "length_minutes": 60}, "days"),
        ({"days": [], "start": "02:00", "length_minutes": 60}, "days"),
        ({"days": ["sat"], "start": "25:00", "length_minutes": 60}, "start"),
        ({"days": ["sat"], "start": "2am", "length_minutes": 60}, "start"),
        ({"days": ["sat"], "start": "02:00", "length_minutes": 0}, "length_minutes"),
        (
            {"days": ["sat"], "start": "02:00", "length_minutes": 60, "timezone": "Mars/Base"},
            "timezone",
        ),
        ({"days": ["sat"], "start": "02:00", "length_minutes": 60, "color": "red"}, "color"),
    ],
)
def test_window_validation_names_file_and_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(InputError, match=rf"pool\.toml: strategy\.maintenance_window\.{key}"):
        spec_from_dict(_pool(raw), "pool.toml")

"""What the update loop tells the fleet controller about health (updater.read_health)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.agent.updater import HEALTH, read_health

OLD, NEW = "a" * 64, "b" * 64


def _write(root: Path, **record: Any) -> None:
    path = root / HEALTH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (None, (True, False)),  # the agent runs, no round yet
        ({"healthy": True, "booted": NEW, "trial": None}, (True, False)),
        ({"healthy": False, "booted": NEW, "trial": None}, (False, True)),
        # Written before the reboot, about the previous deployment: nothing known yet.
        ({"healthy": True, "booted": OLD, "trial": None}, (False, False)),
        # A trial in progress decides itself: neither healthy nor failed yet.
        ({"healthy": False, "booted": NEW, "trial": {"state": "trial"}}, (False, False)),
        ({"healthy": True, "booted": NEW, "trial": None, "rolled_back": True}, (True, True)),
        ({"healthy": True, "booted": OLD, "rolled_back": True}, (False, True)),
    ],
)
def test_health_as_the_controller_hears_it(
    tmp_path: Path, record: dict[str, Any] | None, expected: tuple[bool, bool]
) -> None:
    if record is not None:
        _write(tmp_path, **record)
    assert read_health(tmp_path, NEW) == expected


def test_an_unreadable_record_counts_as_none(tmp_path: Path) -> None:
    (tmp_path / HEALTH).parent.mkdir(parents=True)
    (tmp_path / HEALTH).write_text("[1, 2")
    assert read_health(tmp_path, NEW) == (True, False)
    (tmp_path / HEALTH).write_text("[1, 2]")
    assert read_health(tmp_path, NEW) == (True, False)

"""The restart benchmark's measure: a node's downtime as its API's clients see it."""

from __future__ import annotations

import pytest

from atoll.bench.restart import answers, downtime, last_startup

Seen = list[tuple[float, str | None]]


@pytest.mark.parametrize(
    ("seen", "expected"),
    [
        # The last answer on the old version, then silence, then the new version.
        ([(0.0, "1"), (1.0, "1"), (2.0, None), (9.0, None), (9.5, "2")], 8.5),
        # Answers on the old version after a failed probe still count (a hiccup).
        ([(0.0, "1"), (1.0, None), (2.0, "1"), (3.0, None), (5.0, "2"), (6.0, "2")], 3.0),
        # Never on the new version, or never seen on the old one: nothing to say.
        ([(0.0, "1"), (1.0, None)], None),
        ([(0.0, None), (1.0, "2")], None),
        ([], None),
        # An answer on the old version after the new one (a rollback) is not downtime.
        ([(0.0, "1"), (4.0, "2"), (6.0, "1")], 4.0),
    ],
)
def test_downtime_is_from_the_last_old_answer_to_the_first_new_one(
    seen: Seen, expected: float | None
) -> None:
    assert downtime(seen, "1", "2") == expected


def test_a_failed_measurement_tells_the_probes_story_in_runs() -> None:
    seen = [(0.0, None), (0.25, None), (0.5, "1"), (0.75, None), (1.0, "2"), (1.25, "2")]
    assert answers(seen) == "no answer x2, 1 x1, no answer x1, 2 x2"
    assert answers(seen, most=2) == "no answer x2, 1 x1, ... (2 runs more)"
    assert answers([]) == ""


def test_the_last_startup_systemd_reported_says_where_the_downtime_went() -> None:
    console = (
        "ATOLL-ANALYZE time Startup finished in 3.360s (kernel) + 30.919s (userspace) = 34.2s\r\n"
        "[  OK  ] Reached target multi-user.target\r\n"
        "ATOLL-ANALYZE time Startup finished in 4.122s (soft reboot #1) + 15.428s (userspace) \r\n"
    )
    assert last_startup(console) == "4.122s (soft reboot #1) + 15.428s (userspace)"
    assert last_startup("Welcome\n").startswith("not on the console")

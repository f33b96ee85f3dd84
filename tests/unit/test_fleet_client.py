"""The fleet client (atoll.wire.fleet, the agent's and the CLI's) without a socket: the
backoff schedule and the URLs it refuses. (Against a scripted HTTP server:
tests/integration/test_fleet_client.py.)"""

from __future__ import annotations

import pytest

from atoll.wire.fleet import (
    Backoff,
    FleetClient,
    FleetError,
    Wait,
    Watched,
    WatchSchedule,
    request_json,
)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    b = Backoff(base=1.0, cap=8.0, rand=lambda: 1.0)
    assert [b.delay(i, None) for i in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    half = Backoff(base=1.0, cap=8.0, rand=lambda: 0.5)
    assert half.delay(2, None) == 2.0
    assert half.delay(0, retry_after=3.0) == 3.5  # never sooner than Retry-After


def test_rejects_other_schemes() -> None:
    with pytest.raises(FleetError, match="file:///etc/passwd"):
        request_json("GET", "file:///etc/passwd")
    with pytest.raises(FleetError, match="empty"):
        FleetClient(" , ")


# How a node waits between rounds (WatchSchedule): (etag the controller sent or None,
# outcomes of watches so far with their Retry-After, rand) -> the delay before the next
# round after the last outcome, and then how the node waits at that moment.
SCHEDULES: list[tuple[str, str | None, list[tuple[Watched, float | None]], float, float, Wait]] = [
    ("an older controller is polled", None, [], 0.5, 0.0, Wait(False, 10.0)),
    ("a controller with watches is watched", "e1", [], 0.5, 0.0, Wait(True, 0.0)),
    (
        "a change: the next round at once, then watch again",
        "e1",
        [(Watched.CHANGED, None)],
        0.5,
        0.0,
        Wait(True, 0.0),
    ),
    (
        "the wait ran out: the same",
        "e1",
        [(Watched.UNCHANGED, None)],
        0.5,
        0.0,
        Wait(True, 0.0),
    ),
    (
        "refused: Retry-After plus jitter; poll (every interval at most) until then",
        "e1",
        [(Watched.REFUSED, 30.0)],
        0.5,
        10.0,  # the next round (a poll) after the interval ...
        Wait(False, 10.0),  # ... and polls again: 30.5 s are not over yet
    ),
    (
        "refused with a short Retry-After: the next round when it is over, and a watch",
        "e1",
        [(Watched.REFUSED, 2.0)],
        0.5,
        2.5,
        Wait(True, 0.0),
    ),
    (
        "failed (a restart): full jitter, doubling, capped; then watch again",
        "e1",
        [(Watched.FAILED, None), (Watched.FAILED, None), (Watched.FAILED, None)],
        0.5,
        2.0,  # 0.5 * min(60, 1 * 2**2)
        Wait(True, 0.0),
    ),
    (
        "a success forgets the failures",
        "e1",
        [(Watched.FAILED, None), (Watched.FAILED, None), (Watched.CHANGED, None)],
        0.5,
        0.0,
        Wait(True, 0.0),
    ),
    (
        "failures after a success start from the base again",
        "e1",
        [(Watched.FAILED, None), (Watched.CHANGED, None), (Watched.FAILED, None)],
        1.0,
        1.0,
        Wait(True, 0.0),
    ),
    (
        "the cap bounds the spread",
        "e1",
        [(Watched.FAILED, None)] * 10,
        1.0,
        60.0,
        Wait(True, 0.0),
    ),
]


@pytest.mark.parametrize(
    ("outcomes", "etag", "rand", "delay", "then"),
    [(case[2], case[1], case[3], case[4], case[5]) for case in SCHEDULES],
    ids=[case[0] for case in SCHEDULES],
)
def test_watch_schedule(
    etag: str | None,
    outcomes: list[tuple[Watched, float | None]],
    rand: float,
    delay: float,
    then: Wait,
) -> None:
    schedule = WatchSchedule(interval=10.0, base=1.0, cap=60.0, rand=lambda: rand)
    now, last = 1000.0, 0.0
    for outcome, retry_after in outcomes:
        last = schedule.ended(outcome, now, retry_after)
    assert last == pytest.approx(delay)
    wait = schedule.next(etag, now + last)
    assert wait.watch == then.watch and wait.seconds == pytest.approx(then.seconds)

"""The fleet client (atoll.wire.fleet, the agent's and the CLI's) without a socket: the
backoff schedule and the URLs it refuses. (Against a scripted HTTP server:
tests/integration/test_fleet_client.py.)"""

from __future__ import annotations

import pytest

from atoll.wire.fleet import Backoff, FleetClient, FleetError, request_json


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

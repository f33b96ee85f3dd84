"""``FleetService`` raises the open files limit when it starts, not when it is built
(a real listening socket and SQLite store; the limits are the test's)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from atoll.fleet import server
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore


def test_constructing_a_service_changes_nothing_process_wide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised: list[tuple[int, int]] = []
    limits = (1024, 4096)
    monkeypatch.setattr(resource, "getrlimit", lambda _: limits)
    monkeypatch.setattr(resource, "setrlimit", lambda _, value: raised.append(value))
    store = SqliteStore(tmp_path / "fleet.db")
    service = FleetService(store, "127.0.0.1", 0, tick=3600, max_watches=10_000)
    try:
        assert raised == []
        service.start()
        assert raised == [(4096, 4096)]
        assert service.controller.watches.limit == 4096 - server.FDS_KEPT
    finally:
        service.stop()
        store.close()

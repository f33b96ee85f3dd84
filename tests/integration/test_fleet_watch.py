"""``atoll fleet status POOL --watch`` and the long poll behind it
(``GET /v1/pools/NAME?wait=ETAG``), on an in-process controller (SQLite) with
simulated agents speaking the real protocol."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.cli import main
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.wire.fleet import Backoff, FleetError, request_json
from tests.integration.test_fleet_rollout import POOL, Tracker, agent

QUICK = Backoff(attempts=1)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FleetService]:
    store = SqliteStore(tmp_path / "fleet.db")
    svc = FleetService(store, "127.0.0.1", 0, tick=0.1)
    svc.start()
    request_json("PUT", _url(svc) + "/v1/pools/web", POOL)
    yield svc
    svc.stop()
    store.close()


def _url(svc: FleetService) -> str:
    return f"http://127.0.0.1:{svc.address[1]}"


def _start_agents(service: FleetService, names: list[str], bad: set[str]) -> threading.Event:
    stop = threading.Event()
    for i, name in enumerate(names):
        labels = {"role": "web", "zone": "abc"[i % 3], "prio": "9" if name in bad else "0"}
        args = (name, labels, _url(service), Tracker(), stop, name in bad)
        threading.Thread(target=agent, args=args, daemon=True).start()
    return stop


def test_long_poll_answers_on_change_or_timeout(service: FleetService) -> None:
    url = _url(service) + "/v1/pools/web"
    etag = request_json("GET", url)["etag"]
    started = time.monotonic()
    same = request_json("GET", f"{url}?wait={etag}&timeout=0.5")
    assert same["etag"] == etag and time.monotonic() - started >= 0.45
    timer = threading.Timer(
        0.3,
        lambda: request_json(
            "POST", _url(service) + "/v1/nodes/register", {"name": "n1", "version": "v1",
                                                            "labels": {"role": "web"}}
        ),
    )  # fmt: skip
    timer.start()
    started = time.monotonic()
    changed = request_json("GET", f"{url}?wait={etag}&timeout=20")
    timer.join()
    assert changed["etag"] != etag and [n["name"] for n in changed["nodes"]] == ["n1"]
    assert time.monotonic() - started < 5  # woken by the change, not the timeout
    with pytest.raises(FleetError, match=r"400: GET /v1/pools/web: timeout '99'"):
        request_json("GET", f"{url}?wait=x&timeout=99", backoff=QUICK)
    for _ in range(32):  # every watcher slot taken: the next long poll is told to retry
        # (blocking: a handler releases its slot just after its answer was sent)
        assert service.httpd.watchers.acquire(timeout=5)
    try:
        with pytest.raises(FleetError, match="429"):
            request_json("GET", f"{url}?wait=x&timeout=1", backoff=QUICK)
        assert request_json("GET", url)["etag"]  # plain requests are not affected
    finally:
        for _ in range(32):
            service.httpd.watchers.release()


def test_watch_until_done_prints_each_change_once(
    service: FleetService, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fleet", "status", "web", "--watch", "--until-done", "--wait", "5"]
    # Two "replicas", the first one dead: the watch fails over and stays on the live one.
    argv += ["--server", f"http://127.0.0.1:9,{_url(service)}"]
    codes: list[int] = []
    watcher = threading.Thread(target=lambda: codes.append(main(argv)))
    watcher.start()
    out = ""
    deadline = time.monotonic() + 30
    while not out and time.monotonic() < deadline:  # the empty pool is shown first
        time.sleep(0.05)
        out += capsys.readouterr().out
    stop = _start_agents(service, ["n0", "n1", "n2", "n3"], bad=set())
    try:
        watcher.join(timeout=60)
    finally:
        stop.set()
    assert codes == [0]
    out += capsys.readouterr().out
    blocks = out.strip().split("\n\n")  # not a terminal: plain blocks
    assert blocks[0].startswith("pool web -> v2: rolling: updated 0 ")
    assert len(blocks) >= 4
    assert all(a != b for a, b in itertools.pairwise(blocks))
    assert blocks[-1].startswith("pool web -> v2: complete: updated 4 ")
    assert "rebooting into v2" in "\n".join(blocks)  # per-node phases were shown on the way
    assert "\x1b[" not in "\n".join(blocks)


def test_watch_until_done_fails_when_the_budget_pauses_the_pool(
    service: FleetService, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    stop = _start_agents(service, ["n0", "n1", "bad"], bad={"bad"})
    try:
        argv = ["fleet", "status", "web", "--watch", "--until-done", "--wait", "5"]
        assert main([*argv, "--server", _url(service)]) == 1
    finally:
        stop.set()
    captured = capsys.readouterr()
    assert "\x1b[H\x1b[2J" in captured.out  # a terminal: redrawn in place
    assert "pool web -> v2: failed: " in captured.out
    assert "failure budget exceeded" in captured.err and "bad" in captured.err


def test_watch_needs_a_pool(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "status", "--watch", "--server", "http://127.0.0.1:9"]) == 2
    assert "--watch: name the POOL" in capsys.readouterr().err

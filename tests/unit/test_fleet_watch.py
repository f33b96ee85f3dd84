"""Node watches (atoll.fleet.watch): admission, the server's wait, and the hub that
parks watches and answers them, on in-process socket pairs (no network)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.fleet.server import Controller
from atoll.fleet.sqlite_store import SqliteStore
from atoll.fleet.watch import RETRY_AFTER, WatchHub, admit, http_answer, watch_seconds
from atoll.wire.fleet import Desired

WAITING = Desired("v2", stage=True, may_reboot=False, reason="waiting", pool="web").tagged()
GRANTED = Desired("v2", stage=True, may_reboot=True, reason="", pool="web").tagged()


@pytest.mark.parametrize(
    ("parked", "limit", "stopping", "expected"),
    [
        (0, 10, False, None),
        (9, 10, False, None),
        (10, 10, False, RETRY_AFTER),  # full: 503, come back later
        (11, 10, False, RETRY_AFTER),  # the limit was lowered meanwhile
        (0, 0, False, RETRY_AFTER),  # watches disabled
        (0, 10, True, 1),  # stopping: go elsewhere soon
    ],
)
def test_admission(parked: int, limit: int, stopping: bool, expected: int | None) -> None:
    assert admit(parked, limit, stopping=stopping) == expected


@pytest.mark.parametrize(
    ("asked", "bound", "rand", "expected"),
    [
        (60.0, 45.0, 0.0, 45.0),  # the server's bound
        (10.0, 45.0, 0.0, 10.0),  # the agent asked for less
        (600.0, 600.0, 0.0, 60.0),  # never more than the protocol's WATCH_MAX
        (40.0, 45.0, 0.5, 35.0),  # jitter shortens by up to a quarter
        (40.0, 45.0, 0.999999, 30.00001),
        (0.0, 45.0, 0.3, 0.0),
        (-1.0, 45.0, 0.0, 0.0),
    ],
)
def test_the_server_chooses_the_wait(
    asked: float, bound: float, rand: float, expected: float
) -> None:
    assert watch_seconds(asked, bound, rand) == pytest.approx(expected)


@pytest.fixture
def hub() -> Iterator[WatchHub]:
    watches = WatchHub(limit=2)
    watches.start()
    yield watches
    watches.stop()


def _answer(agent: socket.socket) -> tuple[str, dict[str, object]]:
    """What the hub sent to ``agent``: the status line and the JSON body."""
    agent.settimeout(10)
    raw = b""
    while chunk := agent.recv(4096):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def test_a_publish_answers_the_watches_whose_grant_changed(hub: WatchHub) -> None:
    agent1, server1 = socket.socketpair()
    agent2, server2 = socket.socketpair()
    assert hub.park(server1, "n1", WAITING, 30, hub.generation) is None
    assert hub.park(server2, "n2", WAITING, 30, hub.generation) is None
    assert hub.parked == 2
    hub.publish({"n1": WAITING, "n2": WAITING}.get)  # a plan that changed nothing for them
    assert hub.parked == 2 and hub.answered == 0
    hub.publish({"n1": GRANTED, "n2": WAITING}.get)
    assert _answer(agent1) == ("HTTP/1.1 200 OK", GRANTED.to_json())
    assert hub.parked == 1  # n2 still waits
    agent2.close()
    agent1.close()


def test_the_bound_refuses_with_retry_after(hub: WatchHub) -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    assert hub.park(pairs[0][1], "n1", WAITING, 30, hub.generation) is None
    assert hub.park(pairs[1][1], "n2", WAITING, 30, hub.generation) is None
    assert hub.park(pairs[2][1], "n3", WAITING, 30, hub.generation) == RETRY_AFTER
    assert hub.refused == 1 and hub.parked == 2
    for agent, _server in pairs:
        agent.close()
    pairs[2][1].close()  # refused: still the caller's to answer and close


def test_a_plan_published_between_the_read_and_the_parking_is_not_missed(hub: WatchHub) -> None:
    since = hub.generation  # the request noted it, then read WAITING from the store ...
    hub.publish({"n1": GRANTED}.get)  # ... while a plan granted the node
    agent, server = socket.socketpair()
    assert hub.park(server, "n1", WAITING, 30, since) is None
    assert _answer(agent) == ("HTTP/1.1 200 OK", GRANTED.to_json())
    assert hub.parked == 0
    agent.close()


def test_an_older_view_does_not_answer_a_watch_that_knows_better(hub: WatchHub) -> None:
    hub.publish({"n1": WAITING}.get)  # the last plan's view ...
    agent, server = socket.socketpair()
    # ... is older than what the request read (GRANTED): no plan since, so it waits.
    assert hub.park(server, "n1", GRANTED, 30, hub.generation) is None
    assert hub.parked == 1 and hub.answered == 0
    hub.publish({"n1": GRANTED}.get)  # the next plan agrees with the agent
    assert hub.parked == 1
    agent.close()


def test_a_deadline_answers_the_unchanged_grant(hub: WatchHub) -> None:
    agent, server = socket.socketpair()
    assert hub.park(server, "n1", WAITING, 0.05, hub.generation) is None
    assert _answer(agent) == ("HTTP/1.1 200 OK", WAITING.to_json())
    assert hub.parked == 0
    agent.close()


def test_an_agent_that_hangs_up_is_dropped_and_stop_hangs_up_on_the_rest() -> None:
    hub = WatchHub(limit=5)
    hub.start()
    gone, server1 = socket.socketpair()
    stays, server2 = socket.socketpair()
    hub.park(server1, "n1", WAITING, 30, hub.generation)
    hub.park(server2, "n2", WAITING, 30, hub.generation)
    gone.close()
    for _ in range(200):  # the hub's thread notices the hang-up
        if hub.parked == 1:
            break
        stays.settimeout(0.05)
        with pytest.raises(TimeoutError):
            stays.recv(1)
    assert hub.parked == 1
    hub.stop()
    stays.settimeout(10)
    assert stays.recv(1) == b""  # hung up on: the agent reconnects elsewhere or later
    stays.close()


def test_http_answer_is_a_whole_response() -> None:
    raw = http_answer(503, {"error": "busy"}, {"Retry-After": "10"})
    assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 10\r\n" in raw and raw.endswith(b'\r\n\r\n{"error": "busy"}')


class _CountingLock:
    """The plan lock, counting who asked for it (to know every caller is waiting)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked = 0

    def __enter__(self) -> None:
        self.asked += 1
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_reports_arriving_during_a_plan_share_the_next_one(tmp_path: Path) -> None:
    """Controller.replan: every caller gets a plan that read the store after its call,
    and callers waiting together get one plan, not one each."""
    store = SqliteStore(tmp_path / "fleet.db")
    controller = Controller(store)
    controller.reconcile()
    lock = _CountingLock()
    controller.plan_lock = lock  # type: ignore[assignment]
    before = controller._begun
    callers = [threading.Thread(target=controller.replan) for _ in range(8)]
    with lock:  # a plan in flight: the eight reports arrive meanwhile
        for caller in callers:
            caller.start()
        while lock.asked < 1 + len(callers):  # every caller waits for the lock
            threading.Event().wait(0.01)
    for caller in callers:
        caller.join(10)
    assert controller._begun == before + 1  # one plan for all eight
    controller.replan()  # alone: a plan of its own
    assert controller._begun == before + 2
    store.close()

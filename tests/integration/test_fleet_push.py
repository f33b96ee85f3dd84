"""Grants pushed to waiting agents (``GET /v1/nodes/NAME/desired?wait=ETAG``, the watch
hub of :mod:`atoll.fleet.watch`) against real controllers and real stores: in-process
on SQLite, as an ``atoll fleet serve`` process killed and restarted mid-watch, and as
two replicas on a real etcd cluster. Assertions are on events and their order, not on
timings: a watch that answers only when its wait runs out answers *unchanged*."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.fleet.etcd_store import open_replica
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.fleet.watch import RETRY_AFTER
from atoll.wire.fleet import (
    Backoff,
    Desired,
    FleetClient,
    FleetError,
    WatchRefused,
    node_path,
    request_json,
)
from tests.integration.test_fleet_rollout import Controller, _free_port, _wait

POOL = {
    "pool": {"name": "web", "version": "v2", "previous_version": "v1", "selector": {"role": "web"}},
    "strategy": {"max_unavailable": 1},
}


def _url(svc: FleetService) -> str:
    return f"http://127.0.0.1:{svc.address[1]}"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FleetService]:
    store = SqliteStore(tmp_path / "fleet.db")
    # A long tick: nothing here may depend on the timer; watches wait up to 60 s.
    svc = FleetService(store, "127.0.0.1", 0, tick=30.0, watch_seconds=60.0, max_watches=2)
    svc.start()
    yield svc
    svc.stop()
    store.close()


class Watch:
    """One watch in a thread; ``answer`` once it returned."""

    def __init__(self, client: FleetClient, name: str, etag: str) -> None:
        self.answer: Desired | None = None
        self.error: FleetError | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, name, etag), daemon=True)
        self._thread.start()

    def _run(self, client: FleetClient, name: str, etag: str) -> None:
        try:
            self.answer = client.watch(name, etag, interrupted=self.done.is_set)
        except FleetError as e:
            self.error = e
        self.done.set()

    def result(self) -> Desired:
        assert self.done.wait(30), "the watch never answered"
        assert self.error is None, self.error
        assert self.answer is not None
        return self.answer


def _parked(svc: FleetService, count: int) -> None:
    _wait(lambda: svc.controller.watches.parked == count, 10, f"{count} parked watch(es)")


def test_a_grant_reaches_the_waiting_agent_when_it_is_made(service: FleetService) -> None:
    client = FleetClient(_url(service))
    client.register("n1", {"role": "web"}, "v1")
    client.register("n2", {"role": "web"}, "v1")
    idle = client.report("n1", version="v1", staged=None, healthy=True)
    assert idle.pool is None and idle.etag is not None
    watch = Watch(client, "n1", idle.etag)
    _parked(service, 1)
    assert not watch.done.is_set()
    # The pool is applied: n1's parked watch answers with the stage order.
    request_json("PUT", _url(service) + "/v1/pools/web", POOL)
    staging = watch.result()
    assert staging.etag != idle.etag and staging.stage and not staging.may_reboot
    # n2 stages and is granted the only slot; n1, staged too, waits for it.
    client.report("n2", version="v1", staged="v2", healthy=True)
    waiting = client.report("n1", version="v1", staged="v2", healthy=True)
    assert not waiting.may_reboot and waiting.etag is not None
    watch = Watch(client, "n1", waiting.etag)
    _parked(service, 1)
    assert not watch.done.is_set()
    # n2 comes back on v2: the plan that frees its slot grants n1, and n1's watch says so.
    client.report("n2", version="v2", staged=None, healthy=True)
    granted = watch.result()
    assert granted.may_reboot and granted.version == "v2"
    assert service.controller.watches.parked == 0
    # An unchanged wait: a watch that asks for 0 s answers the same grant at once.
    same = client.watch("n1", granted.etag or "", timeout=0)
    assert same is not None and same.etag == granted.etag


def test_the_watch_bound_answers_503_with_retry_after(service: FleetService) -> None:
    client = FleetClient(_url(service))
    watches = []
    for name in ("n1", "n2", "n3"):
        client.register(name, {"role": "web"}, "v1")
    etag = client.desired("n1").etag
    assert etag is not None
    for name in ("n1", "n2"):
        watches.append(Watch(client, name, etag))
    _parked(service, 2)  # the bound (max_watches=2)
    url = _url(service) + node_path("n3", "desired") + f"?wait={etag}&timeout=30"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)  # noqa: S310 - loopback
    assert refused.value.code == 503
    assert refused.value.headers["Retry-After"] == str(RETRY_AFTER)
    assert "2 watches are waiting already" in refused.value.read().decode()
    refused.value.close()
    with pytest.raises(WatchRefused) as again:
        client.watch("n3", etag)
    assert again.value.retry_after == RETRY_AFTER
    # Plain requests (the poll, the fallback) still answer.
    assert client.report("n3", version="v1", staged=None, healthy=True).etag == etag
    for watch in watches:
        watch.done.set()  # the agents hang up; their watches are dropped
    _parked(service, 0)


def test_a_restart_mid_watch_loses_no_grant(tmp_path: Path) -> None:
    """A grant made while the agent's watch was broken (the controller SIGKILLed and
    restarted on the same SQLite file) reaches it on its next watch, from the store."""
    ctl = Controller(tmp_path / "fleet.db", _free_port())
    ctl.start()
    try:
        client = FleetClient(ctl.url, backoff=Backoff(base=0.05, cap=0.5, attempts=100))
        client.register("n1", {"role": "web"}, "v1")
        request_json("PUT", ctl.url + "/v1/pools/web", POOL)
        request_json("POST", ctl.url + "/v1/pools/web/pause", {})
        paused = client.report("n1", version="v1", staged="v2", healthy=True)
        assert not paused.may_reboot and paused.etag is not None
        watch = Watch(client, "n1", paused.etag)
        ctl.kill()  # mid-watch
        assert watch.done.wait(30)
        assert watch.error is not None  # it was still waiting: it broke with the controller
        with SqliteStore(ctl.db) as store:  # while it is down, an operator resumes the pool
            assert store.resume("web", 0.0)
        ctl.start()
        # The first plan of the restarted controller grants n1 and stores it; the agent,
        # back with the etag it had, learns it at once.
        granted = client.watch("n1", paused.etag)
        assert granted is not None and granted.may_reboot and granted.version == "v2"
        with SqliteStore(ctl.db) as store:
            node = store.node("n1")
            assert node is not None and node.phase.value == "rebooting"
    finally:
        ctl.stop()


def test_a_watch_on_a_follower_sees_the_leaders_grant(etcd_url: str) -> None:
    """Replica B (following) answers its agent's watch when replica A (leading) grants:
    B re-reads the store at every tick, and a plan that changed a watched grant
    answers its watch."""
    prefix = "/push/0"
    services = []
    for name in ("push-a", "push-b"):
        store, election = open_replica(etcd_url, name, ttl=2, prefix=prefix)
        services.append(FleetService(store, "127.0.0.1", 0, tick=0.2, election=election))
        services[-1].start()
    a, b = services
    try:
        assert a.controller.leading and not b.controller.leading
        client = FleetClient(_url(b))  # the agent talks to the follower only
        client.register("n1", {"role": "web"}, "v1")
        request_json("PUT", _url(b) + "/v1/pools/web", POOL)
        request_json("POST", _url(b) + "/v1/pools/web/pause", {})
        waiting = client.report("n1", version="v1", staged="v2", healthy=True)
        assert not waiting.may_reboot and waiting.etag is not None
        watch = Watch(client, "n1", waiting.etag)
        _parked(b, 1)
        request_json("POST", _url(a) + "/v1/pools/web/resume", {})  # the leader grants
        granted = watch.result()
        assert granted.may_reboot and granted.version == "v2"
        assert b.controller.persisted == 0 and a.controller.persisted > 0
    finally:
        for service in (b, a):
            service.stop()

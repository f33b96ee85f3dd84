"""Two controller replicas on one real etcd cluster (in-process ``FleetService``s).

Both answer the API; only the elected one persists plans. The simulated agents
(the real protocol, :func:`tests.integration.test_fleet_rollout.agent`) all talk
to the *follower* (in the process test: to both replicas, failing over); the
leader is then "crashed" (stopped without resigning, so its lease must expire,
or SIGKILLed) mid-rollout: the follower takes over within about one
lease TTL and finishes the rollout, never exceeding maxUnavailable.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from atoll.cli import main
from atoll.fleet.etcd_store import open_replica
from atoll.fleet.server import FleetService
from atoll.process import PIPE, start
from atoll.wire.fleet import Backoff, request_json
from tests.integration.test_fleet_rollout import POOL, Tracker, _wait, agent

TTL = 2
# One reboot at a time: the rollout of 6 nodes takes 6 waves, so the leader is
# surely killed mid-rollout.
POOL1: dict[str, Any] = json.loads(json.dumps(POOL))
POOL1["strategy"]["max_unavailable"] = 1
_prefixes = itertools.count()


def _replica(url: str, name: str, prefix: str) -> FleetService:
    store, election = open_replica(url, name, ttl=TTL, prefix=prefix)
    service = FleetService(store, "127.0.0.1", 0, tick=0.1, election=election)
    service.start()
    return service


def _url(service: FleetService) -> str:
    return f"http://127.0.0.1:{service.address[1]}"


def _get(service: FleetService, path: str) -> Any:
    return request_json("GET", _url(service) + path, backoff=Backoff(base=0.05, attempts=20))


@pytest.fixture
def replicas(etcd_url: str) -> Iterator[tuple[FleetService, FleetService]]:
    prefix = f"/ha/{next(_prefixes)}"
    a = _replica(etcd_url, "replica-a", prefix)
    b = _replica(etcd_url, "replica-b", prefix)
    try:
        yield a, b
    finally:
        for service in (b, a):
            if not service._stop.is_set():
                service.stop()


def test_follower_serves_the_leader_decides_and_takes_over(
    replicas: tuple[FleetService, FleetService],
) -> None:
    a, b = replicas
    for service, replica, leading in ((a, "replica-a", True), (b, "replica-b", False)):
        view = _get(service, "/v1/controller")
        assert view["watches"]["parked"] == 0 and view["watches"]["limit"] > 0
        assert view["plans"] >= (1 if leading else 0)
        assert view == {
            "replica": replica,
            "leading": leading,
            "leader": "replica-a",
            "watches": view["watches"],
            "plans": view["plans"],
        }
    request_json("PUT", _url(b) + "/v1/pools/web", POOL1)  # any replica takes operator verbs
    tracker, stop = Tracker(), threading.Event()
    threads = [
        threading.Thread(
            target=agent,
            args=(f"n{i}", {"role": "web", "zone": "abc"[i % 3]}, _url(b), tracker, stop, False),
            daemon=True,
        )
        for i in range(6)
    ]
    for t in threads:
        t.start()
    try:
        _wait(lambda: _get(b, "/v1/pools/web")["status"]["updated"] >= 2, 60, "2 nodes updated")
        assert a.controller.persisted > 0
        assert b.controller.persisted == 0  # a follower never writes a decision
        crashed = time.monotonic()
        a.stop(resign=False)  # no resign: the lease has to expire
        assert _get(b, "/v1/pools/web")["status"]["updated"] < 6  # mid-rollout
        _wait(lambda: b.controller.leading, TTL + 5, "replica-b to lead")
        took_over = time.monotonic() - crashed
        _wait(lambda: _get(b, "/v1/pools/web")["status"]["updated"] == 6, 60, "all 6 updated")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert took_over <= TTL + 2, took_over  # expiry (<= TTL) + one campaign round
    assert b.controller.persisted > 0
    view = _get(b, "/v1/pools/web")
    leader = {k: view["controller"][k] for k in ("replica", "leading", "leader")}
    assert leader == {"replica": "replica-b", "leading": True, "leader": "replica-b"}
    assert {n["current"] for n in view["nodes"]} == {"v2"}
    assert tracker.reboots == 6
    assert tracker.peak <= 1, tracker.peak


def test_a_stopping_leader_resigns_at_once(
    replicas: tuple[FleetService, FleetService],
) -> None:
    a, b = replicas
    assert a.controller.leading and not b.controller.leading
    stopped = time.monotonic()
    a.stop()
    _wait(lambda: b.controller.leading, TTL, "replica-b to lead")
    assert time.monotonic() - stopped < TTL  # no lease expiry to wait for


def test_no_campaign_during_a_plan(replicas: tuple[FleetService, FleetService]) -> None:
    """The election waits for a plan in flight (see FleetService.campaign)."""
    _, b = replicas
    done = threading.Event()

    def campaign() -> None:
        b.campaign()
        done.set()

    with b.controller.plan_lock:  # a plan in flight
        thread = threading.Thread(target=campaign)
        thread.start()
        assert not done.wait(0.5)
    assert done.wait(10)
    thread.join()


def test_serve_rejects_bad_etcd_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "serve", "--store", "etcd://", "--listen", "127.0.0.1:0"]) == 2
    assert "etcd://host:port" in capsys.readouterr().err
    argv = ["fleet", "serve", "--store", "etcd://127.0.0.1:9", "--lease-ttl", "1"]
    assert main([*argv, "--listen", "127.0.0.1:0"]) == 2
    assert "--lease-ttl 1" in capsys.readouterr().err


class Replica:
    """``atoll fleet serve --store etcd://...`` as its own process."""

    def __init__(self, url: str, name: str) -> None:
        argv = [sys.executable, "-m", "atoll", "fleet", "serve", "--store", url]
        argv += ["--listen", "127.0.0.1:0", "--replica", name, "--lease-ttl", str(TTL)]
        self.proc = start([*argv, "--tick", "0.2"], stdout=PIPE)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())  # printed once it serves
        assert ready["replica"] == name and ready["store"] == url, ready
        self.url = f"http://{ready['listen']}"

    def get(self, path: str) -> Any:
        return request_json("GET", self.url + path, backoff=Backoff(base=0.05, attempts=20))

    def close(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_sigkilled_leader_process_is_replaced_and_the_rollout_continues(etcd_url: str) -> None:
    a = Replica(etcd_url, "proc-a")  # the default prefix: no other test here uses it
    b: Replica | None = None
    stop, tracker, threads = threading.Event(), Tracker(), []
    try:
        _wait(lambda: a.get("/v1/controller")["leading"], 10, "proc-a to lead")
        b = Replica(etcd_url, "proc-b")
        assert b.get("/v1/controller")["leader"] == "proc-a"
        request_json("PUT", b.url + "/v1/pools/web", POOL1)
        for i in range(6):
            labels = {"role": "web", "zone": "abc"[i % 3]}
            # Agents know both replicas (half of them try the leader first) and
            # fail over to the survivor by themselves.
            urls = f"{a.url},{b.url}" if i % 2 else f"{b.url},{a.url}"
            args = (f"p{i}", labels, urls, tracker, stop, False)
            threads.append(threading.Thread(target=agent, args=args, daemon=True))
            threads[-1].start()
        follower = b
        _wait(lambda: follower.get("/v1/pools/web")["status"]["updated"] >= 2, 60, "2 updated")
        a.close(signal.SIGKILL)
        assert follower.get("/v1/pools/web")["status"]["updated"] < 6  # mid-rollout
        _wait(lambda: follower.get("/v1/controller")["leading"], TTL + 5, "proc-b to lead")
        _wait(lambda: follower.get("/v1/pools/web")["status"]["updated"] == 6, 60, "6 updated")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        a.close()
        if b is not None:
            b.close()
    assert tracker.reboots == 6
    assert tracker.peak <= 1, tracker.peak

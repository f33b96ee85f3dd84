"""Two controller replicas on one real etcd cluster (in-process ``FleetService``s).

Both answer the API; only the elected one persists plans. The simulated agents
(the real protocol, :func:`tests.integration.test_fleet_rollout.agent`) all talk
to the *follower*; the leader is then "crashed" (stopped without resigning, so
its lease must expire) mid-rollout: the follower takes over within about one
lease TTL and finishes the rollout, never exceeding maxUnavailable.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from atoll.agent.fleet_client import Backoff, request_json
from atoll.cli import main
from atoll.fleet.etcd_store import open_replica
from atoll.fleet.server import FleetService
from tests.integration.fleet_etcd import etcd_cluster
from tests.integration.test_fleet_rollout import POOL, Tracker, _wait, agent

TTL = 2
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as url:
        yield url


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
    assert _get(a, "/v1/controller") == {
        "replica": "replica-a",
        "leading": True,
        "leader": "replica-a",
    }
    assert _get(b, "/v1/controller") == {
        "replica": "replica-b",
        "leading": False,
        "leader": "replica-a",
    }
    request_json("PUT", _url(b) + "/v1/pools/web", POOL)  # any replica takes operator verbs
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
    assert view["controller"] == {"replica": "replica-b", "leading": True, "leader": "replica-b"}
    assert {n["current"] for n in view["nodes"]} == {"v2"}
    assert tracker.reboots == 6
    assert tracker.peak <= 2, tracker.peak


def test_a_stopping_leader_resigns_at_once(
    replicas: tuple[FleetService, FleetService],
) -> None:
    a, b = replicas
    assert a.controller.leading and not b.controller.leading
    stopped = time.monotonic()
    a.stop()
    _wait(lambda: b.controller.leading, TTL, "replica-b to lead")
    assert time.monotonic() - stopped < TTL  # no lease expiry to wait for


def test_serve_rejects_bad_etcd_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "serve", "--store", "etcd://", "--listen", "127.0.0.1:0"]) == 2
    assert "etcd://host:port" in capsys.readouterr().err
    argv = ["fleet", "serve", "--store", "etcd://127.0.0.1:9", "--lease-ttl", "1"]
    assert main([*argv, "--listen", "127.0.0.1:0"]) == 2
    assert "--lease-ttl 1" in capsys.readouterr().err


def test_serve_on_etcd_prints_its_replica(etcd_url: str) -> None:
    argv = [sys.executable, "-m", "atoll", "fleet", "serve", "--store", etcd_url]
    argv += ["--listen", "127.0.0.1:0", "--replica", "r1", "--lease-ttl", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["replica"] == "r1" and ready["store"] == etcd_url
        url = f"http://{ready['listen']}"
        _wait(lambda: request_json("GET", url + "/v1/controller")["leading"], 10, "r1 to lead")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()

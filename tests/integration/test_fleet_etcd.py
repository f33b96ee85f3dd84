"""The etcd client and leader election against a real three-member etcd cluster
started by ``scripts/etcd-cluster.sh`` on loopback (stopped by pid)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.fleet.etcd import EtcdClient, EtcdError, LeaderElection, parse_endpoints
from atoll.process import run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "etcd-cluster.sh"


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Path]:
    if not Path("/usr/bin/etcd").exists():
        pytest.skip("etcd-server is not installed")
    run([SCRIPT, "start", tmp_path])
    try:
        yield tmp_path
    finally:
        run([SCRIPT, "stop", tmp_path], capture=False)


def _client(cluster: Path) -> EtcdClient:
    url = "etcd://" + (cluster / "endpoints").read_text().strip()
    return EtcdClient(parse_endpoints(url))


def test_put_get_and_create_if_absent(cluster: Path) -> None:
    client = _client(cluster)
    assert client.get("/atoll/x") is None
    assert client.put_if_absent("/atoll/x", "one")
    assert not client.put_if_absent("/atoll/x", "two")
    assert client.get("/atoll/x") == "one"
    client.put("/atoll/x", "three")
    assert client.get("/atoll/x") == "three"


def test_one_leader_and_failover_when_it_dies(cluster: Path) -> None:
    a = LeaderElection(_client(cluster), "/atoll/leader", "replica-a", ttl=2)
    b = LeaderElection(_client(cluster), "/atoll/leader", "replica-b", ttl=2)
    assert a.campaign()
    assert not b.campaign()
    assert a.campaign()  # the leader stays leader
    assert b.leader() == "replica-a"
    # replica-a dies: it stops refreshing its lease. b takes over after the TTL.
    deadline = time.monotonic() + 15
    while not b.campaign():
        assert time.monotonic() < deadline, "replica-b never became leader"
        time.sleep(0.5)
    assert b.leader() == "replica-b"
    # a comes back: its lease has expired, and it does not steal the leadership.
    assert not a.campaign()


def test_resign_hands_over_at_once(cluster: Path) -> None:
    a = LeaderElection(_client(cluster), "/atoll/leader", "replica-a", ttl=30)
    b = LeaderElection(_client(cluster), "/atoll/leader", "replica-b", ttl=30)
    assert a.campaign()
    a.resign()
    assert b.campaign()


def test_survives_one_member_down(cluster: Path) -> None:
    client = _client(cluster)
    client.put("/atoll/k", "v")
    pid = int((cluster / "m1.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    # The first endpoint is dead; the client moves on and quorum (2 of 3) answers.
    assert client.get("/atoll/k") == "v"
    client.put("/atoll/k", "w")
    assert client.get("/atoll/k") == "w"


def test_no_endpoint_answering_names_the_urls() -> None:
    client = EtcdClient(["http://127.0.0.1:9"], timeout=0.5, rounds=2, sleep=lambda _: None)
    with pytest.raises(EtcdError, match=r"127\.0\.0\.1:9"):
        client.get("/x")

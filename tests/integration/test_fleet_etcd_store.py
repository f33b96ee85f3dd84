"""What only the etcd store has: several writers at once (optimistic transactions)
and the leader fence. The store contract both stores keep (the transition table
included) runs against etcd in ``test_fleet_store.py``."""

from __future__ import annotations

import itertools
import threading

import pytest

from atoll.fleet.etcd import EtcdClient, parse_endpoints
from atoll.fleet.etcd_store import EtcdStore
from atoll.fleet.rollout import Phase, PoolSpec, Quantity, plan
from atoll.fleet.store import NotLeader, Wanted
from atoll.wire.fleet import Registration, Report

_prefixes = itertools.count()


def _spec(version: str = "v2") -> PoolSpec:
    return PoolSpec(name="web", target_version=version, max_unavailable=Quantity(1))


def test_concurrent_writers_lose_nothing(etcd_url: str) -> None:
    """Two replicas' stores, 4 threads each, registering and reporting at once."""
    prefix = f"/test-etcd/{next(_prefixes)}"
    stores = [EtcdStore(EtcdClient(parse_endpoints(etcd_url)), prefix=prefix) for _ in range(2)]
    stores[0].put_pool(_spec(), now=0)

    def work(i: int) -> None:
        store = stores[i % 2]
        name = f"n{i}"
        store.register(Registration(name, {}, "v1"), now=1)
        store.report(name, Report("v1", "v2"), Wanted("v2"), now=2)
        store.pause("web", f"by {i}", now=3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    nodes = stores[1].nodes()
    assert len(nodes) == 8 and {n.phase for n in nodes} == {Phase.STAGED}
    kinds = [e.kind for e in stores[0].events()]
    assert kinds.count("register") == 8 and kinds.count("pause") == 8
    assert kinds.count("phase") == 8


def test_plans_are_fenced_by_the_leader_key(etcd_url: str) -> None:
    client = EtcdClient(parse_endpoints(etcd_url))
    prefix = f"/test-etcd/{next(_prefixes)}"
    store = EtcdStore(client, prefix=prefix)
    store.put_pool(_spec(), now=0)
    store.register(Registration("a", {}, "v1"), now=0)
    store.report("a", Report("v1", "v2"), Wanted("v2"), now=1)
    spec, state = store.pools()[0]
    grant = plan(spec, state, store.nodes(), 2)
    assert [a.kind.value for a in grant.actions] == ["reboot"]
    client.put(f"{prefix}/leader", "replica-b")
    election = store.election("replica-a", ttl=2)  # fences the store by the leader key
    assert (election.identity, store.fence) == ("replica-a", (f"{prefix}/leader", "replica-a"))
    with pytest.raises(NotLeader, match="held by 'replica-b'"):
        store.apply_plan("web", grant, now=2)
    assert store.nodes()[0].phase is Phase.STAGED  # nothing written
    client.put(f"{prefix}/leader", "replica-a")
    store.apply_plan("web", grant, now=3)
    assert store.nodes()[0].phase is Phase.REBOOTING


def _big_pool(prefix: str, etcd_url: str, count: int) -> EtcdStore:
    store = EtcdStore(EtcdClient(parse_endpoints(etcd_url)), prefix=prefix)
    store.put_pool(_spec(), now=0)
    for i in range(count):
        store.register(Registration(f"n{i:03d}", {}, "v1"), now=0)
    return store


def test_a_plan_of_150_nodes_fits_etcd_transactions(etcd_url: str) -> None:
    """etcd refuses a transaction of more than 128 operations (its default
    --max-txn-ops): a plan staging 150 nodes is written over a few ticks instead."""
    store = _big_pool(f"/test-etcd/{next(_prefixes)}", etcd_url, 150)
    spec, state = store.pools()[0]
    first = plan(spec, state, store.nodes(), 1)
    assert len(first.actions) == 150
    staging = []
    for tick in range(1, 6):
        result = plan(spec, state, store.nodes(), tick)
        if not result.decides:
            break
        store.apply_plan("web", result, now=tick)
        staging.append(sum(n.phase is Phase.STAGING for n in store.nodes()))
    assert staging[0] >= 40 and staging[-1] == 150 and len(staging) <= 4
    assert [e.kind for e in store.events(limit=500)].count("stage") == 150


def test_a_resume_of_150_failed_nodes_fits_etcd_transactions(etcd_url: str) -> None:
    store = _big_pool(f"/test-etcd/{next(_prefixes)}", etcd_url, 150)
    for i in range(150):
        store.report(f"n{i:03d}", Report("v1", None, failed=True), Wanted("v2"), now=1)
    assert {n.phase for n in store.nodes()} == {Phase.FAILED}
    assert store.resume("web", now=2)
    assert {n.phase for n in store.nodes()} == {Phase.IDLE}
    assert store.pools()[0][1].canary_released


def test_a_plan_read_before_a_pause_is_not_written_after_it(etcd_url: str) -> None:
    store = _big_pool(f"/test-etcd/{next(_prefixes)}", etcd_url, 3)
    spec, state = store.pools()[0]
    stale = plan(spec, state, store.nodes(), 1)
    assert len(stale.actions) == 3
    store.pause("web", "operator", now=2)
    store.apply_plan("web", stale, now=3)
    assert {n.phase for n in store.nodes()} == {Phase.IDLE}
    assert "stage" not in [e.kind for e in store.events()]

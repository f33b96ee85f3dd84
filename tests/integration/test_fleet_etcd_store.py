"""The store contract, run against SQLite and a real etcd cluster alike, plus what only
etcd has: several writers at once (optimistic transactions) and the leader fence."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest

from atoll.errors import InputError
from atoll.fleet.etcd import EtcdClient, parse_endpoints
from atoll.fleet.etcd_store import EtcdStore, NotLeader
from atoll.fleet.rollout import Phase, PoolSpec, PoolState, Quantity, plan
from atoll.fleet.store import EVENTS_KEPT, FleetStore, Store

_prefixes = itertools.count()


class Opener:
    """Opens "the same" store again, as a restarted controller (or another replica) would."""

    def __init__(self, kind: str, tmp_path: Path, etcd_url: str) -> None:
        self.kind = kind
        self.db = tmp_path / "fleet.db"
        self.url = etcd_url
        self.prefix = f"/test/{next(_prefixes)}"

    def __call__(self, events_kept: int = EVENTS_KEPT) -> FleetStore:
        if self.kind == "sqlite":
            return Store(self.db, events_kept=events_kept)
        client = EtcdClient(parse_endpoints(self.url))
        return EtcdStore(client, prefix=self.prefix, events_kept=events_kept, trim_every=0)


@pytest.fixture(params=["sqlite", "etcd"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    url = request.getfixturevalue("etcd_url") if request.param == "etcd" else ""
    return Opener(str(request.param), tmp_path, url)


def _spec(version: str = "v2") -> PoolSpec:
    return PoolSpec(name="web", target_version=version, max_unavailable=Quantity(1))


def test_state_survives_reopen(opener: Opener) -> None:
    store = opener()
    store.put_pool(_spec("v1"), now=1)
    store.put_pool(_spec("v2"), now=2)
    store.register("a", {"zone": "x"}, "v1", True, now=3)
    store.register("b", {"zone": "y"}, "v1", True, now=3)
    store.register("a", {"zone": "z"}, "v1", True, now=4)  # re-registration: no event
    assert store.pause("web", "operator said so", now=4)
    assert not store.pause("nope", "x", now=4)
    store.close()
    again = opener()
    spec, state = again.pools()[0]
    assert spec.target_version == "v2" and spec.previous_version == "v1"
    assert state == PoolState(pause_reason="operator said so")
    assert [(n.name, n.labels["zone"]) for n in again.nodes()] == [("a", "z"), ("b", "y")]
    events = again.events()
    assert [e.kind for e in events] == ["apply", "apply", "register", "register", "pause"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert [e.kind for e in again.events(limit=2)] == ["register", "pause"]


def test_plan_grants_are_persisted_as_rebooting(opener: Opener) -> None:
    store = opener()
    store.put_pool(_spec(), now=0)
    for name in ("a", "b"):
        store.register(name, {}, "v1", True, now=0)
        changed = store.report(
            name, current="v1", staged="v2", healthy=True, failed=False, desired="v2", now=1
        )
        assert changed is not None and changed[1]
        unchanged = store.report(
            name, current="v1", staged="v2", healthy=True, failed=False, desired="v2", now=2
        )
        assert unchanged is not None and not unchanged[1]
    assert store.report("ghost", current="v1", staged=None, healthy=True, failed=False,
                        desired=None, now=1) is None  # fmt: skip
    spec, state = store.pools()[0]
    store.apply_plan("web", plan(spec, state, store.nodes(), 2), now=2)
    restarted = opener()
    spec, state = restarted.pools()[0]
    assert sorted(n.phase for n in restarted.nodes()) == [Phase.REBOOTING, Phase.STAGED]
    assert plan(spec, state, restarted.nodes(), 3).actions == ()  # the grant still counts
    granted = next(n for n in restarted.nodes() if n.phase is Phase.REBOOTING)
    landed = restarted.report(
        granted.name, current="v2", staged=None, healthy=True, failed=False, desired="v2", now=4
    )
    assert landed is not None and landed[0].phase is Phase.IDLE
    assert [e.kind for e in restarted.events()][-2:] == ["reboot", "phase"]


def test_failure_budget_pause_resume_and_rollback(opener: Opener) -> None:
    store = opener()
    store.put_pool(_spec("v1"), now=0)
    store.put_pool(_spec("v2"), now=0)
    store.register("a", {}, "v1", True, now=0)
    store.report("a", current="v1", staged=None, healthy=True, failed=True, desired="v2", now=1)
    spec, state = store.pools()[0]
    store.apply_plan("web", plan(spec, state, store.nodes(), 2), now=2)
    reason = store.pools()[0][1].pause_reason
    assert reason is not None and "failure budget" in reason
    assert store.resume("web", now=3)
    assert store.pools()[0][1] == PoolState(pause_reason=None, canary_released=True)
    assert store.nodes()[0].phase is Phase.IDLE  # retried after resume
    back = store.rollback("web", now=4)
    assert back is not None and (back.target_version, back.previous_version) == ("v1", "v2")
    assert store.rollback("nope", now=4) is None
    store.put_pool(PoolSpec(name="solo", target_version="v1"), now=5)
    with pytest.raises(InputError, match="no previous version"):
        store.rollback("solo", now=6)


def test_concurrent_writers_lose_nothing(etcd_url: str) -> None:
    """Two replicas' stores, 4 threads each, registering and reporting at once."""
    prefix = f"/test/{next(_prefixes)}"
    stores = [EtcdStore(EtcdClient(parse_endpoints(etcd_url)), prefix=prefix) for _ in range(2)]
    stores[0].put_pool(_spec(), now=0)

    def work(i: int) -> None:
        store = stores[i % 2]
        name = f"n{i}"
        store.register(name, {}, "v1", True, now=1)
        store.report(name, current="v1", staged="v2", healthy=True, failed=False, desired="v2",
                     now=2)  # fmt: skip
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
    prefix = f"/test/{next(_prefixes)}"
    store = EtcdStore(client, prefix=prefix)
    store.put_pool(_spec(), now=0)
    store.register("a", {}, "v1", True, now=0)
    store.report("a", current="v1", staged="v2", healthy=True, failed=False, desired="v2", now=1)
    spec, state = store.pools()[0]
    grant = plan(spec, state, store.nodes(), 2)
    assert [a.kind.value for a in grant.actions] == ["reboot"]
    client.put(f"{prefix}/leader", "replica-b")
    store.fence = (f"{prefix}/leader", "replica-a")
    with pytest.raises(NotLeader, match="held by 'replica-b'"):
        store.apply_plan("web", grant, now=2)
    assert store.nodes()[0].phase is Phase.STAGED  # nothing written
    client.put(f"{prefix}/leader", "replica-a")
    store.apply_plan("web", grant, now=3)
    assert store.nodes()[0].phase is Phase.REBOOTING


def test_only_the_newest_events_are_kept(opener: Opener) -> None:
    store = opener(events_kept=5)
    store.put_pool(_spec(), now=0)
    for i in range(12):
        store.register(f"n{i:02}", {}, "v1", True, now=i)
    events = store.events(limit=100)
    assert [e.message for e in events] == ["version v1"] * 5
    assert [e.node for e in events] == [f"n{i:02}" for i in range(7, 12)]
    assert [e.id for e in events] == sorted(e.id for e in events)
    store.close()

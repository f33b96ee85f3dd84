"""The SQLite fleet store: persistence across reopen, phase transitions, atomic plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import InputError
from atoll.fleet.pool import load_pool_file, spec_from_dict, spec_to_dict
from atoll.fleet.rollout import NodeFacts, Phase, PoolSpec, PoolState, Quantity, plan
from atoll.fleet.store import Store, after_report, store_path


def _spec(version: str = "v2") -> PoolSpec:
    return PoolSpec(name="web", target_version=version, max_unavailable=Quantity(1))


def test_state_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    with Store(db) as store:
        store.put_pool(_spec("v1"), now=1)
        store.put_pool(_spec("v2"), now=2)
        store.register("a", {"zone": "x"}, "v1", True, now=3)
        store.register("b", {"zone": "y"}, "v1", True, now=3)
        store.pause("web", "operator said so", now=4)
    with Store(db) as store:
        spec, state = store.pools()[0]
        assert spec.target_version == "v2"
        assert spec.previous_version == "v1"  # remembered from the previous apply
        assert state == PoolState(pause_reason="operator said so")
        assert [n.name for n in store.nodes()] == ["a", "b"]
        assert [e.kind for e in store.events()] == [
            "apply",
            "apply",
            "register",
            "register",
            "pause",
        ]
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_plan_grants_are_persisted_as_rebooting(tmp_path: Path) -> None:
    with Store(tmp_path / "f.db") as store:
        store.put_pool(_spec(), now=0)
        for name in ("a", "b"):
            store.register(name, {}, "v1", True, now=0)
            store.report(
                name, current="v1", staged="v2", healthy=True, failed=False, desired="v2", now=1
            )
        spec, state = store.pools()[0]
        first = plan(spec, state, store.nodes(), 2)
        store.apply_plan("web", first, now=2)
    with Store(tmp_path / "f.db") as store:  # a "restarted controller"
        spec, state = store.pools()[0]
        phases = {n.name: n.phase for n in store.nodes()}
        assert sorted(phases.values()) == [Phase.REBOOTING, Phase.STAGED]
        again = plan(spec, state, store.nodes(), 3)
        assert again.actions == ()  # the grant still counts against maxUnavailable


def test_failure_budget_pause_is_persisted(tmp_path: Path) -> None:
    with Store(tmp_path / "f.db") as store:
        store.put_pool(_spec(), now=0)
        store.register("a", {}, "v1", True, now=0)
        store.report("a", current="v1", staged=None, healthy=True, failed=True, desired="v2", now=1)
        spec, state = store.pools()[0]
        store.apply_plan("web", plan(spec, state, store.nodes(), 2), now=2)
        reason = store.pools()[0][1].pause_reason
        assert reason is not None and "failure budget" in reason
        store.resume("web", now=3)
        assert store.pools()[0][1].pause_reason is None
        assert store.nodes()[0].phase is Phase.IDLE  # retried after resume


def test_rollback_swaps_versions(tmp_path: Path) -> None:
    with Store(tmp_path / "f.db") as store:
        store.put_pool(_spec("v1"), now=0)
        store.put_pool(_spec("v2"), now=1)
        back = store.rollback("web", now=2)
        assert back is not None
        assert (back.target_version, back.previous_version) == ("v1", "v2")
        with pytest.raises(InputError, match="no previous version"):
            store.put_pool(PoolSpec(name="solo", target_version="v1"), now=3)
            store.rollback("solo", now=4)


N = NodeFacts("a", {}, "v1", "v2", True, Phase.REBOOTING, 0)


@pytest.mark.parametrize(
    ("old", "report", "phase"),
    [
        (N, ("v1", "v2", True, False), Phase.REBOOTING),  # not rebooted yet
        (N, ("v2", None, True, False), Phase.IDLE),  # landed
        (N, ("v2", None, False, False), Phase.REBOOTING),  # back, its trial still running
        (N, ("v2", None, False, True), Phase.FAILED),  # unhealthy outside a trial
        (N, ("v1", None, True, True), Phase.FAILED),  # agent rolled back itself
        (
            NodeFacts("a", {}, "v1", None, True, Phase.STAGING, 0),
            ("v1", None, True, False),
            Phase.STAGING,
        ),
        (
            NodeFacts("a", {}, "v1", None, True, Phase.STAGING, 0),
            ("v1", "v2", True, False),
            Phase.STAGED,
        ),
        (
            NodeFacts("a", {}, "v1", None, True, Phase.FAILED, 0),
            ("v1", None, True, False),
            Phase.FAILED,
        ),
    ],
)
def test_after_report(
    old: NodeFacts, report: tuple[str, str | None, bool, bool], phase: Phase
) -> None:
    current, staged, healthy, failed = report
    new = after_report(
        old, current=current, staged=staged, healthy=healthy, failed=failed, desired="v2", now=5
    )
    assert new.phase is phase


def test_store_url() -> None:
    assert store_path("sqlite:///var/x.db") == Path("/var/x.db")
    with pytest.raises(InputError, match="etcd://x"):
        store_path("etcd://x")


def test_pool_file_round_trip_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "pool.toml"
    good.write_text(
        '[pool]\nname = "web"\nversion = "2"\n[pool.selector]\nrole = "web"\n'
        '[strategy]\nmax_unavailable = "20%"\npartition = 1\nscatter_label = "zone"\n'
    )
    spec = load_pool_file(good)
    assert spec.max_unavailable == Quantity(20, percent=True)
    assert spec_from_dict(spec_to_dict(spec), "x") == spec
    bad = tmp_path / "bad.toml"
    bad.write_text('[pool]\nname = "web"\nversion = "2"\n[strategy]\nmax_unavailable = "lots"\n')
    with pytest.raises(InputError, match=r"bad\.toml: strategy\.max_unavailable"):
        load_pool_file(bad)
    bad.write_text('[pool]\nname = "web"\nversion = "2"\n[strategy]\nmaxunavailable = 1\n')
    with pytest.raises(InputError, match=r"bad\.toml: unknown key strategy\.maxunavailable"):
        load_pool_file(bad)

"""What keeps the controller's plans cheap at a thousand nodes, and still right:
nodes decoded again only when their stored form changes, answers made again only
when one of their inputs changes, reports sharing plans (``gather``), and a plan's
own writes answering at once without reading every node again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from atoll.fleet.rollout import NodeFacts, Phase, PoolSpec, Quantity
from atoll.fleet.server import Controller
from atoll.fleet.sqlite_store import SqliteStore
from atoll.fleet.store import Decoded, Wanted
from atoll.wire.fleet import RebootPolicy, Registration, Report


def _facts(name: str, version: str) -> NodeFacts:
    return NodeFacts(name, {}, version, None, True, Phase.IDLE, 0.0)


def test_decoded_keeps_a_node_while_its_stored_form_is_the_same() -> None:
    calls: list[str] = []

    def decode(name: str, raw: str) -> NodeFacts:
        calls.append(raw)
        return _facts(name, raw)

    decoded: Decoded[str] = Decoded(decode)
    first = decoded.every([("a", "v1"), ("b", "v1")])
    again = decoded.every([("a", "v1"), ("b", "v2")])
    assert calls == ["v1", "v1", "v2"]  # b decoded again, a kept
    assert again[0] is first[0] and again[1].current_version == "v2"
    assert decoded.one("a", "v1") is first[0]
    assert decoded.one("a", "v3").current_version == "v3"
    # A full read forgets what it no longer finds: a node read again is decoded again.
    decoded.every([("b", "v2")])
    decoded.every([("a", "v1"), ("b", "v2")])
    assert calls == ["v1", "v1", "v2", "v3", "v1"]


def test_the_sqlite_store_decodes_a_node_again_only_when_it_changed(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "fleet.db") as store:
        for name in ("n1", "n2"):
            store.register(Registration(name, {}, "v1"), now=0)
        first = {n.name: n for n in store.nodes()}
        assert {n.name: n for n in store.nodes()} == first
        assert store.node("n1") is first["n1"] and store.nodes()[1] is first["n2"]
        store.report("n1", Report("v2", None, True), Wanted(None), now=1)
        after = {n.name: n for n in store.nodes()}
        assert after["n1"] is not first["n1"] and after["n1"].current_version == "v2"
        assert after["n2"] is first["n2"]


def _pool(store: SqliteStore, nodes: int) -> None:
    store.put_pool(PoolSpec("web", "v2", max_unavailable=Quantity(1)), now=0)
    for i in range(nodes):
        store.register(Registration(f"n{i}", {}, "v1"), now=0)


def test_an_answer_is_made_again_only_when_one_of_its_inputs_changed(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "fleet.db") as store:
        _pool(store, 2)
        ctl = Controller(store, clock=lambda: 1.0)
        ctl.reconcile()
        n0, n1 = ctl.desired("n0"), ctl.desired("n1")
        assert n0.stage and not n0.may_reboot
        ctl.reconcile()  # nothing changed: the same answers, not made again
        assert ctl.desired("n0") is n0 and ctl.desired("n1") is n1
        # n0 reports it staged: the plan grants it the reboot; n1's answer is kept.
        store.report("n0", Report("v1", "v2", True), ctl.wanted("n0"), now=2)
        ctl.replan()
        granted = ctl.desired("n0")
        assert granted.may_reboot and granted.etag != n0.etag
        assert ctl.desired("n1") is n1
        # The pool's reboot policy is part of every answer (not of its etag).
        spec = store.pool("web")
        assert spec is not None
        store.put_pool(replace(spec[0], reboot=RebootPolicy.FULL), now=3)
        ctl.reconcile()
        assert ctl.desired("n1").reboot is RebootPolicy.FULL
        assert ctl.desired("n1").etag == n1.etag


def test_a_plan_that_persists_answers_from_what_it_wrote(tmp_path: Path) -> None:
    """The grant a plan writes is in the answers it publishes (no second read of the
    nodes), and the pool is planned again on it: the reason says what agents see."""
    with SqliteStore(tmp_path / "fleet.db") as store:
        _pool(store, 3)
        ctl = Controller(store, clock=lambda: 1.0)
        ctl.reconcile()  # every node told to stage
        for name in ("n0", "n1", "n2"):
            store.report(name, Report("v1", "v2", True), ctl.wanted(name), now=2)
        plans = ctl.reconcile()  # grants one reboot (max_unavailable 1)
        granted = [name for name in ("n0", "n1", "n2") if ctl.desired(name).may_reboot]
        assert granted == ["n0"]
        stored = {n.name: n.phase for n in store.nodes()}
        assert stored == {"n0": Phase.REBOOTING, "n1": Phase.STAGED, "n2": Phase.STAGED}
        assert not plans["web"].actions  # planned again on what it wrote: nothing left to do
        assert plans["web"].waiting["n1"] == ctl.desired("n1").reason != ""


class _FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(
    ("since_last", "slept"),
    [
        (0.0, [0.25]),
        (0.1, [0.15]),
        (0.25, []),
        (3.0, []),
    ],
)
def test_a_reports_plan_begins_at_least_gather_after_the_last(
    tmp_path: Path, since_last: float, slept: list[float]
) -> None:
    clock = _FakeClock()
    with SqliteStore(tmp_path / "fleet.db") as store:
        _pool(store, 1)
        ctl = Controller(
            store,
            clock=lambda: 1.0,
            gather=0.25,
            monotonic=lambda: clock.now,
            sleep=clock.sleep,
        )
        ctl.replan()  # the first plan waits for nothing
        assert clock.slept == [] and ctl.controller_view()["plans"] == 1
        clock.now += since_last
        ctl.replan()
        assert clock.slept == pytest.approx(slept)
        assert ctl.controller_view()["plans"] == 2


def test_without_gather_a_report_plans_at_once(tmp_path: Path) -> None:
    clock = _FakeClock()
    with SqliteStore(tmp_path / "fleet.db") as store:
        _pool(store, 1)
        ctl = Controller(store, clock=lambda: 1.0, monotonic=lambda: clock.now, sleep=clock.sleep)
        ctl.replan()
        ctl.replan()
        assert clock.slept == [] and ctl.controller_view()["plans"] == 2

"""Table-driven tests of the rollout planner (facts -> actions), one rule per case,
plus a randomized simulation that checks the invariants over many steps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from atoll.fleet.rollout import (
    Action,
    ActionKind,
    NodeFacts,
    Phase,
    PoolSpec,
    PoolState,
    Quantity,
    plan,
)

NOW = 1000.0


def node(
    name: str,
    version: str = "v1",
    *,
    staged: str | None = None,
    healthy: bool = True,
    phase: Phase = Phase.IDLE,
    since: float = 0.0,
    **labels: str,
) -> NodeFacts:
    return NodeFacts(name, labels, version, staged, healthy, phase, since)


def staged(name: str, **labels: str) -> NodeFacts:
    return NodeFacts(name, labels, "v1", "v2", True, Phase.STAGED, 0.0)


def spec(**kw: object) -> PoolSpec:
    base = PoolSpec(name="p", target_version="v2", previous_version="v1")
    return replace(base, **kw)  # type: ignore[arg-type]


S = ActionKind.STAGE
R = ActionKind.REBOOT
B = ActionKind.ROLLBACK


@dataclass(frozen=True)
class Case:
    id: str
    spec: PoolSpec
    nodes: list[NodeFacts]
    actions: set[tuple[ActionKind, str]]
    state: PoolState = field(default_factory=PoolState)
    waiting: dict[str, str] | None = None  # node -> substring of its reason


CASES = [
    Case(
        "staging-is-free-for-everyone",
        spec(max_unavailable=Quantity(1)),
        [node("a"), node("b"), node("c")],
        {(S, "a"), (S, "b"), (S, "c")},
        waiting={"a": "stage v2"},
    ),
    Case(
        "max-unavailable-bounds-reboots",
        spec(max_unavailable=Quantity(2)),
        [staged("a"), staged("b"), staged("c"), staged("d")],
        {(R, "a"), (R, "b")},
        waiting={"c": "reboot slot", "d": "reboot slot"},
    ),
    Case(
        "max-unavailable-percent-rounds-down-min-1",
        spec(max_unavailable=Quantity(30, percent=True)),
        [staged("a"), staged("b"), staged("c")],
        {(R, "a")},
    ),
    Case(
        "already-unhealthy-counts-against-max-unavailable",
        spec(max_unavailable=Quantity(2)),
        [node("x", "v2", healthy=False), staged("a"), staged("b")],
        {(R, "a")},
        waiting={"x": "unhealthy", "b": "reboot slot"},
    ),
    Case(
        "rebooting-counts-against-max-unavailable",
        spec(max_unavailable=Quantity(1)),
        [node("a", staged="v2", phase=Phase.REBOOTING), staged("b")],
        set(),
        waiting={"a": "rebooting", "b": "reboot slot"},
    ),
    Case(
        "unhealthy-staged-node-is-not-rebooted",
        spec(max_unavailable=Quantity(3)),
        [node("a", staged="v2", phase=Phase.STAGED, healthy=False), staged("b")],
        {(R, "b")},
        waiting={"a": "unhealthy"},
    ),
    Case(
        "partition-keeps-lowest-priority-on-old",
        spec(partition=Quantity(2), max_unavailable=Quantity(5), priority_label="prio"),
        [staged("a", prio="1"), staged("b", prio="5"), staged("c", prio="3")],
        {(R, "b")},
    ),
    Case(
        "partition-percent-rounds-up",
        spec(partition=Quantity(50, percent=True), max_unavailable=Quantity(5)),
        [staged("a"), staged("b"), staged("c")],
        {(R, "a")},
    ),
    Case(
        "raising-partition-rolls-back",
        spec(partition=Quantity(2), max_unavailable=Quantity(1)),
        [node("a", "v2"), node("b", "v2"), node("c", "v2")],
        {(B, "b")},
        waiting={"c": "reboot slot"},
    ),
    Case(
        "paused-spec-plans-nothing",
        spec(paused=True),
        [node("a"), staged("b")],
        set(),
        waiting={"a": "paused", "b": "paused"},
    ),
    Case(
        "paused-state-plans-nothing",
        spec(),
        [staged("a")],
        set(),
        state=PoolState(pause_reason="operator"),
        waiting={"a": "operator"},
    ),
    Case(
        "min-ready-seconds-keeps-fresh-node-unavailable",
        spec(max_unavailable=Quantity(1), min_ready_seconds=60),
        [node("a", "v2", since=NOW - 10), staged("b")],
        set(),
        waiting={"b": "reboot slot"},
    ),
    Case(
        "min-ready-seconds-elapsed",
        spec(max_unavailable=Quantity(1), min_ready_seconds=60),
        [node("a", "v2", since=NOW - 61), staged("b")],
        {(R, "b")},
    ),
    Case(
        "canary-gates-the-rest",
        spec(canary=1, max_unavailable=Quantity(3)),
        [staged("a"), staged("b"), staged("c")],
        {(R, "a")},
        waiting={"b": "canary", "c": "canary"},
    ),
    Case(
        "canary-done-waits-for-resume",
        spec(canary=1, max_unavailable=Quantity(3)),
        [node("a", "v2"), staged("b")],
        set(),
        waiting={"b": "explicit resume"},
    ),
    Case(
        "canary-released",
        spec(canary=1, max_unavailable=Quantity(3)),
        [node("a", "v2"), staged("b")],
        {(R, "b")},
        state=PoolState(canary_released=True),
    ),
    Case(
        "priority-orders-reboots",
        spec(max_unavailable=Quantity(1), priority_label="prio"),
        [staged("a", prio="1"), staged("b", prio="9")],
        {(R, "b")},
    ),
    Case(
        "scatter-spreads-a-batch-across-zones",
        spec(max_unavailable=Quantity(2), scatter_label="zone"),
        [staged("a", zone="x"), staged("b", zone="x"), staged("c", zone="y")],
        {(R, "a"), (R, "c")},
    ),
    Case(
        "scatter-counts-zones-already-down",
        spec(max_unavailable=Quantity(3), scatter_label="zone"),
        [
            node("d", "v2", healthy=False, zone="x"),
            staged("a", zone="x"),
            staged("c", zone="y"),
        ],
        {(R, "a"), (R, "c")},
    ),
    Case(
        "scatter-prefers-the-emptier-zone",
        spec(max_unavailable=Quantity(2), scatter_label="zone"),
        [node("d", "v2", healthy=False, zone="x"), staged("a", zone="x"), staged("c", zone="y")],
        {(R, "c")},
    ),
    Case(
        "failure-within-budget-continues",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(2)),
        [node("a", phase=Phase.FAILED, healthy=True), staged("b")],
        {(R, "b")},
        waiting={"a": "failed"},
    ),
    Case(
        "failure-beyond-budget-pauses",
        spec(failure_budget=Quantity(0), max_unavailable=Quantity(2)),
        [node("a", phase=Phase.FAILED, healthy=True), staged("b")],
        set(),
        waiting={"a": "failed", "b": "failure budget"},
    ),
    Case(
        "silent-reboot-within-timeout-still-updating",
        spec(reboot_timeout_seconds=600, max_unavailable=Quantity(2), failure_budget=Quantity(0)),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 100), staged("b")],
        {(R, "b")},
        waiting={"a": "rebooting"},
    ),
    Case(
        "silent-reboot-past-timeout-counts-as-failed",
        spec(reboot_timeout_seconds=60, max_unavailable=Quantity(2), failure_budget=Quantity(0)),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 100), staged("b")],
        set(),
        waiting={"a": "more than 60s ago and not back healthy", "b": "failure budget"},
    ),
    Case(
        "staging-in-progress-is-not-restaged",
        spec(),
        [node("a", phase=Phase.STAGING)],
        set(),
        waiting={"a": "staging v2"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case) -> None:
    result = plan(case.spec, case.state, case.nodes, NOW)
    assert {(a.kind, a.node) for a in result.actions} == case.actions
    for name, fragment in (case.waiting or {}).items():
        assert fragment in result.waiting[name], result.waiting


def test_failure_budget_sets_pause_reason_once() -> None:
    nodes = [node("a", phase=Phase.FAILED), node("b", phase=Phase.FAILED), staged("c")]
    first = plan(spec(failure_budget=Quantity(1)), PoolState(), nodes, NOW)
    assert first.pause_reason is not None and "a, b" in first.pause_reason
    assert first.status.paused_reason == first.pause_reason
    again = plan(spec(failure_budget=Quantity(1)), PoolState(first.pause_reason), nodes, NOW)
    assert again.pause_reason is None  # already persisted; not re-announced
    assert again.status.failed == 2


def test_failure_budget_percent() -> None:
    nodes = [node("a", phase=Phase.FAILED)] + [staged(f"n{i}") for i in range(9)]
    ok = plan(spec(failure_budget=Quantity(10, percent=True)), PoolState(), nodes, NOW)
    assert ok.pause_reason is None
    nodes[1] = node("n0", phase=Phase.FAILED)
    paused = plan(spec(failure_budget=Quantity(10, percent=True)), PoolState(), nodes, NOW)
    assert paused.pause_reason is not None


def test_desired_versions_follow_partition() -> None:
    nodes = [node("a"), node("b"), node("c")]
    result = plan(spec(partition=Quantity(1)), PoolState(), nodes, NOW)
    assert result.desired == {"a": "v2", "b": "v2", "c": "v1"}
    assert result.status.held == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, Quantity(3)),
        ("3", Quantity(3)),
        ("25%", Quantity(25, True)),
        (" 5 % ", Quantity(5, True)),
    ],
)
def test_quantity_parse(raw: object, expected: Quantity) -> None:
    assert Quantity.parse(raw, source="pool.toml: x") == expected


@pytest.mark.parametrize("raw", [-1, "abc", "101%", True, 1.5, None])
def test_quantity_parse_rejects(raw: object) -> None:
    with pytest.raises(ValueError, match=r"pool\.toml: x"):
        Quantity.parse(raw, source="pool.toml: x")


def _simulate(seed: int) -> dict[ActionKind, int]:
    """Random fleets and failures; the controller's and agents' moves are simulated."""
    rng = random.Random(seed)  # noqa: S311 - reproducible simulation, not crypto
    count = rng.randint(1, 25)
    zones = ["a", "b", "c"][: rng.randint(1, 3)]
    nodes = {
        f"n{i:02}": node(
            f"n{i:02}",
            healthy=rng.random() > 0.1,
            zone=rng.choice(zones),
            prio=str(rng.randint(0, 3)),
        )
        for i in range(count)
    }
    pool = spec(
        max_unavailable=Quantity(rng.randint(1, 4)),
        partition=Quantity(rng.randint(0, count // 2)),
        scatter_label="zone",
        priority_label="prio",
        failure_budget=Quantity(rng.randint(0, 3)),
        min_ready_seconds=rng.choice([0, 5]),
    )
    state = PoolState()
    now = 0.0
    staging: dict[str, str] = {}
    kinds: dict[ActionKind, int] = {}
    change_at = rng.randint(5, 40)  # the operator moves the partition mid-rollout
    for step in range(2000):
        now += 1
        if step == change_at:
            pool = replace(pool, partition=Quantity(rng.randint(0, count)))
        result = plan(pool, state, list(nodes.values()), now)
        s = result.status
        if s.paused_reason is not None or s.updated + s.held + s.failed == len(nodes):
            break
        limit = result.status.max_unavailable
        # every node accounted for, exactly once
        assert s.updated + s.updating + s.pending + s.failed + s.held == s.total == len(nodes)
        acted = {a.node for a in result.actions}
        for name, facts in nodes.items():
            done = facts.current_version == result.desired[name] and facts.healthy
            assert name in acted or name in result.waiting or done, (seed, name)
        if result.pause_reason is not None:
            state = PoolState(pause_reason=result.pause_reason)
        # apply the plan as the controller would (grants become phase rebooting)
        for action in result.actions:
            old = nodes[action.node]
            kinds[action.kind] = kinds.get(action.kind, 0) + 1
            if action.kind is ActionKind.STAGE:
                staging[action.node] = action.version
                nodes[action.node] = replace(old, phase=Phase.STAGING)
            else:
                staged_version = action.version
                nodes[action.node] = replace(
                    old, phase=Phase.REBOOTING, staged_version=staged_version, last_transition=now
                )
        # invariant: what the plan granted never exceeds maxUnavailable beyond
        # what was already unavailable before any grant (pre-existing unhealthy
        # nodes may exceed it on their own, but then nothing new is granted)
        down = sum(1 for n in nodes.values() if not n.healthy or n.phase is Phase.REBOOTING)
        granted = sum(1 for a in result.actions if a.kind is not ActionKind.STAGE)
        if granted:
            assert down <= limit, (seed, down, limit)
        # agents move on
        for name, facts in list(nodes.items()):
            roll = rng.random()
            if facts.phase is Phase.STAGING and roll < 0.5:
                nodes[name] = replace(facts, phase=Phase.STAGED, staged_version=staging[name])
            elif facts.phase is Phase.REBOOTING and roll < 0.4:
                target = facts.staged_version or facts.current_version
                if rng.random() < 0.05:
                    nodes[name] = replace(facts, phase=Phase.FAILED, last_transition=now)
                else:
                    nodes[name] = replace(
                        facts, current_version=target, phase=Phase.IDLE, last_transition=now
                    )
            elif not facts.healthy and facts.phase is not Phase.REBOOTING and roll < 0.1:
                nodes[name] = replace(facts, healthy=True)
    # the run terminates: either paused (failures) or converged
    final = plan(pool, state, list(nodes.values()), now)
    if final.status.paused_reason is None:
        settled = final.status.updated + final.status.held + final.status.failed
        assert settled == len(nodes), (seed, final.status)
    return kinds


@pytest.mark.parametrize("seed", range(60))
def test_random_fleets_keep_invariants(seed: int) -> None:
    _simulate(seed)


def test_simulation_exercises_every_action() -> None:
    totals: dict[ActionKind, int] = {}
    for seed in range(60):
        for kind, n in _simulate(seed).items():
            totals[kind] = totals.get(kind, 0) + n
    assert all(totals.get(kind, 0) > 0 for kind in ActionKind), totals


def test_action_is_hashable_value() -> None:
    assert Action(R, "a", "v2") == Action(R, "a", "v2")

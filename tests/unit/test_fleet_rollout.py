"""Table-driven tests of the rollout planner (facts -> actions), one rule per case,
then one table per step of ``plan`` (desired versions, gates, the decision per
node, slots), plus a randomized simulation that checks the invariants over many
steps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from atoll.errors import InputError
from atoll.fleet.pool import spec_from_dict, spec_to_dict
from atoll.fleet.rollout import (
    Action,
    ActionKind,
    Bucket,
    CanaryGate,
    Decision,
    Gates,
    MaintenanceWindow,
    NodeFacts,
    NodeTarget,
    OnStepFailure,
    Phase,
    PoolSpec,
    PoolState,
    PoolStatus,
    Quantity,
    Slots,
    canary_gate,
    decide,
    desired_versions,
    gates,
    grant_slots,
    is_reboot_timeout,
    is_unavailable,
    max_unavailable_of,
    plan,
    ranked,
    reboot_timeout_failure,
    retry_backoff,
    slots,
    stall,
)
from atoll.wire.fleet import By, RebootPolicy, Step, StepFailure

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

SOAK = PoolSpec("p", "v2", "v1", max_unavailable=Quantity(3), canary=1, canary_soak_seconds=600)
WINDOWED = PoolSpec("p", "v2", "v1", failure_budget=Quantity(0), failure_window_seconds=3600)
TIMED_OUT = PoolSpec("p", "v2", "v1", reboot_timeout_seconds=600, failure_window_seconds=3600)


def canary_fleet(since: float) -> list[NodeFacts]:
    return [node("a", "v2", staged="v2", since=since), staged("b"), staged("c")]


def failed_fleet(failed_at: float) -> list[NodeFacts]:
    return [node("a", staged="v2", phase=Phase.FAILED, since=failed_at), staged("b")]


ESP_FULL = StepFailure(
    Step.BOOT_ENTRIES,
    "v2",
    "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB",
    "ESP (/boot/efi)",
)
RETRYING = PoolSpec("p", "v2", "v1", on_step_failure=OnStepFailure.RETRY)


def retrying(retry_at: float, attempts: int = 1) -> NodeFacts:
    """Back idle after a failed step, waiting for its retry."""
    return replace(
        node("a"), failure=ESP_FULL, retry_at=retry_at, step_attempts=attempts, last_transition=NOW
    )


def timed_out_fleet() -> list[NodeFacts]:
    return [node("a", staged="v2", phase=Phase.REBOOTING), staged("b")]


def timeout(version: str = "v2", seconds: int = 900) -> StepFailure:
    """The failure the controller records for a reboot that timed out."""
    reason = f"did not come back within the reboot timeout ({seconds} s) after its reboot grant"
    return StepFailure(Step.REBOOT, version, reason, by=By.CONTROLLER)


def dead(name: str = "a") -> NodeFacts:
    """Failed by its reboot timeout (stored so): down, holding a slot."""
    return replace(
        node(name, staged="v2", phase=Phase.FAILED, healthy=False, since=NOW), failure=timeout()
    )


STALLED = "every reboot slot is held by failed nodes: "


@dataclass(frozen=True)
class Case:
    id: str
    spec: PoolSpec
    nodes: list[NodeFacts]
    actions: set[tuple[ActionKind, str]]
    state: PoolState = field(default_factory=PoolState)
    waiting: dict[str, str] | None = None  # node -> substring of its reason
    now: float = NOW
    pause: str | None = None  # substring of the pause this plan announces; None: no pause
    failed: int | None = None  # status.failed, when given
    failures: dict[str, StepFailure] = field(default_factory=dict)  # the plan fails these
    stalled: str | None = None  # status.stalled_reason; None: not stalled


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
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 60), staged("b")],
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
        pause="failure budget exceeded: 1 failed node(s) (a) > budget 0 (= 0 of 2)",
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
        pause="failure budget exceeded: 1 failed node(s) (a)",
        failed=1,
        failures={"a": timeout(seconds=60)},
    ),
    Case(
        "staging-in-progress-is-not-restaged",
        spec(),
        [node("a", phase=Phase.STAGING)],
        set(),
        waiting={"a": "staging v2"},
    ),
    # Canary soak: the canary "a" updated at `since`, "b" and "c" staged behind it.
    Case(
        "canary-soaking-holds-the-rest",
        SOAK,
        canary_fleet(since=1000.0),
        set(),
        now=1300.0,
        waiting={"b": "soaking 300s of 600s"},
    ),
    Case(
        "canary-soaked-releases-without-resume",
        SOAK,
        canary_fleet(since=1000.0),
        {(R, "b"), (R, "c")},
        now=1600.0,
    ),
    Case(
        "unhealthy-canary-never-soaks",
        SOAK,
        [node("a", "v2", staged="v2", healthy=False), *canary_fleet(since=0.0)[1:]],
        set(),
        now=10_000.0,
        waiting={"b": "canary"},
    ),
    Case(
        "without-soak-the-canary-waits-for-resume-forever",
        replace(SOAK, canary_soak_seconds=0.0),
        canary_fleet(since=0.0),
        set(),
        now=1e9,
        waiting={"b": "explicit resume"},
    ),
    # Failure window: "a" failed at `failed_at`, "b" is staged.
    Case(
        "recent-failure-counts-towards-budget",
        WINDOWED,
        failed_fleet(failed_at=5000.0),
        set(),
        now=6000.0,
        pause="within 3600s (a)",
    ),
    Case(
        "old-failure-is-outside-the-window",
        WINDOWED,
        failed_fleet(failed_at=1000.0),
        {(R, "b")},
        now=9000.0,
        waiting={"a": "failed"},  # and not retried
        failed=1,  # still reported
    ),
    Case(
        "without-window-every-failure-counts",
        replace(WINDOWED, failure_window_seconds=0.0),
        failed_fleet(failed_at=0.0),
        set(),
        now=1e9,
        pause="failure budget exceeded",
    ),
    # A reboot granted at 0 times out at 600, which is when it failed.
    Case(
        "timed-out-reboot-fails-when-the-timeout-expires",
        TIMED_OUT,
        timed_out_fleet(),
        set(),
        now=4000.0,  # 3400 s after the timeout: inside the window
        pause="failure budget exceeded",
        failed=1,
        failures={"a": timeout(seconds=600)},
    ),
    Case(
        "timed-out-reboot-outside-the-window-from-its-timeout",
        TIMED_OUT,
        timed_out_fleet(),
        set(),
        now=4300.0,  # 3700 s after the timeout: outside (4300 s after the grant alone)
        waiting={"a": "more than 600s ago", "b": "reboot slot"},
        failed=1,
        failures={"a": timeout(seconds=600)},
        stalled=f"{STALLED}a (reboot timeout)",  # the only slot: held by the dead node
    ),
    # The reboot timeout's default (900 s) and an explicit 0 (none).
    Case(
        "silent-reboot-within-the-default-timeout-still-updating",
        spec(max_unavailable=Quantity(2)),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 900), staged("b")],
        {(R, "b")},
        waiting={"a": "rebooting into v2"},
    ),
    Case(
        "silent-reboot-past-the-default-timeout-fails-the-pool-does-not-wait",
        spec(max_unavailable=Quantity(2)),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 901), staged("b")],
        set(),
        waiting={"a": "reboot timeout: granted a reboot into v2 more than 900s ago"},
        pause="failure budget exceeded: 1 failed node(s) (a)",
        failed=1,
        failures={"a": timeout()},
    ),
    # A node failed by its reboot timeout, stored so (down: it holds a slot).
    Case(
        "a-node-stored-failed-by-its-reboot-timeout-is-not-failed-again",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(2)),
        [dead(), staged("b")],
        {(R, "b")},
        waiting={
            "a": "reboot of v2 failed: did not come back within the reboot timeout (900 s) "
            "after its reboot grant; not retried until the pool is resumed "
            "(or it reports back healthy on v2)"
        },
        failed=1,
    ),
    Case(
        "failed-nodes-holding-the-only-slot-stall-the-pool-and-say-why",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(1)),
        [dead(), staged("b"), node("c")],
        {(S, "c")},
        waiting={"b": "waiting for a reboot slot (1 of maxUnavailable 1 unavailable)"},
        failed=1,
        stalled=f"{STALLED}a (reboot timeout)",
    ),
    Case(
        "a-reboot-timing-out-now-stalls-the-pool-in-the-same-plan",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(1)),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 901), staged("b")],
        set(),
        waiting={"b": "waiting for a reboot slot"},
        failed=1,
        failures={"a": timeout()},
        stalled=f"{STALLED}a (reboot timeout)",
    ),
    Case(
        "a-failed-node-that-is-up-holds-no-slot-not-stalled",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(1)),
        [replace(dead(), healthy=True), staged("b")],
        {(R, "b")},
        failed=1,
    ),
    Case(
        "room-beside-the-failed-nodes-is-not-stalled",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(2)),
        [dead(), staged("b"), staged("c")],
        {(R, "b")},
        waiting={"c": "waiting for a reboot slot (1 of maxUnavailable 2 unavailable)"},
        failed=1,
    ),
    Case(
        "nothing-left-to-move-is-not-stalled",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(1)),
        [dead(), node("b", "v2")],
        set(),
        failed=1,
    ),
    Case(
        "a-paused-pool-waits-for-its-resume-not-stalled",
        spec(failure_budget=Quantity(1), max_unavailable=Quantity(1)),
        [dead(), staged("b")],
        set(),
        state=PoolState(pause_reason="operator"),
        waiting={"b": "pool paused: operator"},
        failed=1,
    ),
    Case(
        "an-explicit-zero-reboot-timeout-waits-forever",
        spec(reboot_timeout_seconds=0, max_unavailable=Quantity(2)),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 10**6), staged("b")],
        {(R, "b")},
        waiting={"a": "rebooting into v2"},
    ),
    # Step failures (recorded on the node by atoll.fleet.transitions).
    Case(
        "a-node-waiting-for-its-retry-is-not-told-to-stage",
        RETRYING,
        [retrying(retry_at=NOW + 60)],
        set(),
        waiting={
            "a": "boot-entries of v2 failed: ESP (/boot/efi) has 0 bytes free, the new kernel "
            "needs 14 MB (resource: ESP (/boot/efi)); retry 1 of 3 in 60s "
            "(at 1970-01-01 00:17:40 UTC)"
        },
    ),
    Case(
        "a-node-past-its-retry-time-stages-again",
        RETRYING,
        [retrying(retry_at=NOW, attempts=2)],
        {(S, "a")},
        waiting={"a": "told to stage v2"},
    ),
    Case(
        "a-retry-holds-only-the-version-that-failed-not-a-new-target",
        replace(RETRYING, target_version="v3", previous_version="v2"),
        [retrying(retry_at=NOW + 60)],
        {(S, "a")},
        waiting={"a": "told to stage v3"},
    ),
    Case(
        "a-retry-waits-behind-a-pause-like-everything-else",
        RETRYING,
        [retrying(retry_at=NOW + 60)],
        set(),
        state=PoolState(pause_reason="operator"),
        waiting={"a": "pool paused: operator"},
    ),
    Case(
        "a-node-failed-by-a-step-says-which-step-and-counts-for-the-budget",
        spec(max_unavailable=Quantity(2)),
        [replace(node("a", phase=Phase.FAILED, since=NOW), failure=ESP_FULL), staged("b")],
        set(),
        waiting={
            "a": "boot-entries of v2 failed: ESP (/boot/efi) has 0 bytes free, the new kernel "
            "needs 14 MB (resource: ESP (/boot/efi)); not retried until the pool is resumed",
            "b": "failure budget",
        },
        pause="failure budget exceeded: 1 failed node(s) (a)",
        failed=1,
    ),
]


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [(0, 30.0), (1, 30.0), (2, 60.0), (3, 120.0), (6, 960.0), (7, 1800.0), (100, 1800.0)],
)
def test_retry_backoff_doubles_from_30s_up_to_30min(attempt: int, seconds: float) -> None:
    assert retry_backoff(attempt) == seconds


@pytest.mark.parametrize(
    ("strategy", "policy"),
    [
        ({}, RebootPolicy.AUTO),  # the default: soft when the kernel allows
        ({"reboot": "auto"}, RebootPolicy.AUTO),
        ({"reboot": "full"}, RebootPolicy.FULL),
    ],
)
def test_the_pool_says_how_its_nodes_restart(
    strategy: dict[str, str], policy: RebootPolicy
) -> None:
    pool = spec_from_dict({"pool": {"name": "p", "version": "v2"}, "strategy": strategy}, "x")
    assert pool.reboot is policy
    assert spec_to_dict(pool)["strategy"]["reboot"] == policy.value
    assert spec_from_dict(spec_to_dict(pool), "again") == pool


def test_reboot_timeout_and_step_failure_defaults() -> None:
    """pool.toml without them: a 900 s reboot timeout, failed steps fail the node."""
    pool = spec_from_dict({"pool": {"name": "p", "version": "v2"}}, "pool.toml")
    assert pool.reboot_timeout_seconds == 900
    assert (pool.on_step_failure, pool.max_step_retries) == (OnStepFailure.FAIL, 3)
    assert spec_from_dict(spec_to_dict(pool), "again") == pool
    explicit = {"reboot_timeout_seconds": 0, "on_step_failure": "retry", "max_step_retries": 0}
    raw = {"pool": {"name": "p", "version": "v2"}, "strategy": explicit}
    pool = spec_from_dict(raw, "pool.toml")
    assert (pool.reboot_timeout_seconds, pool.on_step_failure, pool.max_step_retries) == (
        0,
        OnStepFailure.RETRY,
        0,
    )
    assert spec_from_dict(spec_to_dict(pool), "again") == pool


@pytest.mark.parametrize(
    ("strategy", "error"),
    [
        (
            {"on_step_failure": "retry-forever"},
            r"pool\.toml: strategy\.on_step_failure: expected one of \['fail', 'retry'\], "
            "got 'retry-forever'",
        ),
        ({"on_step_failure": 1}, r"pool\.toml: strategy\.on_step_failure: expected one of"),
        ({"max_step_retries": -1}, r"pool\.toml: strategy\.max_step_retries: expected 0\.\.100"),
        ({"max_step_retries": 101}, r"strategy\.max_step_retries: expected 0\.\.100, got 101"),
        ({"max_step_retries": True}, r"strategy\.max_step_retries: expected 0\.\.100, got True"),
        ({"max_step_retries": "3"}, r"strategy\.max_step_retries: expected 0\.\.100, got '3'"),
        ({"reboot_timeout_seconds": -1}, r"strategy\.reboot_timeout_seconds: expected seconds"),
        (
            {"reboot": "soft"},
            r"pool\.toml: strategy\.reboot: expected one of \['auto', 'full'\], got 'soft'",
        ),
        ({"reboot": True}, r"pool\.toml: strategy\.reboot: expected one of .*, got True"),
        ({"reboot": "FULL"}, r"pool\.toml: strategy\.reboot: expected one of .*, got 'FULL'"),
    ],
)
def test_step_failure_strategy_errors_name_file_and_key(
    strategy: dict[str, object], error: str
) -> None:
    raw = {"pool": {"name": "p", "version": "v2"}, "strategy": strategy}
    with pytest.raises(InputError, match=error):
        spec_from_dict(raw, "pool.toml")


@pytest.mark.parametrize(
    ("pool", "error"),
    [
        ({"version": ""}, r"pool\.toml: pool\.version: expected a non-empty string, got ''"),
        ({"version": " "}, r"pool\.toml: pool\.version: expected a non-empty string"),
        ({"version": 2}, r"pool\.toml: pool\.version: expected a non-empty string, got 2"),
        ({"version": "v2\n"}, r"pool\.toml: pool\.version: expected printable ASCII"),
        ({"version": "v2\x1b[2J"}, r"pool\.toml: pool\.version: expected printable ASCII"),
        ({"version": "v\x7f2"}, r"pool\.toml: pool\.version: expected printable ASCII"),
        ({"version": "v\u00e92"}, r"pool\.toml: pool\.version: expected printable ASCII"),
        ({"version": "v" * 129}, r"pool\.toml: pool\.version: .*at most 128 characters"),
        (
            {"version": "v2", "previous_version": "v1\t"},
            r"pool\.toml: pool\.previous_version: expected printable ASCII",
        ),
        (
            {"version": "v2", "previous_version": "1" * 129},
            r"pool\.toml: pool\.previous_version: .*at most 128",
        ),
    ],
)
def test_pool_versions_are_printable_ascii_names_file_and_key(
    pool: dict[str, object], error: str
) -> None:
    with pytest.raises(InputError, match=error):
        spec_from_dict({"pool": {"name": "p", **pool}}, "pool.toml")


@pytest.mark.parametrize("version", ["v", "2.0.1+build~rc 1", "v" * 128, "a/b:c@d"])
def test_pool_versions_up_to_128_printable_characters_load(version: str) -> None:
    pool = spec_from_dict({"pool": {"name": "p", "version": version}}, "pool.toml")
    assert pool.target_version == version


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rule(case: Case) -> None:
    result = plan(case.spec, case.state, case.nodes, case.now)
    assert {(a.kind, a.node) for a in result.actions} == case.actions
    for name, fragment in (case.waiting or {}).items():
        assert fragment in result.waiting[name], result.waiting
    if case.pause is None:
        assert result.pause_reason is None
    else:
        assert result.pause_reason is not None and case.pause in result.pause_reason
    if case.failed is not None:
        assert result.status.failed == case.failed
    assert result.failures == case.failures
    assert result.status.stalled_reason == case.stalled


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


def test_plan_puts_every_node_in_one_bucket() -> None:
    nodes = [
        node("a", "v2"),  # updated
        node("a0"),  # told to stage: pending
        staged("b", prio="1"),  # granted the slot: updating
        staged("c"),  # no slot left: pending
        node("d", staged="v2", phase=Phase.FAILED),  # failed
        node("e", phase=Phase.STAGING),  # updating
        node("f"),  # held by the partition
    ]
    pool = spec(partition=Quantity(1), failure_budget=Quantity(1), priority_label="prio")
    result = plan(pool, PoolState(), nodes, NOW)
    assert result.actions == (Action(S, "a0", "v2"), Action(R, "b", "v2"))
    assert result.status == PoolStatus(
        total=7,
        updated=1,
        updating=2,
        pending=2,
        failed=1,
        held=1,
        unavailable=0,
        max_unavailable=1,
        paused_reason=None,
    )
    assert result.waiting == {
        "a0": "told to stage v2",
        "d": "failed while moving to v2 (on v1); not retried until the pool is resumed",
        "e": "staging v2",
        "c": "staged v2; waiting for a reboot slot (0 of maxUnavailable 1 unavailable)",
    }
    assert result.pause_reason is None


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


def test_soak_and_window_round_trip_through_pool_dict() -> None:
    raw = {
        "pool": {"name": "p", "version": "v2"},
        "strategy": {"canary": 2, "canary_soak_seconds": 900, "failure_window_seconds": 3600},
    }
    pool = spec_from_dict(raw, "pool.toml")
    assert (pool.canary_soak_seconds, pool.failure_window_seconds) == (900.0, 3600.0)
    assert spec_from_dict(spec_to_dict(pool), "again") == pool


# Step 1: desired versions (partition, canary, rollback of held nodes) -------


def target(
    version: str = "v2", *, held: bool = False, canary: bool = False, back: bool = False
) -> NodeTarget:
    return NodeTarget(version, not held, canary=canary, rolls_back=back)


DESIRED = [
    pytest.param(spec(), [node("a"), node("b")], {"a": target(), "b": target()}, id="all-update"),
    pytest.param(
        spec(partition=Quantity(1)),
        [node("a"), node("b"), node("c")],
        {"a": target(), "b": target(), "c": target("v1", held=True)},
        id="partition-holds-the-last",
    ),
    pytest.param(
        spec(partition=Quantity(50, percent=True)),
        [node("a"), node("b"), node("c")],
        {"a": target(), "b": target("v1", held=True), "c": target("v1", held=True)},
        id="partition-percent-rounds-up",
    ),
    pytest.param(
        spec(partition=Quantity(9)),
        [node("a"), node("b")],
        {"a": target("v1", held=True), "b": target("v1", held=True)},
        id="partition-above-the-pool-holds-all",
    ),
    pytest.param(
        spec(partition=Quantity(1), priority_label="prio"),
        [node("a"), node("b", prio="5")],
        {"b": target(), "a": target("v1", held=True)},
        id="priority-decides-who-is-held",
    ),
    pytest.param(
        spec(partition=Quantity(1), previous_version=None),
        [node("a"), node("b", "v0")],
        {"a": target(), "b": target("v0", held=True)},
        id="no-previous-version-keeps-the-current",
    ),
    pytest.param(
        spec(partition=Quantity(2)),
        [node("a", "v2"), node("b", "v2"), node("c", "v1")],
        {"a": target(), "b": target("v1", held=True, back=True), "c": target("v1", held=True)},
        id="held-node-on-the-target-rolls-back",
    ),
    pytest.param(
        spec(canary=2),
        [node("a"), node("b"), node("c")],
        {"a": target(canary=True), "b": target(canary=True), "c": target()},
        id="canary-is-the-first-n",
    ),
    pytest.param(
        spec(canary=3, partition=Quantity(1)),
        [node("a"), node("b"), node("c")],
        {"a": target(canary=True), "b": target(canary=True), "c": target("v1", held=True)},
        id="canary-only-within-the-update-set",
    ),
]


@pytest.mark.parametrize(("pool", "nodes", "expected"), DESIRED)
def test_desired_versions(
    pool: PoolSpec, nodes: list[NodeFacts], expected: dict[str, NodeTarget]
) -> None:
    targets = desired_versions(pool, ranked(nodes, pool))
    assert targets == expected
    assert list(targets) == list(expected)  # rank order


# Step 2: gates (persisted pause, failure budget, paused, canary soak) --------

BUDGET_1_OF_2 = "failure budget exceeded: 1 failed node(s) (a) > budget 0 (= 0 of 2)"
CANARY_DONE = "canary: the first 1 node(s) are updated"

GATES = [
    pytest.param(spec(), PoolState(), [staged("a")], NOW, Gates(None, None), id="open"),
    pytest.param(
        spec(paused=True),
        PoolState(pause_reason="operator"),
        [node("a", phase=Phase.FAILED), staged("b")],
        NOW,
        Gates("operator", None),
        id="persisted-pause-comes-first-and-is-not-re-announced",
    ),
    pytest.param(
        spec(paused=True),
        PoolState(),
        [node("a", phase=Phase.FAILED), staged("b")],
        NOW,
        Gates(BUDGET_1_OF_2, BUDGET_1_OF_2),
        id="failure-budget-announces-a-pause",
    ),
    pytest.param(
        spec(failure_budget=Quantity(1)),
        PoolState(),
        [node("a", phase=Phase.FAILED), staged("b")],
        NOW,
        Gates(None, None),
        id="failures-within-the-budget",
    ),
    pytest.param(
        spec(failure_budget=Quantity(50, percent=True)),
        PoolState(),
        [node("a", phase=Phase.FAILED), node("b", phase=Phase.FAILED), staged("c")],
        NOW,
        Gates(
            "failure budget exceeded: 2 failed node(s) (a, b) > budget 50% (= 1 of 3)",
            "failure budget exceeded: 2 failed node(s) (a, b) > budget 50% (= 1 of 3)",
        ),
        id="failure-budget-percent-rounds-down",
    ),
    pytest.param(
        spec(reboot_timeout_seconds=60),
        PoolState(),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 61), staged("b")],
        NOW,
        Gates(BUDGET_1_OF_2, BUDGET_1_OF_2),
        id="timed-out-reboot-counts-as-failed",
    ),
    pytest.param(
        spec(reboot_timeout_seconds=60),
        PoolState(),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 60), staged("b")],
        NOW,
        Gates(None, None),
        id="reboot-at-its-timeout-has-not-failed",
    ),
    pytest.param(
        spec(failure_window_seconds=100),
        PoolState(),
        [node("a", phase=Phase.FAILED, since=NOW - 101), staged("b")],
        NOW,
        Gates(None, None),
        id="failure-older-than-the-window",
    ),
    pytest.param(
        spec(failure_window_seconds=100),
        PoolState(),
        [node("a", phase=Phase.FAILED, since=NOW - 100), staged("b")],
        NOW,
        Gates(
            "failure budget exceeded: 1 failed node(s) within 100s (a) > budget 0 (= 0 of 2)",
            "failure budget exceeded: 1 failed node(s) within 100s (a) > budget 0 (= 0 of 2)",
        ),
        id="failure-at-the-edge-of-the-window",
    ),
    pytest.param(
        spec(paused=True),
        PoolState(),
        [staged("a")],
        NOW,
        Gates("paused by the pool spec (paused = true)", None),
        id="paused-spec",
    ),
    pytest.param(
        spec(canary=1),
        PoolState(),
        [staged("a"), staged("b")],
        NOW,
        Gates(None, None, 1),
        id="canary-moving-holds-the-rest",
    ),
    pytest.param(
        spec(canary=1),
        PoolState(canary_released=True),
        [staged("a"), staged("b")],
        NOW,
        Gates(None, None),
        id="canary-released",
    ),
    pytest.param(
        spec(canary=1),
        PoolState(),
        [node("a", "v2"), staged("b")],
        NOW,
        Gates(f"{CANARY_DONE}; waiting for an explicit resume", None, 1),
        id="canary-done-waits-for-resume",
    ),
    pytest.param(
        spec(canary=1, canary_soak_seconds=600),
        PoolState(),
        [node("a", "v2", since=NOW - 300), staged("b")],
        NOW,
        Gates(f"{CANARY_DONE}; soaking 300s of 600s (or resume)", None, 1),
        id="canary-soaking",
    ),
    pytest.param(
        spec(canary=1, canary_soak_seconds=600),
        PoolState(),
        [node("a", "v2", since=NOW - 600), staged("b")],
        NOW,
        Gates(None, None),
        id="canary-soaked",
    ),
    pytest.param(
        spec(canary=1, canary_soak_seconds=600),
        PoolState(),
        [node("a", "v2", healthy=False, since=0.0), staged("b")],
        NOW,
        Gates(None, None, 1),
        id="unhealthy-canary-never-soaks",
    ),
]


@pytest.mark.parametrize(("pool", "state", "nodes", "now", "expected"), GATES)
def test_gates(
    pool: PoolSpec, state: PoolState, nodes: list[NodeFacts], now: float, expected: Gates
) -> None:
    order = ranked(nodes, pool)
    assert gates(pool, state, order, desired_versions(pool, order), now) == expected


@pytest.mark.parametrize(
    ("canaries", "state", "expected"),
    [
        pytest.param([], PoolState(), CanaryGate(holds=False), id="no-canary"),
        pytest.param(
            [node("a", "v2"), node("b")], PoolState(), CanaryGate(holds=True), id="one-not-done"
        ),
        pytest.param(
            [node("a", "v2", phase=Phase.STAGED)],
            PoolState(),
            CanaryGate(holds=True),
            id="not-idle-is-not-done",
        ),
        pytest.param(
            [node("a", "v2", since=NOW - 100), node("b", "v2", since=NOW - 10)],
            PoolState(),
            CanaryGate(
                True, "canary: the first 2 node(s) are updated; soaking 10s of 60s (or resume)"
            ),
            id="soak-counts-from-the-last-canary",
        ),
        pytest.param(
            [node("a", "v2"), node("b")],
            PoolState(canary_released=True),
            CanaryGate(holds=False),
            id="resume-releases",
        ),
    ],
)
def test_canary_gate(canaries: list[NodeFacts], state: PoolState, expected: CanaryGate) -> None:
    assert canary_gate(spec(canary_soak_seconds=60), state, canaries, NOW) == expected


# Step 3: the decision per node ------------------------------------------------

OPEN = Gates(None, None)
CLOSED_WINDOW = MaintenanceWindow(("mon",), 0, 1)  # NOW (Thursday 1970-01-01) is outside

DECISIONS = [
    pytest.param(
        node("a", staged="v2", phase=Phase.FAILED),
        target(),
        Gates("operator", None),
        spec(),
        Decision(
            Bucket.FAILED,
            "failed while moving to v2 (on v1); not retried until the pool is resumed",
        ),
        id="failed-is-not-retried",
    ),
    pytest.param(node("a", "v2"), target(), OPEN, spec(), Decision(Bucket.UPDATED), id="updated"),
    pytest.param(
        node("a"),
        target("v1", held=True),
        Gates("x", None),
        spec(),
        Decision(Bucket.HELD),
        id="held",
    ),
    pytest.param(
        node("a", "v2", healthy=False),
        target(),
        OPEN,
        spec(),
        Decision(Bucket.UPDATED, "on v2 but unhealthy: counts as unavailable"),
        id="updated-but-unhealthy",
    ),
    pytest.param(
        node("a", "v2", staged="v3", phase=Phase.REBOOTING, since=NOW - 61),
        target(),
        OPEN,
        spec(reboot_timeout_seconds=60),
        Decision(
            Bucket.FAILED,
            "reboot timeout: granted a reboot into v3 more than 60s ago and not back healthy: "
            "counted as failed and unavailable",
            failure=timeout("v3", 60),
        ),
        id="reboot-timed-out",
    ),
    pytest.param(
        dead(),
        target(),
        OPEN,
        spec(),
        Decision(
            Bucket.FAILED,
            "reboot of v2 failed: did not come back within the reboot timeout (900 s) after "
            "its reboot grant; not retried until the pool is resumed "
            "(or it reports back healthy on v2)",
        ),
        id="failed-by-the-reboot-timeout-says-it-may-come-back",
    ),
    pytest.param(
        node("a", phase=Phase.REBOOTING, since=NOW - 60),
        target(),
        Gates("operator", None),
        spec(),
        Decision(Bucket.UPDATING, "rebooting into v2"),
        id="rebooting-finishes-while-paused",
    ),
    pytest.param(
        staged("a"),
        target(),
        Gates("operator", None),
        spec(),
        Decision(Bucket.PENDING, "pool paused: operator"),
        id="paused",
    ),
    pytest.param(
        staged("a"),
        target(),
        Gates(None, None, 2),
        spec(),
        Decision(
            Bucket.PENDING,
            "canary: waits until the first 2 node(s) are updated and the pool is resumed",
        ),
        id="behind-the-canaries",
    ),
    pytest.param(
        staged("a"),
        target(canary=True),
        Gates(None, None, 2),
        spec(),
        Decision(Bucket.PENDING, action=R),
        id="canary-moves",
    ),
    pytest.param(
        node("a", "v2"),
        target("v1", held=True, back=True),
        Gates(None, None, 2),
        spec(),
        Decision(Bucket.PENDING, action=B),
        id="held-node-is-not-behind-the-canaries",
    ),
    pytest.param(
        node("a"),
        target(),
        OPEN,
        spec(),
        Decision(Bucket.PENDING, "told to stage v2", S),
        id="stage",
    ),
    pytest.param(
        node("a", staged="v3"),
        target(),
        OPEN,
        spec(),
        Decision(Bucket.PENDING, "told to stage v2", S),
        id="restage-a-different-version",
    ),
    pytest.param(
        node("a", phase=Phase.STAGING),
        target(),
        OPEN,
        spec(),
        Decision(Bucket.UPDATING, "staging v2"),
        id="staging",
    ),
    pytest.param(
        node("a", "v2"),
        target("v1", held=True, back=True),
        OPEN,
        spec(),
        Decision(Bucket.PENDING, action=B),
        id="rollback-needs-no-staging",
    ),
    pytest.param(
        node("a", staged="v2", phase=Phase.STAGED, healthy=False),
        target(),
        OPEN,
        spec(),
        Decision(Bucket.PENDING, "unhealthy: will not be rebooted until healthy"),
        id="unhealthy-is-not-rebooted",
    ),
    pytest.param(
        staged("a"),
        target(),
        OPEN,
        spec(maintenance_window=CLOSED_WINDOW),
        Decision(Bucket.PENDING, f"staged v2; outside the maintenance window ({CLOSED_WINDOW})"),
        id="outside-the-maintenance-window",
    ),
    pytest.param(
        node("a"),
        target(),
        OPEN,
        spec(maintenance_window=CLOSED_WINDOW),
        Decision(Bucket.PENDING, "told to stage v2", S),
        id="staging-ignores-the-maintenance-window",
    ),
    pytest.param(
        staged("a"), target(), OPEN, spec(), Decision(Bucket.PENDING, action=R), id="reboot"
    ),
]


@pytest.mark.parametrize(("facts", "where", "gate", "pool", "expected"), DECISIONS)
def test_decide(
    facts: NodeFacts, where: NodeTarget, gate: Gates, pool: PoolSpec, expected: Decision
) -> None:
    assert decide(facts, where, gate, pool, NOW) == expected


# Step 4: slots (maxUnavailable as a count or percent; other unavailable nodes) --


@pytest.mark.parametrize(
    ("quantity", "total", "expected"),
    [
        (Quantity(2), 10, 2),
        (Quantity(0), 10, 1),
        (Quantity(25, percent=True), 10, 2),
        (Quantity(10, percent=True), 5, 1),
        (Quantity(100, percent=True), 7, 7),
        (Quantity(50, percent=True), 0, 1),
    ],
)
def test_max_unavailable_of(quantity: Quantity, total: int, expected: int) -> None:
    assert max_unavailable_of(spec(max_unavailable=quantity), total) == expected


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(staged("a"), False, id="staged"),
        pytest.param(node("a", phase=Phase.STAGING), False, id="staging-is-free"),
        pytest.param(node("a", healthy=False), True, id="unhealthy"),
        pytest.param(node("a", "v2", phase=Phase.REBOOTING), True, id="rebooting"),
        pytest.param(node("a", "v2", since=NOW - 59), True, id="updated-within-min-ready"),
        pytest.param(node("a", "v2", since=NOW - 60), False, id="updated-and-ready"),
        pytest.param(node("a", "v1", since=NOW), False, id="not-on-desired-is-not-pacing"),
    ],
)
def test_is_unavailable(facts: NodeFacts, expected: bool) -> None:
    assert is_unavailable(facts, "v2", spec(min_ready_seconds=60), NOW) is expected


@pytest.mark.parametrize(
    ("candidates", "down", "free", "labels", "expected"),
    [
        pytest.param([staged("a"), staged("b")], [], 0, {}, [], id="no-slot"),
        pytest.param([staged("a"), staged("b")], [], -1, {}, [], id="over-the-limit"),
        pytest.param([staged("b"), staged("a")], [], 1, {}, ["a"], id="by-name"),
        pytest.param(
            [staged("a", prio="1"), staged("b", prio="2")],
            [],
            2,
            {"priority_label": "prio"},
            ["b", "a"],
            id="priority-first",
        ),
        pytest.param(
            [staged("a", zone="x"), staged("b", zone="x"), staged("c", zone="y")],
            [],
            2,
            {"scatter_label": "zone"},
            ["a", "c"],
            id="scatter-across-zones",
        ),
        pytest.param(
            [staged("a", zone="y"), staged("b", zone="x")],
            [node("d", healthy=False, zone="y")],
            2,
            {"scatter_label": "zone"},
            ["b", "a"],
            id="zones-already-down-count",
        ),
        pytest.param(
            [staged("a", zone="x", prio="2"), staged("b", zone="y", prio="1")],
            [node("d", healthy=False, zone="x")],
            1,
            {"scatter_label": "zone", "priority_label": "prio"},
            ["a"],
            id="priority-before-scatter",
        ),
    ],
)
def test_grant_slots(
    candidates: list[NodeFacts],
    down: list[NodeFacts],
    free: int,
    labels: dict[str, str],
    expected: list[str],
) -> None:
    assert grant_slots(candidates, down, free, spec(**labels)) == expected


def _slots(pool: PoolSpec, nodes: list[NodeFacts], candidates: list[str]) -> Slots:
    order = ranked(nodes, pool)
    targets = desired_versions(pool, order)
    wanted = [Action(R, name, targets[name].version) for name in candidates]
    return slots(pool, order, targets, wanted, NOW)


SLOT_WAIT = "staged v2; waiting for a reboot slot"

SLOTS = [
    pytest.param(
        spec(max_unavailable=Quantity(2)),
        [staged("a"), staged("b"), staged("c")],
        ["a", "b", "c"],
        Slots(
            2,
            0,
            (Action(R, "a", "v2"), Action(R, "b", "v2")),
            {"c": f"{SLOT_WAIT} (0 of maxUnavailable 2 unavailable)"},
        ),
        id="count",
    ),
    pytest.param(
        spec(max_unavailable=Quantity(50, percent=True)),
        [staged("a"), staged("b"), staged("c"), staged("d"), staged("e")],
        ["a", "b", "c", "d", "e"],
        Slots(
            2,
            0,
            (Action(R, "a", "v2"), Action(R, "b", "v2")),
            {name: f"{SLOT_WAIT} (0 of maxUnavailable 2 unavailable)" for name in "cde"},
        ),
        id="percent-rounds-down",
    ),
    pytest.param(
        spec(max_unavailable=Quantity(2), min_ready_seconds=60),
        [node("x", "v2", since=NOW - 1), node("y", "v2", healthy=False), staged("a")],
        ["a"],
        Slots(2, 2, (), {"a": f"{SLOT_WAIT} (2 of maxUnavailable 2 unavailable)"}),
        id="unavailable-for-other-reasons-take-the-slots",
    ),
    pytest.param(
        spec(max_unavailable=Quantity(1)),
        [node("x", "v2", healthy=False), node("y", "v2", healthy=False), staged("a")],
        ["a"],
        Slots(1, 2, (), {"a": f"{SLOT_WAIT} (2 of maxUnavailable 1 unavailable)"}),
        id="already-over-the-limit",
    ),
    pytest.param(
        spec(max_unavailable=Quantity(3)),
        [node("x", phase=Phase.REBOOTING), staged("a"), staged("b")],
        ["a", "b"],
        Slots(3, 1, (Action(R, "a", "v2"), Action(R, "b", "v2")), {}),
        id="room-for-all",
    ),
]


@pytest.mark.parametrize(("pool", "nodes", "candidates", "expected"), SLOTS)
def test_slots(
    pool: PoolSpec, nodes: list[NodeFacts], candidates: list[str], expected: Slots
) -> None:
    assert _slots(pool, nodes, candidates) == expected


# Step 5: stall (failed nodes that are down hold every slot) -------------------

STALLS = [
    pytest.param(spec(), [dead(), staged("b")], [], None, id="nothing-waits"),
    pytest.param(
        spec(), [dead(), staged("b")], ["b"], f"{STALLED}a (reboot timeout)", id="the-only-slot"
    ),
    pytest.param(
        spec(reboot_timeout_seconds=60),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 61), staged("b")],
        ["b"],
        f"{STALLED}a (reboot timeout)",
        id="timing-out-now",
    ),
    pytest.param(
        spec(),
        [node("a", staged="v2", phase=Phase.REBOOTING, since=NOW - 60), staged("b")],
        ["b"],
        None,
        id="rebooting-within-its-timeout",
    ),
    pytest.param(
        spec(max_unavailable=Quantity(3)),
        [
            dead(),
            replace(node("b", phase=Phase.FAILED, healthy=False), failure=ESP_FULL),
            node("c", phase=Phase.FAILED, healthy=False),
            staged("d"),
        ],
        ["d"],
        f"{STALLED}a (reboot timeout), b (boot-entries of v2 failed), c (failed on v1)",
        id="every-cause-named",
    ),
    pytest.param(
        spec(max_unavailable=Quantity(2)),
        [dead(), node("b", "v2", healthy=False), staged("c")],
        ["c"],
        None,
        id="an-unhealthy-node-that-did-not-fail-may-recover",
    ),
    pytest.param(
        spec(), [replace(dead(), healthy=True), staged("b")], ["b"], None, id="failed-but-up"
    ),
]


@pytest.mark.parametrize(("pool", "nodes", "moving", "expected"), STALLS)
def test_stall(
    pool: PoolSpec, nodes: list[NodeFacts], moving: list[str], expected: str | None
) -> None:
    order = ranked(nodes, pool)
    assert stall(pool, order, desired_versions(pool, order), moving, NOW) == expected


def test_reboot_timeout_failure_is_one_bounded_line() -> None:
    assert reboot_timeout_failure("v2", 900.0) == timeout()
    odd = reboot_timeout_failure("v2\nrc " + "x" * 300, 1.5)
    assert odd.version == ("v2 rc " + "x" * 300)[:200]
    assert odd.reason.endswith("(1.5 s) after its reboot grant")


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (timeout(), True),
        (replace(timeout(), reason="watchdog fired"), True),  # the origin decides, not the words
        (replace(timeout(), by=By.NODE), False),  # a node's reboot failure, same words
        (replace(timeout(), step=Step.DEPLOY), False),
        (ESP_FULL, False),
        (None, False),
    ],
)
def test_a_reboot_timeout_is_the_controllers_reboot_failure(
    failure: StepFailure | None, expected: bool
) -> None:
    assert is_reboot_timeout(failure) is expected


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

"""The fleet's rules (atoll.fleet.transitions), as one table of facts -> what they become.

``TABLE`` is the transition table of the fleet: the stored facts before (nodes, and
the pool ``web``), one fact or decision, and the stored state after (every node, the
pool's spec and state, the events emitted). Here it runs against the pure functions
through :func:`apply`; ``tests/integration/test_fleet_store.py`` runs the same table
against the SQLite and the etcd store, so both backends keep exactly these rules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from atoll.errors import InputError
from atoll.fleet import transitions
from atoll.fleet.rollout import (
    Action,
    ActionKind,
    NodeFacts,
    OnStepFailure,
    Phase,
    Plan,
    PoolSpec,
    PoolState,
    Quantity,
    plan,
)
from atoll.fleet.transitions import Instruction, NewEvent
from atoll.wire.fleet import (
    By,
    RebootPolicy,
    Registration,
    Report,
    Restart,
    RestartKind,
    Step,
    StepFailure,
)

NOW = 100.0
THEN = 10.0
UNPAUSED = PoolState()
WEB = {"role": "web"}
SPEC = PoolSpec(
    name="web",
    target_version="v2",
    previous_version="v1",
    selector=WEB,
    max_unavailable=Quantity(1),
)


def node(
    name: str,
    phase: Phase,
    current: str = "v1",
    staged: str | None = None,
    *,
    healthy: bool = True,
    since: float = THEN,
    labels: dict[str, str] | None = None,
) -> NodeFacts:
    return NodeFacts(
        name, WEB if labels is None else labels, current, staged, healthy, phase, since
    )


# What happens: one fact (a registration, a report, an operator verb) or decision (a plan).


@dataclass(frozen=True)
class Register:
    registration: Registration


@dataclass(frozen=True)
class Reported:
    """An agent's report, and the version its pool wants (``None``: no pool selects it;
    otherwise the pool is the case's ``spec``, whose ``on_step_failure`` applies)."""

    name: str
    report: Report
    desired: str | None


@dataclass(frozen=True)
class Decided:
    """A plan for pool ``web`` with these decisions, self-pause and failures
    (nodes past their reboot timeout)."""

    actions: tuple[Action, ...]
    pause_reason: str | None = None
    failures: tuple[tuple[str, StepFailure], ...] = ()

    def plan(self) -> Plan:
        # A real plan's shape (status, desired) with the decisions under test.
        empty = plan(SPEC, PoolState(), [], NOW)
        return replace(
            empty,
            actions=self.actions,
            pause_reason=self.pause_reason,
            failures=dict(self.failures),
        )


@dataclass(frozen=True)
class Verb:
    """An operator verb on pool ``web``: pause (with a reason), resume, rollback, apply."""

    kind: str
    reason: str = ""
    spec: PoolSpec | None = None  # apply


Happening = Register | Reported | Decided | Verb


def ev(kind: str, message: str, node: str | None = None, pool: str | None = "web") -> NewEvent:
    return NewEvent(NOW, pool, node, kind, message)


@dataclass(frozen=True)
class Case:
    id: str
    nodes: tuple[NodeFacts, ...]
    happens: Happening
    after: tuple[NodeFacts, ...]
    events: tuple[NewEvent, ...] = ()
    spec: PoolSpec = SPEC
    state: PoolState = UNPAUSED
    spec_after: PoolSpec | None = None  # None: unchanged
    state_after: PoolState | None = None  # None: unchanged
    raises: str | None = None  # an InputError matching this; nothing changes


@dataclass(frozen=True)
class Outcome:
    """The stored state after a case, as a store (or the pure model) has it."""

    nodes: tuple[NodeFacts, ...]
    spec: PoolSpec
    state: PoolState
    events: tuple[NewEvent, ...]


def expected(case: Case) -> Outcome:
    return Outcome(
        tuple(sorted(case.after, key=lambda n: n.name)),
        case.spec if case.spec_after is None else case.spec_after,
        case.state if case.state_after is None else case.state_after,
        case.events,
    )


def reg(name: str, version: str = "v1", *, healthy: bool = True, **labels: str) -> Register:
    return Register(Registration(name, labels or WEB, version, healthy))


def rep(
    name: str,
    current: str,
    staged: str | None = None,
    *,
    healthy: bool = True,
    failed: bool = False,
    desired: str | None = "v2",
    failure: StepFailure | None = None,
    restart: Restart | None = None,
) -> Reported:
    return Reported(name, Report(current, staged, healthy, failed, failure, restart), desired)


def pool_of(case_spec: PoolSpec, reported: Reported) -> PoolSpec | None:
    """The pool a report is judged by: the case's, when a pool selects the node."""
    return None if reported.desired is None else case_spec


def act(kind: ActionKind, name: str, version: str = "v2") -> Action:
    return Action(kind, name, version)


STAGE, REBOOT, ROLLBACK = ActionKind.STAGE, ActionKind.REBOOT, ActionKind.ROLLBACK
IDLE, STAGING, STAGED = Phase.IDLE, Phase.STAGING, Phase.STAGED
REBOOTING, FAILED = Phase.REBOOTING, Phase.FAILED
GRANTED = node("a", REBOOTING, "v1", "v2")  # granted a reboot into v2 at THEN
ESP_FULL = StepFailure(
    Step.BOOT_ENTRIES,
    "v2",
    "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB",
    "ESP (/boot/efi)",
)
ESP_FULL_TEXT = (
    "boot-entries of v2 failed: ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB"
    " (resource: ESP (/boot/efi))"
)
NO_FETCH = StepFailure(Step.FETCH, "v2", "channel unreachable: connection refused")
RETRY = replace(SPEC, on_step_failure=OnStepFailure.RETRY)


def failing(base: NodeFacts, failure: StepFailure = ESP_FULL, **kw: object) -> NodeFacts:
    """``base`` with a recorded step failure (and ``retry_at``, ``step_attempts``)."""
    return replace(base, failure=failure, **kw)  # type: ignore[arg-type]


def step_ev(message: str) -> NewEvent:
    return ev("step-failure", message, "a")


TIMEOUT = StepFailure(
    Step.REBOOT,
    "v2",
    "did not come back within the reboot timeout (900 s) after its reboot grant",
    by=By.CONTROLLER,
)
TIMEOUT_TEXT = (
    "reboot of v2 failed: did not come back within the reboot timeout (900 s) after its "
    "reboot grant"
)
AGENT_REBOOT = StepFailure(Step.REBOOT, "v2", "reboot refused")  # the node's own
# Failed by its reboot timeout while granted v2 (stored so at THEN): down.
TIMED_OUT = failing(node("a", FAILED, "v1", "v2", healthy=False), TIMEOUT)
# The last restart an agent recorded: a soft-reboot into v2, a full reboot into v1.
SOFT = Restart(RestartKind.SOFT, "same kernel and arguments", "v2", "2026-12-07T07:00:00+00:00")
FULL = Restart(RestartKind.FULL, "policy full", "v1", "2026-12-06T07:00:00+00:00")


TABLE = [
    # registration ---------------------------------------------------------
    Case(
        "a new node starts idle on the version it runs",
        (),
        reg("a", "v1"),
        (node("a", IDLE, since=NOW),),
        (ev("register", "version v1", "a", None),),
    ),
    Case(
        "a re-registration keeps the phase and facts (a grant too), takes new labels",
        (GRANTED,),
        reg("a", "v9", healthy=False, role="web", zone="z"),
        (replace(GRANTED, labels={"role": "web", "zone": "z"}),),
    ),
    # an agent's report ----------------------------------------------------
    Case(
        "granted, not rebooted yet: keeps its grant",
        (GRANTED,),
        rep("a", "v1", "v2"),
        (GRANTED,),
    ),
    Case(
        "granted and landed healthy on the granted version: idle from now",
        (GRANTED,),
        rep("a", "v2"),
        (node("a", IDLE, "v2", since=NOW),),
        (ev("phase", "rebooting -> idle on v2", "a", None),),
    ),
    Case(
        "landed with the kind of restart it used: recorded on the node",
        (GRANTED,),
        rep("a", "v2", restart=SOFT),
        (replace(node("a", IDLE, "v2", since=NOW), restart=SOFT),),
        (ev("phase", "rebooting -> idle on v2", "a", None),),
    ),
    Case(
        "a newer restart replaces the one recorded; nothing else moves",
        (replace(node("a", IDLE, "v1"), restart=FULL),),
        rep("a", "v1", restart=SOFT),
        (replace(node("a", IDLE, "v1"), restart=SOFT),),
    ),
    Case(
        "a report without a restart (an agent from before it) keeps the one recorded",
        (replace(node("a", FAILED, "v1"), restart=FULL),),
        rep("a", "v1", failed=True),
        (replace(node("a", FAILED, "v1"), restart=FULL),),
    ),
    Case(
        "granted, back on the granted version but its trial runs: keeps the grant",
        (GRANTED,),
        rep("a", "v2", healthy=False),
        (replace(GRANTED, healthy=False),),
    ),
    Case(
        "granted, unhealthy outside a trial: failed",
        (GRANTED,),
        rep("a", "v2", healthy=False, failed=True),
        (node("a", FAILED, "v2", healthy=False, since=NOW),),
        (ev("phase", "rebooting -> failed on v2", "a", None),),
    ),
    Case(
        "granted, its agent rolled back by itself: failed",
        (GRANTED,),
        rep("a", "v1", failed=True),
        (node("a", FAILED, "v1", since=NOW),),
        (ev("phase", "rebooting -> failed on v1", "a", None),),
    ),
    Case(
        "told to stage, not staged yet: stays staging",
        (node("a", STAGING),),
        rep("a", "v1"),
        (node("a", STAGING),),
    ),
    Case(
        "staged the desired version: staged",
        (node("a", STAGING),),
        rep("a", "v1", "v2"),
        (node("a", STAGED, "v1", "v2", since=NOW),),
        (ev("phase", "staging -> staged on v1", "a", None),),
    ),
    Case(
        "a staged node that lost its staged version: idle",
        (node("a", STAGED, "v1", "v2"),),
        rep("a", "v1"),
        (node("a", IDLE, since=NOW),),
        (ev("phase", "staged -> idle on v1", "a", None),),
    ),
    Case(
        "failed stays failed until a resume; its facts are kept up to date",
        (node("a", FAILED, "v2", healthy=False),),
        rep("a", "v1", "v2"),
        (node("a", FAILED, "v1", "v2"),),
    ),
    Case(
        "an idle node with nothing new: unchanged",
        (node("a", IDLE),),
        rep("a", "v1"),
        (node("a", IDLE),),
    ),
    Case(
        "running another version (switched by hand): the transition time moves",
        (node("a", IDLE),),
        rep("a", "v2"),
        (node("a", IDLE, "v2", since=NOW),),
    ),
    Case(
        "no pool wants anything of it: a staged version makes it nothing but idle",
        (node("a", IDLE),),
        rep("a", "v1", "v2", desired=None),
        (node("a", IDLE, "v1", "v2"),),
    ),
    Case(
        "health is a fact: reported, stored, no phase change",
        (node("a", IDLE),),
        rep("a", "v1", healthy=False),
        (node("a", IDLE, healthy=False),),
    ),
    # a step failure in an agent's report ------------------------------------
    Case(
        "a step failure while staging fails the node: an event of its pool",
        (node("a", STAGING),),
        rep("a", "v1", failure=NO_FETCH),
        (failing(node("a", FAILED, since=NOW), NO_FETCH, step_attempts=1),),
        (
            ev("phase", "staging -> failed on v1", "a", None),
            step_ev("fetch of v2 failed: channel unreachable: connection refused; node failed"),
        ),
    ),
    Case(
        "a failed boot-entry sync before the granted reboot releases the grant, fails it",
        (GRANTED,),
        rep("a", "v1", failure=ESP_FULL),
        (failing(node("a", FAILED, since=NOW), step_attempts=1),),
        (
            ev("phase", "rebooting -> failed on v1", "a", None),
            step_ev(f"{ESP_FULL_TEXT}; node failed"),
        ),
    ),
    Case(
        "retry: a staged node that failed a step is idle again, retried in 30 s",
        (node("a", STAGED, "v1", "v2"),),
        rep("a", "v1", failure=ESP_FULL),
        (failing(node("a", IDLE, since=NOW), retry_at=NOW + 30, step_attempts=1),),
        (
            ev("phase", "staged -> idle on v1", "a", None),
            step_ev(f"{ESP_FULL_TEXT}; retry 1 of 3 in 30s"),
        ),
        spec=RETRY,
    ),
    Case(
        "retry: the backoff doubles per attempt at the same version",
        (failing(node("a", STAGING), step_attempts=2),),
        rep("a", "v1", failure=ESP_FULL),
        (failing(node("a", IDLE, since=NOW), retry_at=NOW + 120, step_attempts=3),),
        (
            ev("phase", "staging -> idle on v1", "a", None),
            step_ev(f"{ESP_FULL_TEXT}; retry 3 of 3 in 120s"),
        ),
        spec=RETRY,
    ),
    Case(
        "retry: failed once it failed more than max_step_retries times",
        (failing(node("a", STAGING), step_attempts=3),),
        rep("a", "v1", failure=ESP_FULL),
        (failing(node("a", FAILED, since=NOW), step_attempts=4),),
        (
            ev("phase", "staging -> failed on v1", "a", None),
            step_ev(f"{ESP_FULL_TEXT}; node failed after 3 retries"),
        ),
        spec=RETRY,
    ),
    Case(
        "retry: attempts count per version (a new target starts again at 1)",
        (failing(node("a", STAGING), replace(ESP_FULL, version="v1.5"), step_attempts=3),),
        rep("a", "v1", failure=ESP_FULL),
        (failing(node("a", IDLE, since=NOW), retry_at=NOW + 30, step_attempts=1),),
        (
            ev("phase", "staging -> idle on v1", "a", None),
            step_ev(f"{ESP_FULL_TEXT}; retry 1 of 3 in 30s"),
        ),
        spec=RETRY,
    ),
    Case(
        "the same failure again while it waits for its retry (a resent report): nothing",
        (failing(node("a", IDLE), retry_at=NOW + 30, step_attempts=1),),
        rep("a", "v1", failure=ESP_FULL),
        (failing(node("a", IDLE), retry_at=NOW + 30, step_attempts=1),),
        spec=RETRY,
    ),
    Case(
        "a failure of another version than the one it moves to is only recorded",
        (node("a", STAGING),),
        rep("a", "v1", failure=replace(NO_FETCH, version="v3")),
        (failing(node("a", STAGING), replace(NO_FETCH, version="v3")),),
        (
            step_ev(
                "fetch of v3 failed: channel unreachable: connection refused; "
                "recorded only: not the version it moves to"
            ),
        ),
    ),
    Case(
        "a failed node stays failed; a step failure changes nothing more",
        (failing(node("a", FAILED), step_attempts=1),),
        rep("a", "v1", failure=NO_FETCH),
        (failing(node("a", FAILED), step_attempts=1),),
    ),
    Case(
        "failed by its reboot timeout, back healthy on the granted version: idle, forgotten",
        (TIMED_OUT,),
        rep("a", "v2"),
        (node("a", IDLE, "v2", since=NOW),),
        (ev("phase", "failed -> idle on v2", "a", None),),
    ),
    Case(
        "failed by its reboot timeout, back on the granted version but unhealthy: stays failed",
        (TIMED_OUT,),
        rep("a", "v2", healthy=False),
        (failing(node("a", FAILED, "v2", healthy=False), TIMEOUT),),
    ),
    Case(
        "failed by its reboot timeout, back on the old version: stays failed, up again",
        (TIMED_OUT,),
        rep("a", "v1"),
        (failing(node("a", FAILED, "v1"), TIMEOUT),),
    ),
    Case(
        "failed by its reboot timeout, its agent says failed: stays failed",
        (TIMED_OUT,),
        rep("a", "v2", failed=True),
        (failing(node("a", FAILED, "v2"), TIMEOUT),),
    ),
    Case(
        "a reboot failure its agent reported is not a timeout: a healthy report keeps it failed",
        (failing(node("a", FAILED), AGENT_REBOOT, step_attempts=1),),
        rep("a", "v2"),
        (failing(node("a", FAILED, "v2"), AGENT_REBOOT, step_attempts=1),),
    ),
    Case(
        "nor is one in the timeout's very words: only the controller's own is (by=controller)",
        (failing(node("a", FAILED), replace(TIMEOUT, by=By.NODE), step_attempts=1),),
        rep("a", "v2"),
        (failing(node("a", FAILED, "v2"), replace(TIMEOUT, by=By.NODE), step_attempts=1),),
    ),
    Case(
        "landing healthy on the version it failed a step of forgets the failure",
        (failing(GRANTED, step_attempts=2),),
        rep("a", "v2"),
        (node("a", IDLE, "v2", since=NOW),),
        (ev("phase", "rebooting -> idle on v2", "a", None),),
    ),
    # a plan's decisions -----------------------------------------------------
    Case(
        "a stage order after a retry's backoff clears retry_at, keeps the failure",
        (failing(node("a", IDLE), retry_at=THEN, step_attempts=1),),
        Decided((act(STAGE, "a"),)),
        (failing(node("a", STAGING), step_attempts=1),),
        (ev("stage", "v2", "a"),),
        spec=RETRY,
    ),
    Case(
        "a stage order moves an idle node to staging (no new transition time)",
        (node("a", IDLE),),
        Decided((act(STAGE, "a"),)),
        (node("a", STAGING),),
        (ev("stage", "v2", "a"),),
    ),
    Case(
        "a stage order moves a staged node to staging",
        (node("a", STAGED, "v1", "v2"),),
        Decided((act(STAGE, "a"),)),
        (node("a", STAGING, "v1", "v2"),),
        (ev("stage", "v2", "a"),),
    ),
    Case(
        "a stage order leaves a granted node alone, and is still recorded",
        (GRANTED,),
        Decided((act(STAGE, "a"),)),
        (GRANTED,),
        (ev("stage", "v2", "a"),),
    ),
    Case(
        "a reboot grant is stored as rebooting into the granted version, from now",
        (node("a", STAGED, "v1", "v2"),),
        Decided((act(REBOOT, "a"),)),
        (node("a", REBOOTING, "v1", "v2", since=NOW),),
        (ev("reboot", "v2", "a"),),
    ),
    Case(
        "a reboot grant skips a node whose staging was undone since the plan's read",
        (node("a", IDLE),),
        Decided((act(REBOOT, "a"),)),
        (node("a", IDLE),),
        (ev("reboot", "v2", "a"),),
    ),
    Case(
        "a reboot grant skips a node staged on another version",
        (node("a", STAGED, "v1", "v3"),),
        Decided((act(REBOOT, "a"),)),
        (node("a", STAGED, "v1", "v3"),),
        (ev("reboot", "v2", "a"),),
    ),
    Case(
        "a reboot grant skips a node that is unhealthy now",
        (node("a", STAGED, "v1", "v2", healthy=False),),
        Decided((act(REBOOT, "a"),)),
        (node("a", STAGED, "v1", "v2", healthy=False),),
        (ev("reboot", "v2", "a"),),
    ),
    Case(
        "a reboot grant skips a node waiting for a step retry",
        (failing(node("a", IDLE, "v1", "v2"), retry_at=NOW + 30, step_attempts=1),),
        Decided((act(REBOOT, "a"),)),
        (failing(node("a", IDLE, "v1", "v2"), retry_at=NOW + 30, step_attempts=1),),
        (ev("reboot", "v2", "a"),),
        spec=RETRY,
    ),
    Case(
        "a reboot grant lands once a step retry's time has passed",
        (failing(node("a", STAGED, "v1", "v2"), retry_at=THEN, step_attempts=1),),
        Decided((act(REBOOT, "a"),)),
        (failing(node("a", REBOOTING, "v1", "v2", since=NOW), retry_at=THEN, step_attempts=1),),
        (ev("reboot", "v2", "a"),),
        spec=RETRY,
    ),
    Case(
        "a rollback grant skips a node that is unhealthy now",
        (node("a", IDLE, "v2", healthy=False),),
        Decided((act(ROLLBACK, "a", "v1"),)),
        (node("a", IDLE, "v2", healthy=False),),
        (ev("rollback", "v1", "a"),),
    ),
    Case(
        "a plan read before a pause writes none of its actions (its self-pause is recorded)",
        (node("a", IDLE), node("b", STAGED, "v1", "v2")),
        Decided((act(STAGE, "a"), act(REBOOT, "b")), pause_reason="failure budget"),
        (node("a", IDLE), node("b", STAGED, "v1", "v2")),
        (ev("pause", "failure budget"),),
        state=PoolState(pause_reason="operator"),
    ),
    Case(
        "a plan read before a new target writes no action for a version the pool left",
        (node("a", IDLE), node("b", STAGED, "v1", "v2")),
        Decided((act(STAGE, "a", "v0"), act(REBOOT, "b"), act(ROLLBACK, "a", "v1"))),
        (node("a", REBOOTING, "v1", "v1", since=NOW), node("b", REBOOTING, "v1", "v2", since=NOW)),
        (ev("reboot", "v2", "b"), ev("rollback", "v1", "a")),
    ),
    Case(
        "a plan read before a rollback-and-new-target writes nothing for the old target",
        (node("a", STAGED, "v1", "v2"),),
        Decided((act(REBOOT, "a"),)),
        (node("a", STAGED, "v1", "v2"),),
        spec=replace(SPEC, target_version="v3", previous_version="v1"),
    ),
    Case(
        "a reboot grant is never given twice (the first one's time stays)",
        (replace(GRANTED, staged_version="v3"),),
        Decided((act(REBOOT, "a"),)),
        (replace(GRANTED, staged_version="v3"),),
        (ev("reboot", "v2", "a"),),
    ),
    Case(
        "a failed node is never granted a reboot",
        (node("a", FAILED),),
        Decided((act(REBOOT, "a"),)),
        (node("a", FAILED),),
        (ev("reboot", "v2", "a"),),
    ),
    Case(
        "a rollback grant: rebooting into the previous version",
        (node("a", IDLE, "v2"),),
        Decided((act(ROLLBACK, "a", "v1"),)),
        (node("a", REBOOTING, "v2", "v1", since=NOW),),
        (ev("rollback", "v1", "a"),),
    ),
    Case(
        "a decision about an unknown node changes nothing but is recorded",
        (node("a", IDLE),),
        Decided((act(REBOOT, "ghost"),)),
        (node("a", IDLE),),
        (ev("reboot", "v2", "ghost"),),
    ),
    Case(
        "a reboot timeout fails a node still rebooting: unhealthy, recorded, a pool event",
        (GRANTED,),
        Decided((), failures=(("a", TIMEOUT),)),
        (failing(node("a", FAILED, "v1", "v2", healthy=False, since=NOW), TIMEOUT),),
        (step_ev(f"{TIMEOUT_TEXT}; node failed"),),
    ),
    Case(
        "a reboot timeout leaves a node a report moved meanwhile alone, without an event",
        (node("a", IDLE, "v2"),),
        Decided((), failures=(("a", TIMEOUT),)),
        (node("a", IDLE, "v2"),),
    ),
    Case(
        "a reboot timeout does not fail a grant into another version",
        (replace(GRANTED, staged_version="v3"),),
        Decided((), failures=(("a", TIMEOUT), ("ghost", TIMEOUT))),
        (replace(GRANTED, staged_version="v3"),),
    ),
    Case(
        "a plan's reboot timeouts come first, then its actions, then its self-pause",
        (GRANTED, node("b", IDLE)),
        Decided((act(STAGE, "b"),), "failure budget", failures=(("a", TIMEOUT),)),
        (
            failing(node("a", FAILED, "v1", "v2", healthy=False, since=NOW), TIMEOUT),
            node("b", STAGING),
        ),
        (
            step_ev(f"{TIMEOUT_TEXT}; node failed"),
            ev("stage", "v2", "b"),
            ev("pause", "failure budget"),
        ),
        state_after=PoolState(pause_reason="failure budget"),
    ),
    Case(
        "one plan's decisions apply in order, its self-pause last",
        (node("a", IDLE), node("b", STAGED, "v1", "v2"), node("c", IDLE, "v2")),
        Decided((act(STAGE, "a"), act(REBOOT, "b")), pause_reason="failure budget"),
        (node("a", STAGING), node("b", REBOOTING, "v1", "v2", since=NOW), node("c", IDLE, "v2")),
        (ev("stage", "v2", "a"), ev("reboot", "v2", "b"), ev("pause", "failure budget")),
        state_after=PoolState(pause_reason="failure budget"),
    ),
    Case(
        "a self-pause does not replace an operator's pause (it is still recorded)",
        (),
        Decided((), pause_reason="failure budget"),
        (),
        (ev("pause", "failure budget"),),
        state=PoolState(pause_reason="operator"),
    ),
    # operator verbs ---------------------------------------------------------
    Case(
        "pause replaces any earlier reason; nodes keep going where they are",
        (GRANTED,),
        Verb("pause", "maintenance"),
        (GRANTED,),
        (ev("pause", "maintenance"),),
        state=PoolState(pause_reason="failure budget"),
        state_after=PoolState(pause_reason="maintenance"),
    ),
    Case(
        "resume clears the pause, releases the canary, retries the pool's failed nodes",
        (
            node("a", FAILED, "v1"),
            node("b", FAILED, "v1", labels={"role": "db"}),
            node("c", REBOOTING, "v1", "v2"),
        ),
        Verb("resume"),
        (
            node("a", IDLE, "v1", since=NOW),
            node("b", FAILED, "v1", labels={"role": "db"}),
            node("c", REBOOTING, "v1", "v2"),
        ),
        (ev("resume", "resumed by operator"),),
        state=PoolState(pause_reason="failure budget"),
        state_after=PoolState(pause_reason=None, canary_released=True),
    ),
    Case(
        "resume counts a failed node's step retries afresh; its last failure stays on record",
        (failing(node("a", FAILED), step_attempts=4),),
        Verb("resume"),
        (failing(node("a", IDLE, since=NOW)),),
        (ev("resume", "resumed by operator"),),
        spec=RETRY,
        state=PoolState(pause_reason="failure budget"),
        state_after=PoolState(pause_reason=None, canary_released=True),
    ),
    Case(
        "resume clears a pending step retry of every node the pool selects",
        (
            failing(node("a", IDLE), retry_at=NOW + 30, step_attempts=1),
            failing(node("b", IDLE, labels={"role": "db"}), retry_at=NOW + 30, step_attempts=1),
        ),
        Verb("resume"),
        (
            failing(node("a", IDLE), step_attempts=1),
            failing(node("b", IDLE, labels={"role": "db"}), retry_at=NOW + 30, step_attempts=1),
        ),
        (ev("resume", "resumed by operator"),),
        spec=RETRY,
        state=PoolState(pause_reason="operator"),
        state_after=PoolState(pause_reason=None, canary_released=True),
    ),
    Case(
        "rollback swaps target and previous, then resumes",
        (node("a", FAILED, "v2"),),
        Verb("rollback"),
        (node("a", IDLE, "v2", since=NOW),),
        (ev("rollback", "target back to v1"), ev("resume", "resumed by operator")),
        state=PoolState(pause_reason="failure budget"),
        spec_after=replace(SPEC, target_version="v1", previous_version="v2"),
        state_after=PoolState(pause_reason=None, canary_released=True),
    ),
    Case(
        "rollback without a previous version is refused, nothing changes",
        (node("a", FAILED, "v2"),),
        Verb("rollback"),
        (node("a", FAILED, "v2"),),
        spec=replace(SPEC, previous_version=None),
        raises="no previous version",
    ),
    Case(
        "a new target remembers the old one as previous; the pause stays",
        (node("a", IDLE),),
        Verb("apply", spec=replace(SPEC, target_version="v3", previous_version=None)),
        (node("a", IDLE),),
        (ev("apply", "target v3"),),
        state=PoolState(pause_reason="operator", canary_released=True),
        spec_after=replace(SPEC, target_version="v3", previous_version="v2"),
    ),
    Case(
        "the same target keeps the previous one",
        (),
        Verb("apply", spec=replace(SPEC, max_unavailable=Quantity(2), previous_version=None)),
        (),
        (ev("apply", "target v2"),),
        spec_after=replace(SPEC, max_unavailable=Quantity(2)),
    ),
    Case(
        "the pool's reboot policy is kept with its spec",
        (),
        Verb("apply", spec=replace(SPEC, reboot=RebootPolicy.FULL, previous_version=None)),
        (),
        (ev("apply", "target v2"),),
        spec_after=replace(SPEC, reboot=RebootPolicy.FULL),
    ),
    Case(
        "a previous version named by the spec wins",
        (),
        Verb("apply", spec=replace(SPEC, target_version="v3", previous_version="v0")),
        (),
        (ev("apply", "target v3"),),
        spec_after=replace(SPEC, target_version="v3", previous_version="v0"),
    ),
]


def apply(case: Case) -> Outcome:
    """The pure model of a store: the facts of ``case`` in dictionaries, moved by the rules."""
    nodes = {n.name: n for n in case.nodes}
    spec, state = case.spec, case.state
    events: tuple[NewEvent, ...] = ()
    happens = case.happens
    if isinstance(happens, Register):
        step = transitions.registered(
            nodes.get(happens.registration.name), happens.registration, NOW
        )
        nodes[step.after.name], events = step.after, step.events
    elif isinstance(happens, Reported):
        step = transitions.after_report(
            nodes[happens.name],
            happens.report,
            happens.desired,
            NOW,
            spec=pool_of(spec, happens),
        )
        nodes[step.after.name], events = step.after, step.events
    elif isinstance(happens, Decided):
        planned = transitions.after_plan("web", (spec, state), nodes, happens.plan(), NOW)
        nodes.update((n.name, n) for n in planned.nodes)
        state, events = planned.state or state, planned.events
    else:
        verb = _verb(happens, spec, state, list(nodes.values()))
        nodes.update((n.name, n) for n in verb.nodes)
        spec, state, events = verb.spec, verb.state, verb.events
    return Outcome(tuple(sorted(nodes.values(), key=lambda n: n.name)), spec, state, events)


def _verb(
    verb: Verb, spec: PoolSpec, state: PoolState, nodes: list[NodeFacts]
) -> transitions.PoolStep:
    if verb.kind == "pause":
        return transitions.paused(spec, state, verb.reason, NOW)
    if verb.kind == "resume":
        return transitions.resumed(spec, state, nodes, NOW)
    if verb.kind == "rollback":
        return transitions.rolled_back(spec, state, nodes, NOW)
    assert verb.kind == "apply" and verb.spec is not None
    return transitions.applied((spec, state), verb.spec, NOW)


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_transition_table(case: Case) -> None:
    if case.raises is not None:
        with pytest.raises(InputError, match=case.raises):
            apply(case)
        return
    assert apply(case) == expected(case)


def test_table_ids_are_unique() -> None:
    assert len({c.id for c in TABLE}) == len(TABLE)


@pytest.mark.parametrize(
    ("before", "report", "changed", "events"),
    [
        (GRANTED, Report("v1", "v2", True, False), False, 0),
        (GRANTED, Report("v1", "v2", True, False, restart=FULL), True, 0),  # written
        (replace(GRANTED, restart=FULL), Report("v1", "v2", True, False, restart=FULL), False, 0),
        (replace(GRANTED, restart=FULL), Report("v1", "v2", True, False), False, 0),
        (GRANTED, Report("v2", None, False, False), True, 0),
        (GRANTED, Report("v2", None, True, False), True, 1),
    ],
)
def test_a_report_says_whether_anything_changed(
    before: NodeFacts, report: Report, changed: bool, events: int
) -> None:
    """Stores write a report only when it changed something (no fsync for a poll)."""
    step = transitions.after_report(before, report, "v2", NOW)
    assert step.before == before
    assert (step.changed, len(step.events)) == (changed, events)


def test_a_plan_names_the_nodes_its_decisions_are_about() -> None:
    decided = Decided((act(STAGE, "a"),), failures=(("b", TIMEOUT),)).plan()
    assert decided.named() == {"a", "b"} and decided.decides
    assert Decided((), failures=(("b", TIMEOUT),)).plan().decides
    assert Decided((), "budget").plan().decides
    assert not Decided(()).plan().decides


def test_a_plan_names_only_the_nodes_it_moved() -> None:
    stored = {"a": node("a", STAGED, "v1", "v2"), "b": node("b", FAILED)}
    decided = Decided((act(REBOOT, "b"), act(STAGE, "a"), act(REBOOT, "a"))).plan()
    step = transitions.after_plan("web", None, stored, decided, NOW)
    assert step.nodes == (node("a", REBOOTING, "v1", "v2", since=NOW),)
    assert step.state is None  # no self-pause; a pool that is gone is not written
    gone = transitions.after_plan("web", None, {}, Decided((), "budget").plan(), NOW)
    assert (gone.state, gone.events) == (None, (ev("pause", "budget"),))


@pytest.mark.parametrize("version", ["v2", " 2.0  rc1 ", "2.0  rc1", "2.0 "])
def test_a_reboot_timeout_sticks_whatever_spaces_the_version_has(version: str) -> None:
    """The planner's timeout names the granted version as stored, so the store's
    rule recognises the grant it times out (versions may hold any printable ASCII)."""
    spec = replace(SPEC, target_version=version)
    granted = node("a", REBOOTING, "v1", version, since=0.0)
    later = spec.reboot_timeout_seconds + 1
    result = plan(spec, PoolState(), [granted], later)
    assert result.failures["a"].version == version
    step = transitions.after_plan("web", (spec, PoolState()), {"a": granted}, result, later)
    assert [(n.name, n.phase) for n in step.nodes] == [("a", FAILED)]


@pytest.mark.parametrize(
    ("facts", "desired", "told"),
    [
        (node("a", IDLE), "v2", Instruction("v2", stage=False, may_reboot=False)),
        (node("a", STAGING), "v2", Instruction("v2", stage=True, may_reboot=False)),
        (node("a", STAGED, "v1", "v2"), "v2", Instruction("v2", stage=True, may_reboot=False)),
        (node("a", STAGED, "v2"), "v2", Instruction("v2", stage=False, may_reboot=False)),
        # A grant keeps its version whatever the plan wants meanwhile.
        (GRANTED, "v3", Instruction("v2", stage=False, may_reboot=True)),
        (node("a", REBOOTING, "v1", None), "v2", Instruction("v2", stage=False, may_reboot=True)),
        (node("a", REBOOTING, "v2", "v2"), "v2", Instruction("v2", stage=False, may_reboot=False)),
        (node("a", FAILED), "v2", Instruction("v2", stage=False, may_reboot=False)),
    ],
)
def test_what_a_node_is_told(facts: NodeFacts, desired: str, told: Instruction) -> None:
    assert transitions.instruction(facts, desired) == told


def test_the_first_pool_by_name_owns_a_node() -> None:
    web = replace(SPEC, name="web")
    every = replace(SPEC, name="all", selector={})
    assert transitions.owner([web, every], WEB) == "all"
    assert transitions.owner([web], {"role": "db"}) is None
    assert transitions.owner([web], {"role": "web", "zone": "a"}) == "web"
    assert transitions.matches({}, {}) and not transitions.matches(WEB, {})

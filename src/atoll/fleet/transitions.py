"""The fleet's rules for moving nodes and pools between states, in one place. Pure.

The planner (:mod:`atoll.fleet.rollout`) decides *what* should happen to a pool;
this module decides what each fact or decision does to the stored state, once:

* **at registration** (:func:`registered`): a new node starts ``idle`` on the
  version it runs; a re-registration only updates its labels and keeps its phase
  (so a controller counts a grant across an agent's restart);
* **after an agent's report** (:func:`after_report`): staging, staged, landed
  on the granted version, failed; a ``failed`` node stays failed until resumed,
  but for one the controller failed by its reboot timeout that reports back
  healthy on the granted version (the timeout was a guess, the report a fact);
  a step failure for the version the node is moving to fails it or, with the
  pool's ``on_step_failure = "retry"``, sends it back to ``idle`` with a
  ``retry_at`` (exponential backoff, :func:`atoll.fleet.rollout.retry_backoff`)
  until it has failed ``max_step_retries`` times more; either way the failure
  is recorded on the node and is an event of its pool;
* **after a decision of a plan** (:func:`after_action`, :func:`after_plan`): a
  stage order moves only an ``idle``/``staged`` node to ``staging``; a reboot
  or rollback grant moves a healthy node that is neither ``rebooting`` nor
  ``failed`` (for a reboot: staged on the granted version, no retry pending)
  to ``rebooting`` with the granted version, *as it is persisted*, so the grant
  counts against ``maxUnavailable`` (:func:`atoll.fleet.rollout.is_unavailable`)
  from the moment it exists, for every controller that reads the store; a node
  past its reboot timeout (:func:`after_timeout`) is stored ``failed`` with the
  timeout as its step failure, unhealthy (nothing says it is up: it keeps its
  slot); a plan's actions are dropped when the stored pool is paused or left
  their version; a self-pause is recorded only on an unpaused pool;
* **operator verbs** on a pool (:func:`applied`, :func:`paused`,
  :func:`resumed`, :func:`rolled_back`): a new target remembers the old one as
  ``previous_version``; a resume clears the pause, releases the canary gate,
  retries the pool's failed nodes and clears their pending ``retry_at``; a
  rollback swaps target and previous and resumes;
* **the events** each of these emits, in order (what ``GET /v1/events`` shows).

Facts come in as frozen dataclasses and go out as frozen dataclasses; time is a
value (``now``) the caller passes. What an agent says comes in as the protocol's
own messages (:class:`atoll.wire.fleet.Registration`,
:class:`atoll.wire.fleet.Report`), as the controller parsed them; what the
controller adds to a report (the version the node's pool wants) comes beside it.
The stores (:mod:`atoll.fleet.sqlite_store`, :mod:`atoll.fleet.etcd_store`)
read the facts a step needs, call one function here and write its result in
the same transaction; the Kubernetes operator (:mod:`atoll.fleet.operator`)
applies the same functions to its annotations (an agent's report, as it wrote
them there).
What a node is told (:func:`instruction`) and which pool owns it
(:func:`owner`) are decided here too, for the controller and the operator alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from atoll.errors import InputError
from atoll.fleet.rollout import (
    Action,
    ActionKind,
    NodeFacts,
    OnStepFailure,
    Phase,
    Plan,
    PoolSpec,
    PoolState,
    describe_failure,
    is_reboot_timeout,
    retry_backoff,
)
from atoll.wire.fleet import Registration, Report, StepFailure


@dataclass(frozen=True)
class NewEvent:
    """An event a step emits; the store gives it an id when it appends it."""

    at: float
    pool: str | None
    node: str | None
    kind: str
    message: str


@dataclass(frozen=True)
class NodeStep:
    """One node before and after a transition, and the events it emits."""

    before: NodeFacts | None
    after: NodeFacts
    events: tuple[NewEvent, ...] = ()

    @property
    def changed(self) -> bool:
        return self.after != self.before


@dataclass(frozen=True)
class PlanStep:
    """What persisting one plan changes: the nodes that moved (in the order the plan
    first moved them), the pool's new state (``None``: unchanged) and the events."""

    nodes: tuple[NodeFacts, ...]
    state: PoolState | None
    events: tuple[NewEvent, ...]


@dataclass(frozen=True)
class PoolStep:
    """A pool after an operator verb, the nodes it moved and the events it emits."""

    spec: PoolSpec
    state: PoolState
    nodes: tuple[NodeFacts, ...]
    events: tuple[NewEvent, ...]


@dataclass(frozen=True)
class Instruction:
    """What a node's agent is told (``GET /v1/nodes/NAME/desired``, the operator's
    annotations): the version it should run, whether to stage it, whether it may
    reboot into it now."""

    version: str
    stage: bool
    may_reboot: bool


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A pool's selector selects a node when every key has the same value in its labels."""
    return all(labels.get(k) == v for k, v in selector.items())


def owner(specs: Iterable[PoolSpec], labels: Mapping[str, str]) -> str | None:
    """The pool that owns a node: the first pool, by name, whose selector matches."""
    for spec in sorted(specs, key=lambda s: s.name):
        if matches(spec.selector, labels):
            return spec.name
    return None


# nodes -------------------------------------------------------------------


def registered(old: NodeFacts | None, registration: Registration, now: float) -> NodeStep:
    """A node after its agent registered: new nodes start ``idle``; a known node keeps
    its facts and phase (a grant survives an agent's restart) and takes the new labels."""
    r = registration
    if old is None:
        node = NodeFacts(r.name, dict(r.labels), r.version, None, r.healthy, Phase.IDLE, now)
        return NodeStep(
            None, node, (NewEvent(now, None, r.name, "register", f"version {r.version}"),)
        )
    return NodeStep(old, replace(old, labels=dict(r.labels)))


def _reported_phase(old: NodeFacts, report: Report, desired: str | None) -> Phase:
    """The phase of a node neither failed nor rebooting after its report."""
    if desired is not None and report.version == desired:
        return Phase.IDLE
    if desired is not None and report.staged == desired:
        return Phase.STAGED
    if old.phase is Phase.STAGING:
        return Phase.STAGING  # told to stage: stays staging until it has
    return Phase.IDLE


def _after_report(old: NodeFacts, r: Report, desired: str | None, now: float) -> NodeFacts:
    if old.phase is Phase.FAILED:
        if _back_after_timeout(old, r):
            return _landed(_moved(old, r, Phase.IDLE, now))
        return replace(old, current_version=r.version, staged_version=r.staged, healthy=r.healthy)
    if r.failed:
        return _moved(old, r, Phase.FAILED, now)
    if old.phase is Phase.REBOOTING:
        if r.version == old.staged_version and r.healthy:
            return _landed(_moved(old, r, Phase.IDLE, now, healthy=True))
        # Not rebooted yet, or back but still in its trial: keep the grant (and
        # its version, and the time it was granted: the reboot timeout) as persisted.
        return replace(old, healthy=r.healthy)
    phase = _reported_phase(old, r, desired)
    moved = phase is not old.phase or r.version != old.current_version
    new = replace(
        old,
        current_version=r.version,
        staged_version=r.staged,
        healthy=r.healthy,
        phase=phase,
        last_transition=now if moved else old.last_transition,
    )
    return _landed(new)


def _moved(
    old: NodeFacts, r: Report, phase: Phase, now: float, *, healthy: bool | None = None
) -> NodeFacts:
    """The node in a new ``phase`` from ``now`` with the report's facts."""
    return replace(
        old,
        current_version=r.version,
        staged_version=r.staged,
        healthy=r.healthy if healthy is None else healthy,
        phase=phase,
        last_transition=now,
    )


def _back_after_timeout(old: NodeFacts, r: Report) -> bool:
    """A node the controller failed by its reboot timeout reports healthy on the
    version it was granted: it did come back, only late."""
    f = old.failure
    return (
        f is not None
        and is_reboot_timeout(f)
        and r.version == f.version
        and r.healthy
        and not r.failed
        and r.failure is None
    )


def _landed(node: NodeFacts) -> NodeFacts:
    """An idle node running the version it failed a step of, healthy, forgets the failure."""
    f = node.failure
    if f is None or node.phase is not Phase.IDLE or not node.healthy:
        return node
    if node.current_version != f.version:
        return node
    return replace(node, failure=None, retry_at=None, step_attempts=0)


def _moving_to(old: NodeFacts, desired: str | None) -> str | None:
    """The version a node is being moved to: the granted one while rebooting, else the
    pool's, and only while it was told to stage or granted a reboot."""
    if old.phase is Phase.REBOOTING:
        return old.staged_version or desired
    if old.phase in (Phase.STAGING, Phase.STAGED):
        return desired
    return None


def _after_failure(
    old: NodeFacts, r: Report, failure: StepFailure, spec: PoolSpec | None, now: float
) -> tuple[NodeFacts, str]:
    """The node after a step failure for the version it is moving to, and what was decided."""
    same = old.failure is not None and old.failure.version == failure.version
    attempts = old.step_attempts + 1 if same else 1
    retry = spec is not None and spec.on_step_failure is OnStepFailure.RETRY
    limit = spec.max_step_retries if spec is not None else 0
    failed = replace(_moved(old, r, Phase.FAILED, now), failure=failure, retry_at=None)
    if not retry:
        return replace(failed, step_attempts=attempts), "node failed"
    if attempts > limit:
        done = replace(failed, step_attempts=attempts)
        return done, f"node failed after {limit} retr{'y' if limit == 1 else 'ies'}"
    retry_at = now + retry_backoff(attempts)
    again = replace(failed, phase=Phase.IDLE, retry_at=retry_at, step_attempts=attempts)
    return again, f"retry {attempts} of {limit} in {retry_at - now:g}s"


def after_report(
    old: NodeFacts,
    report: Report,
    desired: str | None,
    now: float,
    *,
    spec: PoolSpec | None = None,
) -> NodeStep:
    """The node after its agent reported, a ``phase`` event if its phase changed and a
    ``step-failure`` event of its pool for a step failure it had not recorded yet.

    ``desired`` is the version the controller wants for the node (``None``: no
    pool selects it); ``spec`` is its pool (``None``: none; a step failure then
    fails the node).

    * ``failed`` (the agent's verdict: its health trial failed and it rolled
      back, or it is unhealthy outside a trial) -> ``failed``; a failed node
      stays failed until the pool is resumed (its versions and health are kept
      up to date), except one failed by its reboot timeout that reports
      healthy on the granted version: ``idle`` from now, the failure forgotten;
    * a step failure (``report.failure``) for the version the node is moving
      to (staging, staged, or granted a reboot into): ``on_step_failure =
      "fail"`` -> ``failed``; ``"retry"`` -> ``idle`` with ``retry_at = now +
      backoff(attempt)`` (attempts counted per node and version), ``failed``
      once it failed more than ``max_step_retries`` times. The failure is
      stored on the node either way and emits a ``step-failure`` event of the
      pool. A failure for another version (stale, or a node not moving) is
      only recorded;
    * ``rebooting`` and now running the granted version, healthy -> ``idle``
      (``last_transition`` = now: minReadySeconds counts from here);
    * otherwise ``rebooting`` stays: the reboot has not happened yet, or the
      node is back on the granted version but not healthy *yet* (its agent's
      trial is still running; the agent says ``failed`` when the trial fails,
      and the pool's reboot timeout bounds a node that never says either);
    * on the desired version -> ``idle``; ``staged`` equal to the desired
      version -> ``staged``; a node told to stage stays ``staging`` until then.
      An idle node healthy on the version it failed a step of forgets the failure.

    ``last_transition`` moves with the phase or the running version only. The
    report's ``restart`` (the node's last restart: soft or full, and why) is kept
    on the node; a report without one (an agent from before it) keeps what is known.
    """
    failure = report.failure
    decided: str | None = None
    if (
        failure is not None
        and old.phase is not Phase.FAILED
        and not report.failed
        and failure.version == _moving_to(old, desired)
    ):
        new, decided = _after_failure(old, report, failure, spec, now)
    else:
        new = _after_report(old, report, desired, now)
        if failure is not None and failure != old.failure and old.phase is not Phase.FAILED:
            new, decided = (
                replace(new, failure=failure),
                "recorded only: not the version it moves to",
            )
    if report.restart is not None:
        new = replace(new, restart=report.restart)
    events: list[NewEvent] = []
    if new.phase is not old.phase:
        message = f"{old.phase} -> {new.phase} on {report.version}"
        events.append(NewEvent(now, None, old.name, "phase", message))
    if failure is not None and decided is not None:
        pool = None if spec is None else spec.name
        message = f"{describe_failure(failure)}; {decided}"
        events.append(NewEvent(now, pool, old.name, "step-failure", message))
    return NodeStep(old, new, tuple(events))


def after_action(node: NodeFacts, action: Action, now: float) -> NodeFacts:
    """A node once one decision of a plan about it is persisted.

    A stage order moves ``idle``/``staged`` to ``staging`` (staging costs no
    availability); a reboot or rollback grant moves a healthy node neither
    ``rebooting`` nor ``failed`` to ``rebooting`` with the granted version as its
    staged one, from ``now`` (the reboot timeout counts from here); a reboot
    grant also needs the node staged on the granted version and no pending
    ``retry_at`` (a report since the plan's read may have undone the staging).
    Anything else leaves the node as it is: a grant is never given twice, and a
    failed node is never retried but by a resume.
    """
    if action.kind is ActionKind.STAGE:
        if node.phase in (Phase.IDLE, Phase.STAGED):
            return replace(node, phase=Phase.STAGING, retry_at=None)
        return node
    if not _grantable(node, action, now):
        return node
    return replace(node, phase=Phase.REBOOTING, staged_version=action.version, last_transition=now)


def _grantable(node: NodeFacts, action: Action, now: float) -> bool:
    """A grant lands only on a node that can still use it: neither rebooting nor
    failed, healthy, and for a reboot staged on the granted version with no retry
    pending (a report may have undone the staging since the plan read the node)."""
    if node.phase in (Phase.REBOOTING, Phase.FAILED) or not node.healthy:
        return False
    if action.kind is ActionKind.ROLLBACK:
        return True
    waiting = node.retry_at is not None and now < node.retry_at
    return node.staged_version == action.version and not waiting


def after_timeout(node: NodeFacts, failure: StepFailure, now: float) -> NodeFacts:
    """A node the plan found past its reboot timeout, once that is persisted.

    A node still ``rebooting`` into the failure's version is ``failed`` from
    ``now`` with ``failure`` recorded (no retry pending) and unhealthy: no
    report says it is up, so it keeps counting as unavailable until one does.
    Anything else (a report landed it or failed it meanwhile) is left alone.
    """
    granted = node.staged_version or failure.version
    if node.phase is not Phase.REBOOTING or granted != failure.version:
        return node
    return replace(
        node, phase=Phase.FAILED, healthy=False, failure=failure, retry_at=None, last_transition=now
    )


def _still_wanted(stored: tuple[PoolSpec, PoolState] | None, action: Action) -> bool:
    """An action of a plan still fits the pool as it is stored now: not paused since
    the plan read it, and for the pool's target or previous version (a plan read
    before a pause, a rollback or a new target is not written after it)."""
    if stored is None:
        return True
    spec, state = stored
    if state.pause_reason is not None:
        return False
    return action.version in (spec.target_version, spec.previous_version)


def after_plan(
    pool: str,
    stored: tuple[PoolSpec, PoolState] | None,
    nodes: Mapping[str, NodeFacts],
    plan: Plan,
    now: float,
) -> PlanStep:
    """Persisting ``plan`` for ``pool``: its failures (reboot timeouts), then its
    actions, applied in order to the stored ``nodes`` (those the plan names;
    unknown ones are skipped) and its self-pause to the pool's state; ``stored``
    is the pool's spec and state as stored now (``None``: the pool is gone).

    Actions are dropped (no change, no event) when the stored pool is paused or
    an action's version is neither its target nor its previous version: the plan
    was read before a pause, a rollback or a new target. Every other action and
    the self-pause emit an event, as the plan made them; a failure emits a
    ``step-failure`` event of the pool when it failed the node.
    """
    state = None if stored is None else stored[1]
    current = dict(nodes)
    moved: dict[str, NodeFacts] = {}
    events: list[NewEvent] = []
    for name, failure in plan.failures.items():
        node = current.get(name)
        if node is None:
            continue
        new = after_timeout(node, failure, now)
        if new != node:
            current[name] = moved[name] = new
            message = f"{describe_failure(failure)}; node failed"
            events.append(NewEvent(now, pool, name, "step-failure", message))
    for action in plan.actions:
        if not _still_wanted(stored, action):
            continue
        node = current.get(action.node)
        if node is not None:
            new = after_action(node, action, now)
            if new != node:
                current[action.node] = moved[action.node] = new
        events.append(NewEvent(now, pool, action.node, action.kind.value, action.version))
    new_state = None
    if plan.pause_reason is not None:
        if state is not None and state.pause_reason is None:
            new_state = replace(state, pause_reason=plan.pause_reason)
        events.append(NewEvent(now, pool, None, "pause", plan.pause_reason))
    return PlanStep(tuple(moved.values()), new_state, tuple(events))


def instruction(node: NodeFacts, desired: str) -> Instruction:
    """What the node's agent is told, given the version its pool's plan wants.

    A node granted a reboot keeps the granted version (its staged one) until it
    leaves ``rebooting``, whatever the plan wants meanwhile; it stages when told
    to and not on that version yet, and may reboot only while granted.
    """
    rebooting = node.phase is Phase.REBOOTING
    version = (node.staged_version or desired) if rebooting else desired
    return Instruction(
        version=version,
        stage=node.phase in (Phase.STAGING, Phase.STAGED) and node.current_version != version,
        may_reboot=rebooting and node.current_version != version,
    )


# pools -------------------------------------------------------------------


def applied(old: tuple[PoolSpec, PoolState] | None, spec: PoolSpec, now: float) -> PoolStep:
    """A pool declared (or declared again): a new target remembers the old target as
    ``previous_version`` unless the spec names one; the same target keeps the old
    previous one. The pool's state (pause, canary) is kept."""
    new, state = spec, PoolState()
    if old is not None:
        state = old[1]
        if spec.previous_version is None:
            before = old[0]
            previous = (
                before.target_version
                if before.target_version != spec.target_version
                else before.previous_version
            )
            new = replace(spec, previous_version=previous)
    event = NewEvent(now, spec.name, None, "apply", f"target {new.target_version}")
    return PoolStep(new, state, (), (event,))


def paused(spec: PoolSpec, state: PoolState, reason: str, now: float) -> PoolStep:
    """An operator's pause (replaces any earlier reason)."""
    event = NewEvent(now, spec.name, None, "pause", reason)
    return PoolStep(spec, replace(state, pause_reason=reason), (), (event,))


def resumed(spec: PoolSpec, state: PoolState, nodes: Iterable[NodeFacts], now: float) -> PoolStep:
    """Clear the pause, release the canary gate and retry the failed nodes the pool's
    selector matches (``idle`` from ``now``, with their step retries counted afresh;
    the last failure stays on record); every node it matches loses its pending
    ``retry_at``."""
    retried = tuple(
        _retried(n, now)
        for n in nodes
        if matches(spec.selector, n.labels) and (n.phase is Phase.FAILED or n.retry_at is not None)
    )
    event = NewEvent(now, spec.name, None, "resume", "resumed by operator")
    new_state = replace(state, pause_reason=None, canary_released=True)
    return PoolStep(spec, new_state, retried, (event,))


def _retried(node: NodeFacts, now: float) -> NodeFacts:
    """A node after a resume: a failed one is ``idle`` from ``now`` with its step
    retries counted afresh; any other keeps its phase; none waits for a retry."""
    if node.phase is not Phase.FAILED:
        return replace(node, retry_at=None)
    return replace(node, phase=Phase.IDLE, last_transition=now, retry_at=None, step_attempts=0)


def rolled_back(
    spec: PoolSpec, state: PoolState, nodes: Iterable[NodeFacts], now: float
) -> PoolStep:
    """Swap target and previous version, then resume so nodes move back.

    Raises :class:`InputError` when the pool has no previous version."""
    if spec.previous_version is None:
        raise InputError(f"pool {spec.name}: no previous version to roll back to")
    back = replace(spec, target_version=spec.previous_version, previous_version=spec.target_version)
    event = NewEvent(now, spec.name, None, "rollback", f"target back to {back.target_version}")
    resume = resumed(back, state, nodes, now)
    return replace(resume, events=(event, *resume.events))

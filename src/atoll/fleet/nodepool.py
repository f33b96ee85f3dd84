"""NodePool objects and Node annotations: the operator's pure translation.

What :mod:`atoll.fleet.operator` reads from the API server becomes the
planner's facts here, and the planner's decisions become annotations, a pool
status and events here; nothing in this module talks to the API server, so
all of it is table-tested (tests/unit/test_fleet_operator.py). What the node's
agent writes on its Node and the operator's answer to it are the Node
protocol's, :mod:`atoll.wire.kubenode` (:class:`~atoll.wire.kubenode.NodeState`,
:class:`~atoll.wire.kubenode.Grant`), read and written only through it; the
``A_*`` annotations here are the operator's private bookkeeping, which the agent
never reads. The keys are documented in docs/kubernetes.md ("The Node
protocol"), the NodePool spec's keys and the status's fields in docs/fleet.md
("As a Kubernetes operator").
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from atoll.errors import InputError
from atoll.fleet import drain
from atoll.fleet.pool import spec_from_dict
from atoll.fleet.preflight import GROUP, VERSION
from atoll.fleet.rollout import (
    Action,
    ActionKind,
    NodeFacts,
    Phase,
    Plan,
    PoolSpec,
    PoolState,
    plan,
)
from atoll.fleet.transitions import (
    after_action,
    after_report,
    instruction,
    matches,
    resumed,
)
from atoll.wire.fleet import ProtocolError, RebootPolicy, StepFailure
from atoll.wire.kubenode import (
    Grant,
    NodeProtocolError,
    NodeState,
    compact_json,
    read_restart,
    resume_token,
)

KIND = "NodePool"

# The operator's private bookkeeping on a Node (the agent never reads it): its memory
# of the node between reconciles, the cordon and the drain. What the agent writes and
# the operator's answer to it (the grant) are atoll.wire.kubenode's.
A_PHASE = "atoll.dev/phase"
A_SINCE = "atoll.dev/phase-since"
A_GRANTED = "atoll.dev/granted-version"
A_CORDONED = "atoll.dev/cordoned"
A_DRAINED = "atoll.dev/drained"
A_DRAIN_SINCE = "atoll.dev/drain-since"
A_DRAIN_BLOCKED = "atoll.dev/drain-blocked"
A_SKIPPED = "atoll.dev/drain-skipped"
# onStepFailure: the step failure the operator recorded (the fleet protocol's JSON),
# the attempts at its version so far, and when the node may stage it again.
A_STEP_FAILURE = "atoll.dev/recorded-step-failure"
A_STEP_ATTEMPTS = "atoll.dev/step-attempts"
A_RETRY_AT = "atoll.dev/retry-at"
# On the NodePool: a new value resumes the pool.
A_RESUME = "atoll.dev/resume"

_STATUS_NODES_LIMIT = 50  # waiting nodes listed in the status; counts cover all

# The CR's strategy keys (camelCase) and pool.toml's (snake_case): one table.
STRATEGY_KEYS: Mapping[str, str] = {
    "partition": "partition",
    "maxUnavailable": "max_unavailable",
    "paused": "paused",
    "minReadySeconds": "min_ready_seconds",
    "canary": "canary",
    "priorityLabel": "priority_label",
    "scatterLabel": "scatter_label",
    "failureBudget": "failure_budget",
    "rebootTimeoutSeconds": "reboot_timeout_seconds",
    "canarySoakSeconds": "canary_soak_seconds",
    "failureWindowSeconds": "failure_window_seconds",
    "maintenanceWindow": "maintenance_window",
    "onStepFailure": "on_step_failure",
    "maxStepRetries": "max_step_retries",
    "reboot": "reboot",
}
WINDOW_KEYS: Mapping[str, str] = {
    "days": "days",
    "start": "start",
    "lengthMinutes": "length_minutes",
    "timezone": "timezone",
}


SPEC_KEYS = ("version", "previousVersion", "selector", "strategy", "drain")


def spec_from_object(name: str, raw: Mapping[str, Any]) -> PoolSpec:
    """A NodePool's ``spec`` -> :class:`PoolSpec`, through pool.toml's validator.

    Errors name the object and key, e.g. ``NodePool web: strategy.canary: ...``.
    """
    source = f"{KIND} {name}"
    unknown = set(raw) - set(SPEC_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown key(s) spec.{sorted(unknown)}")
    drain.policy_from_object(source, raw.get("drain"))  # validated with the rest
    pool: dict[str, Any] = {"name": name, "version": raw.get("version")}
    if raw.get("previousVersion") is not None:
        pool["previous_version"] = raw["previousVersion"]
    selector = raw.get("selector", {})
    if not isinstance(selector, dict) or set(selector) - {"matchLabels"}:
        raise InputError(f"{source}: spec.selector: only matchLabels is supported, got {selector}")
    pool["selector"] = selector.get("matchLabels", {})
    strategy_raw = raw.get("strategy", {})
    if not isinstance(strategy_raw, dict):
        raise InputError(f"{source}: spec.strategy must be an object, got {strategy_raw!r}")
    strategy: dict[str, Any] = {}
    for key, value in strategy_raw.items():
        if key not in STRATEGY_KEYS:
            raise InputError(f"{source}: unknown key spec.strategy.{key}")
        if key == "maintenanceWindow" and isinstance(value, dict):
            unknown_w = set(value) - set(WINDOW_KEYS)
            if unknown_w:
                raise InputError(
                    f"{source}: unknown key(s) spec.strategy.{key}.{sorted(unknown_w)}"
                )
            strategy[STRATEGY_KEYS[key]] = {WINDOW_KEYS[k]: v for k, v in value.items()}
            continue
        strategy[STRATEGY_KEYS[key]] = value
    return spec_from_dict({"pool": pool, "strategy": strategy}, source)


@dataclass(frozen=True)
class Pool:
    """One valid NodePool as a reconcile uses it."""

    name: str
    obj: Mapping[str, Any]
    spec: PoolSpec
    policy: drain.DrainPolicy

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Pool:
        """:class:`InputError` naming the object and key when its spec is invalid."""
        name, raw = str(obj["metadata"]["name"]), obj.get("spec") or {}
        spec = spec_from_object(name, raw)
        return cls(name, obj, spec, drain.policy_from_object(f"{KIND} {name}", raw.get("drain")))


@dataclass(frozen=True)
class PoolMemory:
    """What the operator keeps in a NodePool's status between reconciles."""

    failure_pause: str | None
    canary_released: bool
    resumed: str | None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> PoolMemory:
        failure_pause = status.get("failurePause")
        resumed = status.get("resumedAt")
        return cls(
            failure_pause if isinstance(failure_pause, str) and failure_pause else None,
            status.get("canaryReleased") is True,
            resumed if isinstance(resumed, str) else None,
        )


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    return dict(meta.get("annotations") or {})


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    return dict(meta.get("labels") or {})


def node_ready(node: Mapping[str, Any]) -> bool:
    """The Node's ``Ready`` condition is ``True`` (the kubelet's health gate)."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def facts_of(node: Mapping[str, Any], now: float, spec: PoolSpec | None = None) -> NodeFacts | None:
    """The planner's facts for one Node, after applying its agent's latest report.

    ``None`` when the node's agent has not reported yet (no current version):
    such a node is counted as ``unreported`` and never planned. A state or a
    grant on the Node that breaks the Node protocol raises
    :class:`atoll.wire.kubenode.NodeProtocolError` naming the node and the key.
    """
    state = NodeState.from_node(node)
    if state is None:
        return None
    grant = Grant.from_node(node)
    notes = annotations_of(node)
    name = str(node["metadata"]["name"])
    try:
        phase = Phase(notes.get(A_PHASE, Phase.IDLE.value))
    except ValueError:
        phase = Phase.IDLE  # an annotation edited by hand: start over from idle
    try:
        since = float(notes.get(A_SINCE, "0"))
    except ValueError:
        since = 0.0
    healthy = state.healthy and node_ready(node)
    # Before this report: the operator's memory (a grant remembers its version
    # as the staged one, exactly as the standalone store does).
    failure, attempts, retry_at = _step_memory(notes)
    remembered = NodeFacts(
        name,
        labels_of(node),
        state.version,
        notes.get(A_GRANTED) if phase is Phase.REBOOTING else state.staged,
        healthy,
        phase,
        since,
        failure=failure,
        retry_at=retry_at,
        step_attempts=attempts,
    )
    # Back on the granted version but not healthy yet (the kubelet is not Ready,
    # or the agent's trial runs): after_report keeps the node rebooting, bounded
    # by the reboot timeout, until it is healthy or its agent says it failed.
    report = replace(state.report(), healthy=healthy)
    if (report.failed or report.failure is not None) and not state.answers(grant):
        # Said before the agent saw the current grant (a resume retries failed
        # nodes; a retry after a step failure is a new grant): the old grant's
        # failure, not news. The agent answers the new grant within its next round.
        report = replace(report, failed=False, failure=None)
    desired = None if grant is None else grant.version
    # A step failure meets the pool's onStepFailure (spec), as in the standalone stores.
    return after_report(remembered, report, desired, now, spec=spec).after


def _step_memory(notes: Mapping[str, str]) -> tuple[StepFailure | None, int, float | None]:
    """The step failure the operator recorded on a node, its attempts and the retry's
    time (:func:`memory_of`); an annotation edited into something else is forgotten
    (the next failure starts the count again), as an unknown phase starts from idle."""
    try:
        failure = StepFailure.from_json(json.loads(notes.get(A_STEP_FAILURE) or "null"))
    except (ValueError, TypeError):
        failure = None
    try:
        attempts = max(0, int(notes.get(A_STEP_ATTEMPTS, "0")))
    except ValueError:
        attempts = 0
    try:
        retry_at: float | None = float(notes[A_RETRY_AT]) if A_RETRY_AT in notes else None
    except ValueError:
        retry_at = None
    return failure, attempts, retry_at


def after_plan(
    node: NodeFacts, kinds: Mapping[str, tuple[ActionKind, str]], now: float
) -> NodeFacts:
    """A node's facts once the plan's decision about it is persisted (pure).

    The stores' transition (:func:`atoll.fleet.transitions.after_action`): a stage
    order moves ``idle``/``staged`` to ``staging``; a reboot or rollback grant
    moves the node to ``rebooting`` with the granted version.
    """
    decision = kinds.get(node.name)
    if decision is None:
        return node
    kind, version = decision
    return after_action(node, Action(kind, node.name, version), now)


def release_first(nodes: Sequence[NodeFacts]) -> list[list[NodeFacts]]:
    """The nodes' patches in the groups they are written in, one group after the other
    (within a group, at once): every node out of ``rebooting`` (an uncordon among
    them), then every node in it (a new grant and its cordon), each group in its own
    order. A node finishing and the next one granted in the same reconcile are then
    never both cordoned, even for a moment, and an operator killed between the two
    patches leaves fewer nodes unavailable, not more."""
    released = [n for n in nodes if n.phase is not Phase.REBOOTING]
    held = [n for n in nodes if n.phase is Phase.REBOOTING]
    return [group for group in (released, held) if group]


def grant_of(
    node: NodeFacts,
    result: Plan,
    pool: str,
    resumed: str | None = None,
    *,
    reboot: RebootPolicy = RebootPolicy.FULL,
) -> Grant:
    """The operator's answer to the node's agent (the Node protocol's :class:`Grant`);
    ``resumed`` is the pool's last resume (``atoll.dev/resume``, :class:`PoolMemory`),
    ``reboot`` its ``spec.strategy.reboot`` (how the node restarts when it may)."""
    told = instruction(node, result.desired[node.name])
    why = result.waiting.get(node.name, "")
    token = "" if resumed is None else resume_token(resumed)
    return Grant(told.version, told.stage, told.may_reboot, pool, why, token, reboot)


def memory_of(node: NodeFacts) -> dict[str, str | None]:
    """The operator's memory of one node (private annotations): phase, since when,
    while ``rebooting`` the version the slot was granted for, and the last step
    failure with its attempts and retry time (``None``: removed)."""
    failure = node.failure
    notes: dict[str, str | None] = {
        A_PHASE: node.phase.value,
        A_SINCE: f"{node.last_transition:.3f}",
        A_STEP_FAILURE: None if failure is None else compact_json(failure.to_json()),
        A_STEP_ATTEMPTS: str(node.step_attempts) if node.step_attempts else None,
        A_RETRY_AT: None if node.retry_at is None else f"{node.retry_at:.3f}",
    }
    if node.phase is Phase.REBOOTING and node.staged_version:
        notes[A_GRANTED] = node.staged_version
    return notes


def owner(pools: Sequence[tuple[str, PoolSpec]], labels: Mapping[str, str]) -> str | None:
    """A node belongs to the first pool, by name, whose selector matches (as standalone)."""
    for name, spec in sorted(pools, key=lambda p: p[0]):
        if matches(spec.selector, labels):
            return name
    return None


# --- drains: what the Node's annotations and the pool's status say ------------------------


@dataclass(frozen=True)
class DrainReport:
    """The drains of one reconcile, for the pool's status."""

    blocked: Sequence[Mapping[str, Any]] = ()
    """Each pod blocking a drain: ``node``, ``pod``, ``budgets``, ``reason``."""
    skipped: Sequence[str] = ()
    """Nodes whose drain timed out with ``onTimeout: skip``, left out until a resume."""


def skipped_nodes(raw_nodes: Sequence[Mapping[str, Any]], version: str) -> list[str]:
    """Nodes skipped for the pool's current target (a new version plans them again)."""
    return [
        str(n["metadata"]["name"]) for n in raw_nodes if annotations_of(n).get(A_SKIPPED) == version
    ]


def released(old: Mapping[str, str]) -> dict[str, str | None]:
    """Out of ``rebooting``: the grant's and the drain's bookkeeping goes."""
    keys = (A_GRANTED, A_DRAINED, A_DRAIN_SINCE, A_DRAIN_BLOCKED)
    return {key: None for key in keys if key in old}


def cordon_change(old: Mapping[str, str], rebooting: bool) -> bool | None:
    """``True``: cordon (and mark) now; ``False``: uncordon (and unmark); ``None``: as is."""
    cordoned = old.get(A_CORDONED) == "true"
    if rebooting and not cordoned:
        return True
    if not rebooting and cordoned:
        return False
    return None


def skip_changes(
    node: NodeFacts,
    old: Mapping[str, str],
    target: str,
    reason: str,
    pool: str,
    *,
    reboot: RebootPolicy = RebootPolicy.FULL,
) -> tuple[Grant, dict[str, str | None]]:
    """A drain given up with ``onTimeout: skip``: the grant is given back (the node
    is told to stay on its version), the node uncordoned and unmarked, and left out
    of the pool (``atoll.dev/drain-skipped``) until the pool is resumed or
    retargeted. The new grant, and the changes of the private annotations."""
    why = f"{reason} (resume the pool to retry)"
    grant = Grant(node.current_version, False, False, pool, why, reboot=reboot)
    changes: dict[str, str | None] = {
        **released(old),
        **drain.unmark(old),
        A_CORDONED: None,
        A_SKIPPED: target,
        A_PHASE: Phase.IDLE.value,
    }
    return grant, changes


def seconds_or(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def pool_event(pool: Mapping[str, Any], reason: str, message: str, now: float) -> dict[str, Any]:
    """A Warning Event about a NodePool (``kubectl describe nodepool`` lists it)."""
    meta = pool.get("metadata") or {}
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # Events of cluster-scoped objects go to the default namespace (as kubectl looks).
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": "default"},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": meta.get("name"),
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1000],
        "type": "Warning",
        "source": {"component": "atoll-fleet-operator"},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def pool_phase(result: Plan, skipped: Sequence[str] = ()) -> str:
    """``Paused``, ``Progressing``, ``Completed``, or ``Incomplete``: done but for
    nodes skipped after a drain timeout (``status.skipped``)."""
    s = result.status
    if s.paused_reason is not None:
        return "Paused"
    if s.updating == 0 and s.pending == 0 and s.failed == 0:
        return "Incomplete" if skipped else "Completed"
    return "Progressing"


def _condition(
    kind: str, on: bool, reason: str, message: str, old: Sequence[Any], now: float
) -> dict[str, Any]:
    """A status condition; its ``lastTransitionTime`` is kept from ``old`` while its
    status stays, else it is ``now``."""
    status = "True" if on else "False"
    since = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for previous in old:
        if (
            isinstance(previous, dict)
            and previous.get("type") == kind
            and previous.get("status") == status
            and previous.get("lastTransitionTime")
        ):
            since = str(previous["lastTransitionTime"])
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }


def pool_status(
    result: Plan,
    memory: PoolMemory,
    nodes: Sequence[NodeFacts],
    unreported: Sequence[str],
    generation: object,
    old: Mapping[str, Any],
    drains: DrainReport = DrainReport(),
    *,
    now: float,
) -> dict[str, Any]:
    """The NodePool's ``status`` for one plan, made at ``now`` (a condition that
    changes gets it as its ``lastTransitionTime``)."""
    s = result.status
    phase = pool_phase(result, drains.skipped)
    old_conditions = old.get("conditions") or []
    blocked_nodes = sorted({str(b["node"]) for b in drains.blocked})
    conditions = [
        _condition(
            "DrainBlocked",
            bool(drains.blocked),
            "DrainBlocked" if drains.blocked else "NoneBlocked",
            "; ".join(f"node {b['node']}: {b['reason']}" for b in drains.blocked),
            old_conditions,
            now,
        ),
        _condition(
            "Paused",
            s.paused_reason is not None,
            "Paused" if s.paused_reason else "Running",
            s.paused_reason or "",
            old_conditions,
            now,
        ),
        _condition(
            "Complete",
            phase == "Completed",
            phase,
            f"{s.updated} of {s.total} node(s) on the target, {s.held} held by the partition"
            + (f", {len(drains.skipped)} skipped after a drain timeout" if drains.skipped else ""),
            old_conditions,
            now,
        ),
    ]
    waiting = [
        {
            "name": n.name,
            "current": n.current_version,
            "desired": result.desired[n.name],
            "phase": n.phase.value,
            "healthy": n.healthy,
            "reason": result.waiting[n.name],
        }
        for n in nodes
        if n.name in result.waiting
    ]
    status: dict[str, Any] = {
        **{_camel(k): v for k, v in asdict(s).items() if k not in _REASONS},
        "phase": phase,
        "pauseReason": s.paused_reason or "",
        "stalledReason": s.stalled_reason or "",
        "failurePause": memory.failure_pause or "",
        "canaryReleased": memory.canary_released,
        "unreported": len(unreported),
        "waiting": waiting[:_STATUS_NODES_LIMIT],
        "blockedDrains": list(drains.blocked)[:_STATUS_NODES_LIMIT],
        "drainBlockedNodes": blocked_nodes,
        "skipped": sorted(drains.skipped),
        "unreadable": [],
        "conditions": conditions,
        "observedGeneration": generation,
    }
    if memory.resumed is not None:
        status["resumedAt"] = memory.resumed
    return status


_REASONS = ("paused_reason", "stalled_reason")  # strings in the status ("" when none)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.capitalize() for part in rest)


@dataclass(frozen=True)
class Observed:
    """A pool's Nodes as the planner sees them (:func:`observe`)."""

    facts: list[NodeFacts]
    unreported: list[str]
    """Nodes whose agent has not said anything yet (never planned)."""
    unreadable: list[str]
    """One error per Node whose labels or annotations break the Node protocol."""


def observe(
    raw_nodes: Sequence[Mapping[str, Any]], now: float, spec: PoolSpec | None = None
) -> Observed:
    """The planner's facts of a pool's Nodes (``spec``: their pool's), those not
    reported yet, and the errors of those that cannot be read."""
    seen = Observed([], [], [])
    for raw in raw_nodes:
        try:
            node = facts_of(raw, now, spec)
        except NodeProtocolError as e:
            seen.unreadable.append(str(e))
            continue
        if node is None:
            seen.unreported.append(str(raw["metadata"]["name"]))
        else:
            seen.facts.append(node)
    return seen


def unreadable_status(errors: Sequence[str]) -> dict[str, Any]:
    """The pool's status while Nodes of it break the Node protocol: nothing is planned
    (a node whose state is unknown might hold a reboot slot, so granting another could
    exceed maxUnavailable) until every Node reads again."""
    shown = "; ".join(errors[:_STATUS_NODES_LIMIT])
    more = (
        f" (and {len(errors) - _STATUS_NODES_LIMIT} more)"
        if len(errors) > _STATUS_NODES_LIMIT
        else ""
    )
    return {
        "phase": "Blocked",
        "pauseReason": f"nothing planned while Nodes break the Node protocol: {shown}{more}",
        "unreadable": list(errors[:_STATUS_NODES_LIMIT]),
    }


def on_resume(
    spec: PoolSpec,
    memory: PoolMemory,
    resume: str | None,
    facts: list[NodeFacts],
    now: float,
) -> tuple[PoolMemory, list[NodeFacts]]:
    """A new ``atoll.dev/resume`` value (``fleet resume``): clear the self-pause,
    release the canary, retry failed nodes. Unchanged otherwise (pure)."""
    if resume is None or resume == memory.resumed:
        return memory, facts
    step = resumed(spec, PoolState(memory.failure_pause), facts, now)
    retried = {n.name: n for n in step.nodes}
    return (
        PoolMemory(step.state.pause_reason, step.state.canary_released, resume),
        [retried.get(n.name, n) for n in facts],
    )


def decide(
    spec: PoolSpec, memory: PoolMemory, facts: list[NodeFacts], now: float
) -> tuple[Plan, PoolMemory, list[NodeFacts]]:
    """Plan the pool; the facts and memory once its decisions are persisted (pure).

    The plan is made again on the decided facts, so the reasons it gives
    describe what the agents will see.
    """
    result = plan(spec, PoolState(memory.failure_pause, memory.canary_released), facts, now)
    if not result.actions and result.pause_reason is None:
        return result, memory, facts
    decided = {a.node: (a.kind, a.version) for a in result.actions}
    facts = [after_plan(n, decided, now) for n in facts]
    if result.pause_reason is not None:
        memory = replace(memory, failure_pause=result.pause_reason)
    state = PoolState(memory.failure_pause, memory.canary_released)
    return plan(spec, state, facts, now), memory, facts


# --- what `atoll fleet status --kubeconfig` shows ----------------------------------------


def _with_members(
    waiting: list[dict[str, Any]], pool: str, raw_nodes: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The pool's Nodes (those its grant names), by name, each as its ``waiting`` entry
    when it has one, with its last restart; then waiting entries of no such Node."""
    listed = {n["name"]: n for n in waiting}
    members: list[dict[str, Any]] = []
    for raw in raw_nodes:
        try:
            grant, state = Grant.from_node(raw), NodeState.from_node(raw)
        except NodeProtocolError:
            continue
        if grant is None or grant.pool != pool or state is None:
            continue
        name = str(raw["metadata"]["name"])
        entry = listed.pop(name, None) or {
            "name": name,
            "current": state.version,
            "desired": grant.version,
            "phase": annotations_of(raw).get(A_PHASE, Phase.IDLE.value),
            "healthy": state.healthy,
            "reason": grant.reason,
        }
        members.append({**entry, "restart": _restart_shown(raw)})
    members.sort(key=lambda n: str(n["name"]))
    return members + list(listed.values())


def _restart_shown(raw: Mapping[str, Any]) -> dict[str, Any] | str | None:
    """A Node's last restart as the fleet protocol's JSON, None when it has none, or
    the error that names why its annotation is not one (shown as unreadable)."""
    try:
        restart = read_restart(annotations_of(raw))
    except ProtocolError as e:
        return str(e)
    return None if restart is None else restart.to_json()


_COUNTS = ("total", "updated", "updating", "pending", "failed", "held", "unavailable")


def nodepool_view(
    obj: Mapping[str, Any], raw_nodes: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """A NodePool as the standalone controller's pool view (``GET /v1/pools/{name}``),
    so ``atoll fleet status`` prints both the same way (pure). Its nodes are the
    status's ``waiting`` list (the operator keeps up to 50 there, with their reasons)
    and, of ``raw_nodes`` (the cluster's Nodes), each one whose grant names this pool,
    by name, with its last restart (:data:`atoll.wire.kubenode.RESTART`); a Node that
    breaks the Node protocol is left out (the pool's status names it)."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    counts: dict[str, Any] = {key: status.get(key) or 0 for key in _COUNTS}
    counts["max_unavailable"] = status.get("maxUnavailable") or 0
    counts["paused_reason"] = status.get("pauseReason") or None
    counts["stalled_reason"] = status.get("stalledReason") or None
    nodes = [
        {
            "name": str(n.get("name")),
            "current": n.get("current"),
            "desired": n.get("desired"),
            "phase": n.get("phase"),
            "healthy": n.get("healthy", True),
            "reason": n.get("reason") or "",
            "restart": None,
        }
        for n in status.get("waiting") or []
        if isinstance(n, Mapping)
    ]
    nodes = _with_members(nodes, str(meta.get("name")), raw_nodes)
    blocked = [str(b) for b in status.get("drainBlockedNodes") or []]
    return {
        "spec": {"pool": {"name": meta.get("name"), "version": spec.get("version")}},
        "status": counts,
        "nodes": nodes,
        "phase": status.get("phase"),
        "drain_blocked": blocked,
    }

"""``atoll fleet operator``: the rollout planner as a Kubernetes operator (kopf).

The same pure planner as the standalone controller (:func:`atoll.fleet.rollout.plan`)
decides; this module only translates Kubernetes objects into its facts and its
decisions back into Kubernetes objects. Nothing here decides anything the
planner does not.

* **Pools** are ``NodePool`` objects (``atoll.dev/v1alpha1``, cluster-scoped,
  CRD in ``deploy/kubernetes/nodepool-crd.yaml``). Their ``spec`` is pool.toml
  in Kubernetes spelling and is validated by the same validator
  (:func:`atoll.fleet.pool.spec_from_dict`). Progress goes to the ``status``
  subresource: counts, ``phase``, ``pauseReason``, ``conditions``, and why each
  waiting node waits.
* **Nodes** are Kubernetes ``Node`` objects selected by label. The node's agent
  reports through annotations on its own Node (``atoll.dev/current-version``,
  ``staged-version``, ``healthy``, ``failed``), the same four facts it sends to
  the standalone controller. The operator keeps its memory of each node
  (``atoll.dev/phase``, ``phase-since``, ``granted-version``) on the Node too,
  and answers with ``atoll.dev/desired-version``, ``stage``, ``may-reboot``,
  ``reason`` — the standalone ``GET /v1/nodes/{name}/desired`` answer.
  A reboot grant and the phase ``rebooting`` are written in the *same* patch,
  so a restarted operator counts every grant it ever gave against
  maxUnavailable (the Kubernetes API is the store; the operator keeps no state
  of its own between ticks).
* **Health gate**: a node counts as healthy only when its agent says so *and*
  its ``Ready`` condition is ``True``. A node granted a reboot is cordoned
  (``spec.unschedulable``) in the same patch, then drained through the
  Eviction API (PodDisruptionBudgets are honoured: a refused eviction is
  retried on the next reconcile); ``may-reboot`` turns true only once the node
  is drained. It is uncordoned once it leaves ``rebooting`` (healthy on the
  granted version, or failed and rolled back).
* **Resume** (the standalone ``fleet resume``): change the pool's
  ``atoll.dev/resume`` annotation to any new value; this clears a self-pause,
  releases the canary and lets failed nodes be retried.

How a report or a decision moves a node between phases, and what the node is
told, is :mod:`atoll.fleet.transitions`, shared with the standalone controller's
stores. Every reconcile (on create, update, resume of a pool, and on a timer so
time-based rules progress) runs under one lock, so two reconciles never grant
from the same stale count.

Not done here: the agent side (the agent reports to the standalone controller
over HTTP; writing its own Node's annotations is not wired into the agent). So
no step failure reaches the operator yet: ``onStepFailure`` and
``maxStepRetries`` are validated and mapped like the other strategy keys, but
there is no annotation for a node's failure or its ``retry_at``. For the same
reason a node past its reboot timeout is not stored ``failed`` here (the
standalone stores do, :func:`atoll.fleet.transitions.after_timeout`): it stays
``rebooting`` in its annotations and the planner counts it as failed and
unavailable on every plan, as before; ``status.stalledReason`` says when such
nodes hold every reboot slot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import aiohttp
import kopf

from atoll.errors import InputError
from atoll.fleet.kube import GROUP, PLURAL, VERSION, KubeApi, KubeError
from atoll.fleet.pool import spec_from_dict
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
from atoll.wire.fleet import Report

KIND = "NodePool"

# Written by the node's agent.
A_CURRENT = "atoll.dev/current-version"
A_STAGED = "atoll.dev/staged-version"
A_HEALTHY = "atoll.dev/healthy"
A_FAILED = "atoll.dev/failed"
# Written by the operator: its memory of the node, then its answer to the agent.
A_PHASE = "atoll.dev/phase"
A_SINCE = "atoll.dev/phase-since"
A_GRANTED = "atoll.dev/granted-version"
A_CORDONED = "atoll.dev/cordoned"
A_DRAINED = "atoll.dev/drained"
A_DESIRED = "atoll.dev/desired-version"
A_STAGE = "atoll.dev/stage"
A_MAY_REBOOT = "atoll.dev/may-reboot"
A_REASON = "atoll.dev/reason"
A_POOL = "atoll.dev/pool"
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
}
WINDOW_KEYS: Mapping[str, str] = {
    "days": "days",
    "start": "start",
    "lengthMinutes": "length_minutes",
    "timezone": "timezone",
}


def spec_from_object(name: str, raw: Mapping[str, Any]) -> PoolSpec:
    """A NodePool's ``spec`` -> :class:`PoolSpec`, through pool.toml's validator.

    Errors name the object and key, e.g. ``NodePool web: strategy.canary: ...``.
    """
    source = f"{KIND} {name}"
    unknown = set(raw) - {"version", "previousVersion", "selector", "strategy"}
    if unknown:
        raise InputError(f"{source}: unknown key(s) spec.{sorted(unknown)}")
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


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    return dict(meta.get("annotations") or {})


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    return dict(meta.get("labels") or {})


def node_ready(node: Mapping[str, Any]) -> bool:
    """The Node's ``Ready`` condition is ``True`` (the kubelet's health gate)."""
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def facts_of(node: Mapping[str, Any], now: float) -> NodeFacts | None:
    """The planner's facts for one Node, after applying its agent's latest report.

    ``None`` when the node's agent has not reported yet (no current version):
    such a node is counted as ``unreported`` and never planned.
    """
    notes = _annotations(node)
    current = notes.get(A_CURRENT)
    if not current:
        return None
    name = str(node["metadata"]["name"])
    try:
        phase = Phase(notes.get(A_PHASE, Phase.IDLE.value))
    except ValueError:
        phase = Phase.IDLE  # an annotation edited by hand: start over from idle
    try:
        since = float(notes.get(A_SINCE, "0"))
    except ValueError:
        since = 0.0
    staged = notes.get(A_STAGED) or None
    agent_healthy = notes.get(A_HEALTHY, "true") == "true"
    healthy = agent_healthy and node_ready(node)
    failed = notes.get(A_FAILED) == "true"
    # Before this report: the operator's memory (a grant remembers its version
    # as the staged one, exactly as the standalone store does).
    remembered = NodeFacts(
        name,
        _labels(node),
        current,
        notes.get(A_GRANTED) if phase is Phase.REBOOTING else staged,
        healthy,
        phase,
        since,
    )
    # Back on the granted version but not healthy yet (the kubelet is not Ready,
    # or the agent's trial runs): after_report keeps the node rebooting, bounded
    # by the reboot timeout, until it is healthy or its agent says it failed.
    report = Report(current, staged, healthy, failed)
    return after_report(remembered, report, notes.get(A_DESIRED) or None, now).after


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


def instructions(node: NodeFacts, result: Plan, pool: str) -> dict[str, str]:
    """The operator-owned annotations of one node: its memory and its answer to the agent."""
    told = instruction(node, result.desired[node.name])
    notes = {
        A_POOL: pool,
        A_PHASE: node.phase.value,
        A_SINCE: f"{node.last_transition:.3f}",
        A_DESIRED: told.version,
        A_STAGE: _bool(told.stage),
        A_MAY_REBOOT: _bool(told.may_reboot),
        A_REASON: result.waiting.get(node.name, ""),
    }
    if node.phase is Phase.REBOOTING and node.staged_version:
        notes[A_GRANTED] = node.staged_version
    return notes


def _bool(value: bool) -> str:
    return "true" if value else "false"


def owner(pools: Sequence[tuple[str, PoolSpec]], labels: Mapping[str, str]) -> str | None:
    """A node belongs to the first pool, by name, whose selector matches (as standalone)."""
    for name, spec in sorted(pools, key=lambda p: p[0]):
        if matches(spec.selector, labels):
            return name
    return None


def pool_phase(result: Plan) -> str:
    s = result.status
    if s.paused_reason is not None:
        return "Paused"
    if s.updating == 0 and s.pending == 0 and s.failed == 0:
        return "Completed"
    return "Progressing"


def _condition(
    kind: str, on: bool, reason: str, message: str, old: Sequence[Any]
) -> dict[str, Any]:
    status = "True" if on else "False"
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
) -> dict[str, Any]:
    """The NodePool's ``status`` for one plan."""
    s = result.status
    phase = pool_phase(result)
    old_conditions = old.get("conditions") or []
    conditions = [
        _condition(
            "Paused",
            s.paused_reason is not None,
            "Paused" if s.paused_reason else "Running",
            s.paused_reason or "",
            old_conditions,
        ),
        _condition(
            "Complete",
            phase == "Completed",
            phase,
            f"{s.updated} of {s.total} node(s) on the target, {s.held} held by the partition",
            old_conditions,
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


def observe(
    raw_nodes: Sequence[Mapping[str, Any]], now: float
) -> tuple[list[NodeFacts], list[str]]:
    """The planner's facts of a pool's Nodes, and the names of those not reported yet."""
    facts: list[NodeFacts] = []
    unreported: list[str] = []
    for raw in raw_nodes:
        node = facts_of(raw, now)
        if node is None:
            unreported.append(str(raw["metadata"]["name"]))
        else:
            facts.append(node)
    return facts, unreported


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


# --- the reconcile loop --------------------------------------------------------------------


class NodePoolReconciler:
    """Plan one pool from the API server's objects and write the decisions back."""

    def __init__(self, api: KubeApi, clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.clock = clock
        self._lock = asyncio.Lock()

    async def reconcile(self, name: str) -> Plan | None:
        """One planning pass for pool ``name``; ``None`` if it is gone or invalid."""
        async with self._lock:
            return await self._reconcile(name)

    async def _reconcile(self, name: str) -> Plan | None:
        now = self.clock()
        pools, this = await self._read_pools(name)
        if this is None:
            return None
        spec = dict(pools)[name]
        status = this.get("status") or {}
        raw_nodes = [n for n in await self.api.list_nodes() if owner(pools, _labels(n)) == name]
        facts, unreported = observe(raw_nodes, now)
        memory, facts = on_resume(
            spec, PoolMemory.of(status), _annotations(this).get(A_RESUME), facts, now
        )
        result, memory, facts = decide(spec, memory, facts, now)
        by_name = {str(raw["metadata"]["name"]): raw for raw in raw_nodes}
        for node in facts:
            await self._write_node(by_name[node.name], node, result, name)
        await self.api.patch_pool_status(
            name,
            pool_status(
                result, memory, facts, unreported, this["metadata"].get("generation"), status
            ),
        )
        return result

    async def _read_pools(
        self, name: str
    ) -> tuple[list[tuple[str, PoolSpec]], dict[str, Any] | None]:
        """Every valid pool's spec (a node belongs to the first that matches) and pool ``name``.

        ``None`` for the pool when it is gone, or invalid: its status then says why.
        """
        pools: list[tuple[str, PoolSpec]] = []
        this: dict[str, Any] | None = None
        for obj in await self.api.list_pools():
            pool_name = str(obj["metadata"]["name"])
            try:
                pools.append((pool_name, spec_from_object(pool_name, obj.get("spec") or {})))
            except InputError as e:
                if pool_name == name:
                    await self.api.patch_pool_status(
                        name, {"phase": "Invalid", "pauseReason": str(e)}
                    )
                    return pools, None
                continue  # another pool's bad spec: that pool reports it
            if pool_name == name:
                this = obj
        return pools, this

    async def _write_node(
        self, raw: Mapping[str, Any], node: NodeFacts, result: Plan, pool: str
    ) -> None:
        """One merge patch per node: the grant, the answer and the cordon land together.

        A node granted a reboot is cordoned in the grant's patch; from the next
        reconcile on (the cordon is then persisted, so no new pod lands there)
        its pods are evicted, and ``may-reboot`` turns true only once none is left.
        """
        old = _annotations(raw)
        new: dict[str, str | None] = dict(instructions(node, result, pool))
        rebooting = node.phase is Phase.REBOOTING
        if not rebooting:
            for key in (A_GRANTED, A_DRAINED):
                if key in old:
                    new[key] = None
        patch: dict[str, Any] = {}
        if rebooting and old.get(A_CORDONED) != "true":
            new[A_CORDONED] = "true"
            patch["spec"] = {"unschedulable": True}
        elif not rebooting and old.get(A_CORDONED) == "true":
            new[A_CORDONED] = None
            patch["spec"] = {"unschedulable": False}
        if new[A_MAY_REBOOT] == "true" and old.get(A_DRAINED) != "true":
            new[A_MAY_REBOOT] = "false"
            if old.get(A_CORDONED) == "true":
                left = await self._drain(node.name)
                if left:
                    new[A_REASON] = f"draining before the reboot into {new[A_DESIRED]}: {left}"
                else:
                    new[A_DRAINED] = "true"
                    new[A_MAY_REBOOT] = "true"
            else:
                new[A_REASON] = (
                    f"cordoned; pods are evicted before the reboot into {new[A_DESIRED]}"
                )
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if changed:
            patch["metadata"] = {"annotations": changed}
        if patch:
            await self.api.patch_node(node.name, patch)

    async def _drain(self, node: str) -> str:
        """Evict the node's pods (the Eviction API honours PodDisruptionBudgets).

        Returns what is left (empty when drained). DaemonSet pods, mirror
        (static) pods and finished pods stay, as with ``kubectl drain``.
        """
        waiting: list[str] = []
        blocked: list[str] = []
        for pod in await self.api.list_pods(node):
            meta = pod.get("metadata") or {}
            ns, name = str(meta.get("namespace", "default")), str(meta.get("name"))
            owners = meta.get("ownerReferences") or []
            if any(o.get("kind") == "DaemonSet" for o in owners):
                continue
            if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if meta.get("deletionTimestamp"):
                waiting.append(f"{ns}/{name}")  # evicted, still terminating
                continue
            answer = await self.api.evict(ns, name)
            if answer == 429:
                blocked.append(f"{ns}/{name}")
            elif answer != 404:
                waiting.append(f"{ns}/{name}")
        parts = []
        if blocked:
            parts.append(f"eviction refused by a PodDisruptionBudget: {', '.join(blocked)}")
        if waiting:
            parts.append(f"waiting for {', '.join(waiting)} to terminate")
        return "; ".join(parts)


# --- kopf wiring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorConfig:
    interval: float = 5.0
    """Seconds between timer reconciles of each pool (time-based rules progress)."""
    login: Callable[[], kopf.ConnectionInfo | None] | None = None
    """Credentials; by default the in-cluster service account, then the kubeconfig."""


def default_login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """The in-cluster service account, else the kubeconfig; :class:`InputError` if neither.

    ``atoll fleet operator`` calls it once before starting kopf, so a missing or
    broken kubeconfig fails at once (kopf itself would retry a failed login forever).
    """
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        return info
    path = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        info = kopf.login_with_kubeconfig(settings=settings)
    except Exception as e:  # YAML or structure errors from kopf's parser
        raise InputError(f"kubeconfig {path}: {e}") from e
    if info is None:
        raise InputError(
            f"no credentials: not in a Pod with a service account, and no kubeconfig at {path}",
            hint="pass --kubeconfig PATH or set KUBECONFIG",
        )
    return info


def build_registry(
    config: OperatorConfig, clock: Callable[[], float] = time.time
) -> kopf.OperatorRegistry:
    """A fresh kopf registry with the operator's handlers (no module-level globals)."""
    registry = kopf.OperatorRegistry()
    holder: dict[str, NodePoolReconciler] = {}

    @kopf.on.login(registry=registry)
    def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
        if config.login is not None:
            info = config.login()
        else:
            try:
                info = default_login(settings)
            except InputError as e:
                raise kopf.PermanentError(str(e)) from e
        if info is None:
            raise kopf.PermanentError("no credentials")
        previous = holder.get("reconciler")
        holder["reconciler"] = NodePoolReconciler(KubeApi(info), clock)
        if previous is not None:
            asyncio.get_running_loop().create_task(previous.api.close())
        return info

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        reconciler = holder.pop("reconciler", None)
        if reconciler is not None:
            await reconciler.api.close()

    async def _run(name: str, logger: kopf.Logger) -> None:
        reconciler = holder.get("reconciler")
        if reconciler is None:
            raise kopf.TemporaryError("not logged in yet", delay=1)
        try:
            result = await reconciler.reconcile(name)
        except KubeError as e:
            raise kopf.TemporaryError(str(e), delay=max(1.0, config.interval)) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise kopf.TemporaryError(f"API server: {e}", delay=max(1.0, config.interval)) from e
        if result is not None:
            s = result.status
            logger.debug(
                "planned: %d updated, %d updating, %d pending, %d failed of %d; %d action(s)",
                s.updated,
                s.updating,
                s.pending,
                s.failed,
                s.total,
                len(result.actions),
            )

    def _validate(name: str, spec: Mapping[str, Any]) -> None:
        try:
            spec_from_object(name, spec)
        except InputError as e:
            raise kopf.PermanentError(str(e)) from e

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    async def _changed(name: str, spec: kopf.Spec, logger: kopf.Logger, **_: Any) -> None:
        _validate(name, dict(spec))
        await _run(name, logger)

    @kopf.timer(GROUP, VERSION, PLURAL, interval=config.interval, registry=registry)
    async def _tick(name: str, logger: kopf.Logger, **_: Any) -> None:
        await _run(name, logger)

    return registry


def settings_for(*, peering: str | None) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # kopf's own bookkeeping under our domain, not kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.peering.standalone = peering is None
    if peering is not None:
        settings.peering.name = peering
        settings.peering.clusterwide = True
    return settings


async def run_operator(
    config: OperatorConfig,
    *,
    peering: str | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run the operator until ``stop_flag`` is set (or the task is cancelled).

    kopf waits (up to 5 s) on stop for every task of the event loop that started
    after it, so an embedding program that runs other tasks in the same loop
    (a test's API emulator) should give the operator a loop of its own: a thread
    with ``threading.Event`` flags.
    """
    await kopf.operator(
        registry=build_registry(config, clock),
        settings=settings_for(peering=peering),
        clusterwide=True,
        standalone=peering is None,
        peering_name=peering,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


__all__ = [
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "NodePoolReconciler",
    "OperatorConfig",
    "build_registry",
    "facts_of",
    "run_operator",
    "spec_from_object",
]

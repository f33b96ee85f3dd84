"""``atoll fleet operator``: the rollout planner as a Kubernetes operator (kopf).

The same pure planner as the standalone controller (:func:`atoll.fleet.rollout.plan`)
decides; the pure translation of Kubernetes objects into its facts and of its
decisions back into annotations, statuses and events is
:mod:`atoll.fleet.nodepool`, the drain's decisions :mod:`atoll.fleet.drain`.
This module applies them: the reconcile loop and kopf's wiring. Before kopf
starts, :mod:`atoll.fleet.preflight` checks the CRD and every permission the
operator uses, and refuses to start naming what is missing.

* **Pools** are ``NodePool`` objects (``atoll.dev/v1alpha1``, cluster-scoped,
  CRD in ``deploy/kubernetes/nodepool-crd.yaml``). Their ``spec`` is pool.toml
  in Kubernetes spelling and is validated by the same validator
  (:func:`atoll.fleet.pool.spec_from_dict`). Progress goes to the ``status``
  subresource: counts, ``phase``, ``pauseReason``, ``conditions``, and why each
  waiting node waits.
* **Nodes** are Kubernetes ``Node`` objects selected by label. They speak the
  Node protocol, :mod:`atoll.wire.kubenode`, which the agent shares: the node's
  agent reports its :class:`~atoll.wire.kubenode.NodeState` through annotations
  on its own Node (``atoll.dev/current-version``, ``staged-version``,
  ``healthy``, ``failed``: the same four facts it sends to the standalone
  controller), and the operator answers with a
  :class:`~atoll.wire.kubenode.Grant` (``atoll.dev/desired-version``, ``stage``,
  ``may-reboot``, ``reason``, ``pool`` and the pool's ``reboot`` policy: the
  standalone ``GET /v1/nodes/{name}/desired`` answer). A ``failed`` counts only from a state
  that answers the current grant (``atoll.dev/observed-grant``,
  :meth:`~atoll.wire.kubenode.NodeState.answers`): after a resume, the
  failure still on the Node is the old grant's. The operator keeps its private memory of
  each node (``atoll.dev/phase``, ``phase-since``, ``granted-version``) on the
  Node too. A Node whose state or grant breaks the protocol stops the planning
  of its pool (``status.phase: Blocked``, ``unreadable`` names the node and the
  key) until it reads again: a node in an unknown state may hold a reboot slot.
  A reboot grant and the phase ``rebooting`` are written in the *same* patch,
  so a restarted operator counts every grant it ever gave against
  maxUnavailable (the Kubernetes API is the store; the operator keeps no state
  of its own between ticks).
* **Health gate**: a node counts as healthy only when its agent says so *and*
  its ``Ready`` condition is ``True``. A node granted a reboot is cordoned
  (``spec.unschedulable``) and marked for the autoscalers (Karpenter's
  ``do-not-disrupt``, cluster-autoscaler's ``scale-down-disabled``) in the
  same patch, then drained through the Eviction API on each reconcile
  (PodDisruptionBudgets are honoured; DaemonSet, mirror and finished pods
  stay); ``may-reboot`` turns true only once the node is drained. It is
  uncordoned and unmarked once it leaves ``rebooting`` (healthy on the granted
  version, or failed and rolled back).
* **Blocked drains**: a refused eviction or a pod that does not terminate is
  in the pool's status at once (``blockedDrains``: node, pod, budgets; the
  ``DrainBlocked`` condition) and in a Warning Event on the NodePool; past the
  pool's ``spec.drain.timeoutSeconds`` its ``onTimeout`` applies: ``wait``,
  ``skip`` (the grant is given back until a resume) or ``delete`` the pods.
* **Resume** (the standalone ``fleet resume``): change the pool's
  ``atoll.dev/resume`` annotation to any new value; this clears a self-pause,
  releases the canary and lets failed nodes be retried.

How a report or a decision moves a node between phases, and what the node is
told, is :mod:`atoll.fleet.transitions`, shared with the standalone controller's
stores. Every reconcile (on create, update, resume of a pool, and on a timer so
time-based rules progress) runs under one lock, so two reconciles never grant
from the same stale count. Its node patches are written releases first
(:func:`atoll.fleet.nodepool.release_first`): every uncordon has landed before
the first of the next grants' cordons is sent, so even between two patches, or
with the operator killed between them, no more nodes are unavailable than
maxUnavailable allows. Within each of the two groups the patches go out
:data:`PATCH_CONCURRENCY` at a time (a pool's first plan writes every Node). The
API client (:mod:`atoll.fleet.kube`) backs off on 429 and 5xx, honouring
``Retry-After``; what it cannot get through fails the reconcile, which kopf
retries after ``--interval``.

The agent's side (:mod:`atoll.agent.kubegrant`) reads the grant from its own
Node and watches it; a step that fails on the node (fetch, verify, deploy,
reboot) reaches the operator as ``failed``/``failure`` on the Node with the step
failure itself (``atoll.dev/step-failure``), kept there until the operator answers
it with another grant. The pool's ``onStepFailure`` applies as in the standalone
stores (:func:`atoll.fleet.transitions.after_report`): ``fail`` fails the node;
``retry`` sends it back to idle with a ``retry_at`` (backoff) and counts the
attempts up to ``maxStepRetries``, all kept in the operator's memory on the Node
(``recorded-step-failure``, ``step-attempts``, ``retry-at``). A node past its reboot
timeout is not stored ``failed`` here (the standalone stores do,
:func:`atoll.fleet.transitions.after_timeout`): it stays ``rebooting`` in its
annotations and the planner counts it as failed and unavailable on every plan,
as before; ``status.stalledReason`` says when such nodes hold every reboot slot.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import kopf

from atoll.errors import InputError
from atoll.fleet import drain, preflight
from atoll.fleet.kube import KubeApi, KubeError
from atoll.fleet.nodepool import (
    A_CORDONED,
    A_DRAIN_BLOCKED,
    A_DRAIN_SINCE,
    A_DRAINED,
    A_GRANTED,
    A_PHASE,
    A_RESUME,
    A_SKIPPED,
    KIND,
    SPEC_KEYS,
    STRATEGY_KEYS,
    WINDOW_KEYS,
    DrainReport,
    Pool,
    PoolMemory,
    annotations_of,
    cordon_change,
    decide,
    facts_of,
    grant_of,
    labels_of,
    memory_of,
    observe,
    on_resume,
    owner,
    pool_event,
    pool_status,
    release_first,
    released,
    seconds_or,
    skip_changes,
    skipped_nodes,
    spec_from_object,
    unreadable_status,
)
from atoll.fleet.preflight import GROUP, PLURAL, VERSION
from atoll.fleet.rollout import NodeFacts, Phase, Plan, PoolSpec
from atoll.wire.kubenode import Grant

# --- the reconcile loop --------------------------------------------------------------------

PATCH_CONCURRENCY = 16
"""Node patches (and drain steps) of one group in flight at once: a pool's first plan
writes a grant on every Node, one after the other ~30 s for 1,000 Nodes (measured by
the operator benchmark) before the first reboot slot was given."""

_T = TypeVar("_T")


async def bounded(calls: Sequence[Awaitable[_T]], limit: int) -> list[_T]:
    """Await ``calls`` with at most ``limit`` in flight; their results in order. Every
    call runs to its end; the first that raised is then raised (none is left running)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[_T]) -> _T:
        async with gate:
            return await call

    done = await asyncio.gather(*(one(c) for c in calls), return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome
    return done  # type: ignore[return-value]  # no exception among them: each a _T


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
        pools, pool = await self._read_pools(name)
        if pool is None:
            return None
        status = pool.obj.get("status") or {}
        raw_nodes = [n for n in await self.api.list_nodes() if owner(pools, labels_of(n)) == name]
        memory = PoolMemory.of(status)
        resume = annotations_of(pool.obj).get(A_RESUME)
        resuming = resume is not None and resume != memory.resumed
        skipped = [] if resuming else skipped_nodes(raw_nodes, pool.spec.target_version)
        raw_nodes = [n for n in raw_nodes if str(n["metadata"]["name"]) not in skipped]
        seen = observe(raw_nodes, now, pool.spec)
        if seen.unreadable:
            await self.api.patch_pool_status(name, unreadable_status(seen.unreadable))
            return None
        facts, unreported = seen.facts, seen.unreported
        memory, facts = on_resume(pool.spec, memory, resume, facts, now)
        result, memory, facts = decide(pool.spec, memory, facts, now)
        by_name = {str(raw["metadata"]["name"]): raw for raw in raw_nodes}
        blocked: list[dict[str, Any]] = []
        for group in release_first(facts):
            writes = [
                self._write_node(by_name[node.name], node, result, pool, memory.resumed)
                for node in group
            ]
            for found in await bounded(writes, PATCH_CONCURRENCY):
                blocked += found
        drains = DrainReport(blocked, skipped)
        generation = pool.obj["metadata"].get("generation")
        await self.api.patch_pool_status(
            name,
            pool_status(result, memory, facts, unreported, generation, status, drains, now=now),
        )
        return result

    async def _read_pools(self, name: str) -> tuple[list[tuple[str, PoolSpec]], Pool | None]:
        """Every valid pool's spec (a node belongs to the first that matches) and pool ``name``.

        ``None`` for the pool when it is gone, or invalid: its status then says why.
        """
        pools: list[tuple[str, PoolSpec]] = []
        this: Pool | None = None
        for obj in await self.api.list_pools():
            try:
                pool = Pool.of(obj)
            except InputError as e:
                if obj["metadata"]["name"] == name:
                    await self.api.patch_pool_status(
                        name, {"phase": "Invalid", "pauseReason": str(e)}
                    )
                    return pools, None
                continue  # another pool's bad spec: that pool reports it
            pools.append((pool.name, pool.spec))
            if pool.name == name:
                this = pool
        return pools, this

    async def _write_node(
        self,
        raw: Mapping[str, Any],
        node: NodeFacts,
        result: Plan,
        pool: Pool,
        resumed: str | None,
    ) -> list[dict[str, Any]]:
        """One merge patch per node: the grant, the answer and the cordon land together.

        A node granted a reboot is cordoned and marked for the autoscalers in the
        grant's patch; from the next reconcile on (the cordon is then persisted,
        so no new pod lands there) its pods are evicted, and ``may-reboot`` turns
        true only once none is left. Returns the drain's blocked pods (status).
        """
        old = annotations_of(raw)
        grant = grant_of(node, result, pool.name, resumed, reboot=pool.spec.reboot)
        new: dict[str, str | None] = dict(memory_of(node))
        rebooting = node.phase is Phase.REBOOTING
        patch: dict[str, Any] = {}
        if A_SKIPPED in old:
            new[A_SKIPPED] = None  # planned again: resumed, or a new target
        if not rebooting:
            new.update(released(old))
        cordon = cordon_change(old, rebooting)
        if cordon is not None:
            new.update(drain.mark(old) if cordon else drain.unmark(old))
            new[A_CORDONED] = "true" if cordon else None
            patch["spec"] = {"unschedulable": cordon}
        blocked: list[dict[str, Any]] = []
        if grant.may_reboot and old.get(A_DRAINED) != "true":
            if old.get(A_CORDONED) == "true":
                step, grant, changes = await self._drain_step(node, old, grant, pool)
                new.update(changes)
                blocked = [b.as_status(node.name) for b in step.blocked]
                if step.stage is drain.Stage.SKIP:
                    patch["spec"] = {"unschedulable": False}
            else:
                why = f"cordoned; pods are evicted before the reboot into {grant.version}"
                grant = replace(grant, may_reboot=False, reason=why)
        new.update(grant.annotations())
        changed = {k: v for k, v in new.items() if old.get(k) != v}
        if changed:
            patch["metadata"] = {"annotations": changed}
        if patch:
            await self.api.patch_node(node.name, patch)
        return blocked

    async def _drain_step(
        self, node: NodeFacts, old: Mapping[str, str], grant: Grant, pool: Pool
    ) -> tuple[drain.Progress, Grant, dict[str, str | None]]:
        """One round of the drain of a node granted a reboot: the grant it leads to
        (``may_reboot`` once drained) and the changes of the private annotations."""
        now = self.clock()
        since = seconds_or(old.get(A_DRAIN_SINCE), now)
        blocked, terminating = await self._evict(node.name, now)
        step = drain.progress(blocked, terminating, since, now, pool.policy)
        changes: dict[str, str | None] = {A_DRAIN_SINCE: old.get(A_DRAIN_SINCE) or f"{now:.3f}"}
        if step.stage is drain.Stage.DRAINED:
            return step, grant, {**changes, A_DRAINED: "true", A_DRAIN_BLOCKED: None}
        why = f"draining before the reboot into {grant.version}: {step.reason}"
        grant = replace(grant, may_reboot=False, reason=why)
        summary = "; ".join(str(b) for b in step.blocked) or None
        changes[A_DRAIN_BLOCKED] = summary
        if summary is not None and summary != old.get(A_DRAIN_BLOCKED):
            await self._event(pool, "DrainBlocked", f"node {node.name}: {step.reason}")
        if step.stage is drain.Stage.DELETE:
            for b in step.blocked:
                namespace, name = b.pod.split("/", 1)
                await self.api.delete_pod(namespace, name)
        if step.stage is drain.Stage.SKIP:
            await self._event(pool, "DrainSkipped", f"node {node.name}: {step.reason}")
            grant, skipped = skip_changes(
                node, old, grant.version, step.reason, pool.name, reboot=grant.reboot
            )
            changes.update(skipped)
        return step, grant, changes

    async def _evict(self, node: str, now: float) -> tuple[list[drain.Blocked], list[str]]:
        """Evict what must go (the Eviction API honours PodDisruptionBudgets): the pods
        refused or not terminating, and those terminating within their grace period."""
        blocked: list[drain.Blocked] = []
        terminating: list[str] = []
        for pod in await self.api.list_pods(node):
            fate, name = drain.fate(pod), drain.pod_name(pod)
            if fate is drain.Fate.TERMINATING:
                if drain.stuck(pod, now):
                    blocked.append(drain.Blocked(name, refused=False))
                else:
                    terminating.append(name)
            elif fate is drain.Fate.EVICT:
                namespace, short = name.split("/", 1)
                answer = await self.api.evict(namespace, short)
                if answer == 429:
                    budgets = drain.budgets_covering(pod, await self.api.list_budgets(namespace))
                    blocked.append(drain.Blocked(name, budgets=budgets))
                elif answer != 404:
                    terminating.append(name)
        return blocked, terminating

    async def _event(self, pool: Pool, reason: str, message: str) -> None:
        await self.api.create_event(pool_event(pool.obj, reason, message, self.clock()))


# --- kopf wiring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorConfig:
    interval: float = 5.0
    """Seconds between timer reconciles of each pool (time-based rules progress)."""
    login: Callable[[], kopf.ConnectionInfo | None] | None = None
    """Credentials; by default the in-cluster service account, then the kubeconfig."""
    preflight: bool = True
    """Check the CRD and every permission before starting (:mod:`atoll.fleet.preflight`)."""


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
    closing: set[asyncio.Task[None]] = set()  # kept until done: the loop holds tasks weakly

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
            task = asyncio.get_running_loop().create_task(previous.api.close())
            closing.add(task)
            task.add_done_callback(closing.discard)
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


async def _preflight(config: OperatorConfig, *, peering: bool) -> None:
    settings = kopf.OperatorSettings()
    info = config.login() if config.login is not None else default_login(settings)
    if info is None:
        raise InputError("no credentials")
    api = KubeApi(info)
    try:
        await preflight.check(api, await api.whoami(), peering=peering)
    except KubeError as e:
        raise preflight.PreflightError(f"API server {info.server}: {e}") from e
    except (aiohttp.ClientError, TimeoutError) as e:
        raise preflight.PreflightError(f"API server {info.server}: {e}") from e
    finally:
        await api.close()


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
    The CRD and the permissions are checked first: a missing one raises
    :class:`atoll.fleet.preflight.PreflightError` before kopf starts.
    """
    if config.preflight:
        await _preflight(config, peering=peering is not None)
    await kopf.operator(
        registry=build_registry(config, clock),
        settings=settings_for(peering=peering),
        clusterwide=True,
        standalone=peering is None,
        peering_name=peering,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


# The private annotations and the translation are nodepool's (the agent's state and the
# grant are atoll.wire.kubenode's); re-exported for callers of the operator.
__all__ = [
    "A_CORDONED",
    "A_DRAINED",
    "A_DRAIN_BLOCKED",
    "A_GRANTED",
    "A_PHASE",
    "A_RESUME",
    "A_SKIPPED",
    "GROUP",
    "KIND",
    "PLURAL",
    "SPEC_KEYS",
    "STRATEGY_KEYS",
    "VERSION",
    "WINDOW_KEYS",
    "NodePoolReconciler",
    "OperatorConfig",
    "build_registry",
    "facts_of",
    "owner",
    "run_operator",
    "spec_from_object",
]

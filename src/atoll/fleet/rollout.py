"""The rollout planner: observed facts about a pool in, a plan out. Pure, no I/O.

The semantics follow OpenKruise CloneSet, applied to nodes whose "in-place
update" is an atomic OS switch (stage a deployment, then reboot into it):

* **order**: nodes are ranked by the integer value of ``priority_label``
  (higher first, missing = 0), then by name. The first ``total - partition``
  nodes of that ranking form the *update set* and want ``target_version``;
  the rest (``partition``, count or ``N%`` rounded up) stay on
  ``previous_version``. Raising ``partition`` therefore rolls updated nodes
  back (a ``rollback`` action), lowering it continues the rollout.
* **staging** (``stage`` action) never counts as unavailable: every node of the
  update set that is not paused or gated is told to stage ahead of time.
* **maxUnavailable** (count or ``N%`` of the pool, rounded down, at least 1)
  bounds the nodes that are rebooting, unhealthy (including nodes that were
  already unhealthy before the rollout) or updated less than
  ``min_ready_seconds`` ago. A ``reboot``/``rollback`` is planned only while
  the count stays within the bound.
* **scatter**: among equal-priority candidates the planner picks, one slot at a
  time, the node whose ``scatter_label`` value (zone, rack) has the fewest nodes
  already unavailable or chosen, so a batch spreads across zones.
* **canary**: with ``canary = N`` only the first N nodes of the update set may
  move until the pool is resumed (``PoolState.canary_released``) or, with
  ``canary_soak_seconds > 0``, until all of them have been updated and healthy
  for that long (the soak time counts from the last canary's transition).
* **failure budget** (count or ``N%`` rounded down): when more nodes than the
  budget are ``failed``, the planner pauses the pool and says why
  (``Plan.pause_reason``); failed nodes are never retried by the planner.
  With ``failure_window_seconds > 0`` only failures newer than the window
  count towards the budget (old failures are still reported and not retried).
* **reboot timeout** (``reboot_timeout_seconds``, default 900 s; 0, set
  explicitly, waits forever): a node still ``rebooting`` longer after its
  grant (silent, or back but not healthy yet) counts as failed (and stays
  unavailable), with a reason naming the timeout, and the plan fails it
  (``Plan.failures``: the caller stores it ``failed`` with a ``reboot`` step
  failure recorded ``by`` the controller, :func:`reboot_timeout_failure`).
* **stalled**: when the failed nodes that are still down hold every slot of
  maxUnavailable while other nodes wait to move, nothing would ever move
  again by itself (failed nodes are not retried but by a resume); the status
  says so and names them (``PoolStatus.stalled_reason``). They keep counting
  as unavailable: a node that did not come back is down.
* **step failures** (a node's agent reported that a step of its update round
  failed; :mod:`atoll.fleet.transitions` records it): with
  ``on_step_failure = "fail"`` the node is ``failed`` like any other; with
  ``"retry"`` it is back ``idle`` with a ``retry_at``, and the planner does not
  tell it to stage the version that failed again before then (the reason says
  when; a new target is staged at once).
* **paused** (by the spec or by the state): no new action; nodes already
  rebooting finish.
* **maintenance window** (days, start ``HH:MM``, length in minutes, IANA time
  zone): outside it no reboot or rollback is granted; staging continues, since
  it costs no availability. A window may cross midnight (it belongs to the day
  it starts on).

``plan`` reads as five steps, each a pure function with its own test table:

1. ``desired_versions``: each node's target (partition, canary, rollback of a
   held node that is on the target);
2. ``gates``: what holds the pool (a persisted pause, the failure budget,
   ``paused``, the canary gate and its soak);
3. ``decide``: one node's bucket, reason and action, given its target and the
   gates;
4. ``slots``: which reboot/rollback candidates get a slot under
   maxUnavailable, counting the nodes unavailable for any other reason;
5. ``stall``: whether failed nodes hold every slot while others wait.

Every node ends up in exactly one status bucket and every node without an
action that is not done gets a human-readable reason. The caller (the server)
persists the decisions; a reboot grant is persisted as phase ``rebooting`` so a
restarted controller counts it as unavailable.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from zoneinfo import ZoneInfo

from atoll.wire.fleet import CONTROL, By, RebootPolicy, Restart, Step, StepFailure

_QUANTITY = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


class Phase(StrEnum):
    """Where a node is in its update cycle (as last persisted by the controller)."""

    IDLE = "idle"
    STAGING = "staging"
    STAGED = "staged"
    REBOOTING = "rebooting"
    FAILED = "failed"


class OnStepFailure(StrEnum):
    """What the controller does with a node whose agent reported a failed step."""

    FAIL = "fail"
    """The node is ``failed`` (counted by the failure budget) until a resume."""
    RETRY = "retry"
    """The node goes back to ``idle`` and stages again after a backoff."""


REBOOT_TIMEOUT_SECONDS = 900.0
"""The default reboot timeout: a real server's firmware and a TCG guest both boot well within it."""
RETRY_BACKOFF_SECONDS = 30.0
RETRY_BACKOFF_CAP_SECONDS = 30 * 60.0
MAX_STEP_RETRIES = 3


def reboot_timeout_failure(version: str, timeout_seconds: float) -> StepFailure:
    """The failure the controller records (``by`` it) for a node granted a reboot
    into ``version`` that did not come back (healthy) within ``timeout_seconds``."""
    # The version as granted (versions are validated: one printable line), so the
    # timeout's record matches the node's staged version exactly; only a version
    # stored long ago that is not one bounded line is cleaned up.
    line = version
    if not version or CONTROL.search(version) or len(version) > 200:
        line = " ".join(CONTROL.sub(" ", version).split())[:200] or "?"
    reason = (
        f"did not come back within the reboot timeout ({timeout_seconds:g} s) "
        "after its reboot grant"
    )
    return StepFailure(Step.REBOOT, line, reason, by=By.CONTROLLER)


def is_reboot_timeout(failure: StepFailure | None) -> bool:
    """``failure`` is the controller's reboot timeout, not a step its agent reported
    (a node cannot report a failure ``by`` the controller: the protocol refuses it)."""
    return failure is not None and failure.by is By.CONTROLLER and failure.step is Step.REBOOT


def retry_backoff(attempt: int) -> float:
    """Seconds before a node may stage again after its ``attempt``-th failed step:
    30 s, 60 s, 120 s, ... capped at 30 min."""
    return min(RETRY_BACKOFF_CAP_SECONDS, RETRY_BACKOFF_SECONDS * float(2 ** max(0, attempt - 1)))


class ActionKind(StrEnum):
    STAGE = "stage"
    REBOOT = "reboot"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Quantity:
    """A count or a percentage of the pool size (``3`` or ``"25%"``)."""

    value: int
    percent: bool = False

    @classmethod
    def parse(cls, raw: object, *, source: str) -> Quantity:
        """Parse ``3``, ``"3"`` or ``"25%"``; ``source`` names the file and key on error."""
        if isinstance(raw, bool):
            raise ValueError(f"{source}: expected a count or 'N%', got {raw!r}")
        if isinstance(raw, int):
            if raw < 0:
                raise ValueError(f"{source}: must not be negative, got {raw}")
            return cls(raw)
        if isinstance(raw, str):
            match = _QUANTITY.match(raw)
            if match:
                value = int(match.group(1))
                percent = match.group(2) == "%"
                if percent and value > 100:
                    raise ValueError(f"{source}: percentage above 100%: {raw!r}")
                return cls(value, percent)
        raise ValueError(f"{source}: expected a count or 'N%', got {raw!r}")

    def resolve(self, total: int, *, round_up: bool) -> int:
        if not self.percent:
            return self.value
        exact = total * self.value / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class MaintenanceWindow:
    """Reboots are allowed on ``days`` from ``start`` (minutes after local midnight)
    for ``length_minutes``, in the IANA time zone ``timezone``."""

    days: tuple[str, ...]
    start_minute: int
    length_minutes: int
    timezone: str = "UTC"

    def is_open(self, now: float) -> bool:
        local = dt.datetime.fromtimestamp(now, ZoneInfo(self.timezone))
        minute_of_day = local.hour * 60 + local.minute
        # Check today's window and yesterday's (a window may cross midnight).
        for days_back in (0, 1):
            day = DAYS[(local.weekday() - days_back) % 7]
            if day not in self.days:
                continue
            offset = minute_of_day + days_back * 24 * 60 - self.start_minute
            if 0 <= offset < self.length_minutes:
                return True
        return False

    def __str__(self) -> str:
        hours, minutes = divmod(self.start_minute, 60)
        return (
            f"{','.join(self.days)} {hours:02d}:{minutes:02d} "
            f"for {self.length_minutes} min ({self.timezone})"
        )


@dataclass(frozen=True)
class PoolSpec:
    """What an operator declared for a pool (``pool.toml``)."""

    name: str
    target_version: str
    previous_version: str | None = None
    selector: Mapping[str, str] = field(default_factory=dict)
    partition: Quantity = Quantity(0)
    max_unavailable: Quantity = Quantity(1)
    paused: bool = False
    min_ready_seconds: float = 0.0
    canary: int = 0
    priority_label: str | None = None
    scatter_label: str | None = None
    failure_budget: Quantity = Quantity(0)
    reboot_timeout_seconds: float = REBOOT_TIMEOUT_SECONDS
    canary_soak_seconds: float = 0.0
    failure_window_seconds: float = 0.0
    maintenance_window: MaintenanceWindow | None = None
    on_step_failure: OnStepFailure = OnStepFailure.FAIL
    max_step_retries: int = MAX_STEP_RETRIES
    reboot: RebootPolicy = RebootPolicy.AUTO
    """How the pool's nodes restart into a new version (the grant's ``reboot``): soft
    when the kernel and its arguments allow (``auto``, the default), or always ``full``."""


@dataclass(frozen=True)
class PoolState:
    """What the controller remembers about a pool between plans."""

    pause_reason: str | None = None
    canary_released: bool = False


@dataclass(frozen=True)
class NodeFacts:
    """One node as last reported by its agent and persisted by the controller."""

    name: str
    labels: Mapping[str, str]
    current_version: str
    staged_version: str | None
    healthy: bool
    phase: Phase
    last_transition: float
    failure: StepFailure | None = None
    """The last step failure its agent reported (kept until it lands on that version)."""
    retry_at: float | None = None
    """``on_step_failure = "retry"``: not told to stage again before this moment."""
    step_attempts: int = 0
    """Failed attempts at ``failure.version`` so far (retries count up to ``max_step_retries``)."""
    restart: Restart | None = None
    """The last restart into a version its agent reported (soft or full, and why)."""


def describe_failure(failure: StepFailure) -> str:
    """``"deploy of v2 failed: <reason> (resource: ESP (/boot/efi))"``."""
    where = f" (resource: {failure.resource})" if failure.resource else ""
    return f"{failure.step} of {failure.version} failed: {failure.reason}{where}"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    node: str
    version: str


@dataclass(frozen=True)
class PoolStatus:
    total: int
    updated: int
    updating: int
    pending: int
    failed: int
    held: int
    unavailable: int
    max_unavailable: int
    paused_reason: str | None
    stalled_reason: str | None = None
    """Set while failed nodes hold every reboot slot and others wait (:func:`stall`)."""


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    desired: Mapping[str, str]
    waiting: Mapping[str, str]
    status: PoolStatus
    pause_reason: str | None
    """Set when the planner itself paused the pool (failure budget) in this plan."""
    failures: Mapping[str, StepFailure] = field(default_factory=dict)
    """Nodes this plan fails, with the failure to record (the reboot timeout)."""

    @property
    def decides(self) -> bool:
        """Anything for the caller to persist: an action, a failure or a self-pause."""
        return bool(self.actions or self.failures or self.pause_reason is not None)

    def named(self) -> set[str]:
        """The nodes the plan's decisions are about (what persisting it reads)."""
        return {a.node for a in self.actions} | set(self.failures)


def priority_of(node: NodeFacts, label: str | None) -> int:
    if label is None:
        return 0
    raw = node.labels.get(label, "0")
    try:
        return int(raw)
    except ValueError:
        return 0


def ranked(nodes: Sequence[NodeFacts], spec: PoolSpec) -> list[NodeFacts]:
    """Update order: higher priority first, then name (stable across plans)."""
    return sorted(nodes, key=lambda n: (-priority_of(n, spec.priority_label), n.name))


# Step 1: desired versions ---------------------------------------------------


@dataclass(frozen=True)
class NodeTarget:
    """Where one node should be, as the partition and the canary count place it."""

    version: str
    in_update_set: bool
    """False: the partition holds the node on the previous version."""
    canary: bool = False
    """One of the first ``canary`` nodes of the update set."""
    rolls_back: bool = False
    """Held by the partition but on the target: it goes back without staging
    (the previous deployment is still on disk)."""


def desired_versions(spec: PoolSpec, order: Sequence[NodeFacts]) -> dict[str, NodeTarget]:
    """Each node's target, keyed by name in rank order (``order`` is already ranked)."""
    total = len(order)
    update_count = total - min(total, spec.partition.resolve(total, round_up=True))
    canaries = min(spec.canary, update_count) if spec.canary > 0 else 0
    targets: dict[str, NodeTarget] = {}
    for index, node in enumerate(order):
        if index < update_count:
            targets[node.name] = NodeTarget(spec.target_version, True, canary=index < canaries)
        else:
            targets[node.name] = NodeTarget(
                spec.previous_version or node.current_version,
                False,
                rolls_back=node.current_version == spec.target_version,
            )
    return targets


# Step 2: gates (pause, failure budget, canary soak) -------------------------


def timed_out(node: NodeFacts, spec: PoolSpec, now: float) -> bool:
    """Still rebooting longer than ``reboot_timeout_seconds`` after the grant."""
    return (
        node.phase is Phase.REBOOTING
        and spec.reboot_timeout_seconds > 0
        and now - node.last_transition > spec.reboot_timeout_seconds
    )


def _within_failure_window(node: NodeFacts, spec: PoolSpec, now: float) -> bool:
    if spec.failure_window_seconds <= 0:
        return True
    # A timed-out node failed when its timeout expired, not when it was granted.
    timeout = spec.reboot_timeout_seconds if timed_out(node, spec, now) else 0.0
    return now - (node.last_transition + timeout) <= spec.failure_window_seconds


def budget_pause(spec: PoolSpec, order: Sequence[NodeFacts], now: float) -> str | None:
    """Why the failure budget pauses the pool, or None while failures fit in it."""
    total = len(order)
    budget = spec.failure_budget.resolve(total, round_up=False)
    counted = [
        n.name
        for n in order
        if (n.phase is Phase.FAILED or timed_out(n, spec, now))
        and _within_failure_window(n, spec, now)
    ]
    if len(counted) <= budget:
        return None
    window = spec.failure_window_seconds
    within = f" within {window:g}s" if window > 0 else ""
    return (
        f"failure budget exceeded: {len(counted)} failed node(s){within} ({', '.join(counted)}) "
        f"> budget {spec.failure_budget} (= {budget} of {total})"
    )


@dataclass(frozen=True)
class CanaryGate:
    holds: bool
    """The nodes of the update set after the canaries wait."""
    pause_reason: str | None = None
    """Set once the canaries are updated: the pool waits for a resume or the soak."""


def canary_gate(
    spec: PoolSpec, state: PoolState, canaries: Sequence[NodeFacts], now: float
) -> CanaryGate:
    """The canary gate, given the canary nodes (none: no canary configured)."""
    if not canaries or state.canary_released:
        return CanaryGate(holds=False)
    done = all(
        n.current_version == spec.target_version and n.phase is Phase.IDLE and n.healthy
        for n in canaries
    )
    if not done:
        return CanaryGate(holds=True)
    updated = f"canary: the first {len(canaries)} node(s) are updated"
    if spec.canary_soak_seconds <= 0:
        return CanaryGate(True, f"{updated}; waiting for an explicit resume")
    soaked_for = now - max(n.last_transition for n in canaries)
    if soaked_for >= spec.canary_soak_seconds:
        return CanaryGate(holds=False)  # soaked long enough: released without a resume
    return CanaryGate(
        True,
        f"{updated}; soaking {soaked_for:.0f}s of {spec.canary_soak_seconds:g}s (or resume)",
    )


@dataclass(frozen=True)
class Gates:
    """What holds the pool back in this plan."""

    pause_reason: str | None
    """No new action while set (persisted pause, failure budget, spec, canary)."""
    new_pause: str | None
    """The failure budget paused the pool in this plan (the caller persists it)."""
    canary_hold: int = 0
    """N > 0: only the first N nodes of the update set may move."""


def gates(
    spec: PoolSpec,
    state: PoolState,
    order: Sequence[NodeFacts],
    targets: Mapping[str, NodeTarget],
    now: float,
) -> Gates:
    """The gates in order of precedence: a persisted pause, the failure budget,
    ``paused = true``, then the canary gate."""
    if state.pause_reason is not None:
        return Gates(state.pause_reason, None)
    new_pause = budget_pause(spec, order, now)
    if new_pause is not None:
        return Gates(new_pause, new_pause)
    if spec.paused:
        return Gates("paused by the pool spec (paused = true)", None)
    canaries = [n for n in order if targets[n.name].canary]
    canary = canary_gate(spec, state, canaries, now)
    return Gates(canary.pause_reason, None, len(canaries) if canary.holds else 0)


# Step 3: the decision per node ----------------------------------------------


class Bucket(StrEnum):
    """The status bucket a node is counted in (``PoolStatus``)."""

    UPDATED = "updated"
    HELD = "held"
    UPDATING = "updating"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True)
class Decision:
    """One node's decision: its bucket, why it waits, and what it is told to do."""

    bucket: Bucket
    reason: str | None = None
    action: ActionKind | None = None
    """STAGE is planned as is; REBOOT and ROLLBACK wait for a slot (step 4)."""
    failure: StepFailure | None = None
    """The controller fails the node with this failure (its reboot timed out)."""


def decide(
    node: NodeFacts, target: NodeTarget, gate: Gates, spec: PoolSpec, now: float
) -> Decision:
    """The first that applies: settled or moving already, held by a gate, next move."""
    return (
        _settled(node, target, spec, now)
        or _gated(node, target, gate)
        or _next_move(node, target, spec, now)
    )


def _settled(node: NodeFacts, target: NodeTarget, spec: PoolSpec, now: float) -> Decision | None:
    """Failed, on its desired version, or rebooting: no gate changes that."""
    want = target.version
    if node.phase is Phase.FAILED:
        return Decision(Bucket.FAILED, _failed_reason(node, want))
    if node.current_version == want and node.phase is not Phase.REBOOTING:
        bucket = Bucket.UPDATED if target.in_update_set else Bucket.HELD
        reason = None if node.healthy else f"on {want} but unhealthy: counts as unavailable"
        return Decision(bucket, reason)
    if timed_out(node, spec, now):
        granted = node.staged_version or want
        return Decision(
            Bucket.FAILED,
            f"reboot timeout: granted a reboot into {granted} more than "
            f"{spec.reboot_timeout_seconds:g}s ago and not back healthy: "
            "counted as failed and unavailable",
            failure=reboot_timeout_failure(granted, spec.reboot_timeout_seconds),
        )
    if node.phase is Phase.REBOOTING:
        return Decision(Bucket.UPDATING, f"rebooting into {node.staged_version or want}")
    return None


_NOT_RETRIED = "not retried until the pool is resumed"


def _failed_reason(node: NodeFacts, want: str) -> str:
    failure = node.failure
    if failure is None:
        return f"failed while moving to {want} (on {node.current_version}); " + _NOT_RETRIED
    why = f"{describe_failure(failure)}; {_NOT_RETRIED}"
    if is_reboot_timeout(failure):
        # The controller's verdict, not the node's: a report proves it wrong.
        return f"{why} (or it reports back healthy on {failure.version})"
    return why


def _gated(node: NodeFacts, target: NodeTarget, gate: Gates) -> Decision | None:
    if gate.pause_reason is not None:
        return Decision(Bucket.PENDING, f"pool paused: {gate.pause_reason}")
    if gate.canary_hold and target.in_update_set and not target.canary:
        return Decision(
            Bucket.PENDING,
            f"canary: waits until the first {gate.canary_hold} node(s) are "
            "updated and the pool is resumed",
        )
    return None


def _next_move(node: NodeFacts, target: NodeTarget, spec: PoolSpec, now: float) -> Decision:
    """Stage first (free), then a reboot or rollback candidate for a slot."""
    want = target.version
    # A retry's backoff holds only the version that failed, not a newer target.
    failed_want = node.failure is not None and node.failure.version == want
    if node.retry_at is not None and now < node.retry_at and failed_want:
        return Decision(Bucket.PENDING, _retry_reason(node, node.retry_at, spec, now))
    # Rolling back needs no staging; everything else stages first, which costs
    # no availability.
    if not target.rolls_back and node.staged_version != want:
        if node.phase is Phase.STAGING:
            return Decision(Bucket.UPDATING, f"staging {want}")
        return Decision(Bucket.PENDING, f"told to stage {want}", ActionKind.STAGE)
    if not node.healthy:
        return Decision(Bucket.PENDING, "unhealthy: will not be rebooted until healthy")
    window = spec.maintenance_window
    if window is not None and not window.is_open(now):
        return Decision(Bucket.PENDING, f"staged {want}; outside the maintenance window ({window})")
    return Decision(
        Bucket.PENDING, action=ActionKind.ROLLBACK if target.rolls_back else ActionKind.REBOOT
    )


def _retry_reason(node: NodeFacts, retry_at: float, spec: PoolSpec, now: float) -> str:
    failed = "a step failed" if node.failure is None else describe_failure(node.failure)
    at = dt.datetime.fromtimestamp(retry_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{failed}; retry {node.step_attempts} of {spec.max_step_retries} "
        f"in {retry_at - now:.0f}s (at {at})"
    )


# Step 4: slots (maxUnavailable) ---------------------------------------------


def max_unavailable_of(spec: PoolSpec, total: int) -> int:
    """``maxUnavailable`` as a count: ``N%`` rounds down, and at least 1."""
    return max(1, spec.max_unavailable.resolve(total, round_up=False))


def is_unavailable(node: NodeFacts, desired: str, spec: PoolSpec, now: float) -> bool:
    if not node.healthy or node.phase is Phase.REBOOTING:
        return True
    # minReadySeconds: a node freshly switched to its desired version is not
    # yet counted as available, which paces the waves.
    return (
        node.phase is Phase.IDLE
        and node.current_version == desired
        and now - node.last_transition < spec.min_ready_seconds
    )


def grant_slots(
    candidates: Sequence[NodeFacts], down: Sequence[NodeFacts], free: int, spec: PoolSpec
) -> list[str]:
    """The candidates that get one of ``free`` slots, by name in the order picked.

    One slot at a time: the highest priority, then (with ``scatter_label``) the
    zone with the fewest nodes down or picked so far, then the name.
    """
    label = spec.scatter_label
    load: dict[str, int] = {}
    if label:
        for node in down:
            zone = node.labels.get(label, "")
            load[zone] = load.get(zone, 0) + 1

    def rank(node: NodeFacts) -> tuple[int, int, str]:
        zone_load = load.get(node.labels.get(label, ""), 0) if label else 0
        return (-priority_of(node, spec.priority_label), zone_load, node.name)

    remaining = list(candidates)
    picked: list[str] = []
    while remaining and len(picked) < free:
        best = min(remaining, key=rank)
        remaining.remove(best)
        picked.append(best.name)
        if label:
            zone = best.labels.get(label, "")
            load[zone] = load.get(zone, 0) + 1
    return picked


@dataclass(frozen=True)
class Slots:
    """The reboot slots of one plan."""

    limit: int
    """maxUnavailable as a count."""
    unavailable: int
    """Nodes unavailable before this plan's grants, for any reason."""
    granted: tuple[Action, ...]
    """Reboots and rollbacks granted, in the order the slots were given."""
    waiting: Mapping[str, str]
    """Candidates left without a slot, with their reason."""


def slots(
    spec: PoolSpec,
    order: Sequence[NodeFacts],
    targets: Mapping[str, NodeTarget],
    candidates: Sequence[Action],
    now: float,
) -> Slots:
    """Grant reboot/rollback ``candidates`` (in rank order) while the nodes that
    are unavailable, already or by this plan's grants, stay within maxUnavailable."""
    limit = max_unavailable_of(spec, len(order))
    down = [n for n in order if is_unavailable(n, targets[n.name].version, spec, now)]
    by_name = {n.name: n for n in order}
    wanted = {c.node: c for c in candidates}
    picked = grant_slots([by_name[c.node] for c in candidates], down, limit - len(down), spec)
    chosen = set(picked)
    left = f"waiting for a reboot slot ({len(down)} of maxUnavailable {limit} unavailable)"
    return Slots(
        limit=limit,
        unavailable=len(down),
        granted=tuple(wanted[name] for name in picked),
        waiting={c.node: f"staged {c.version}; {left}" for c in candidates if c.node not in chosen},
    )


# Step 5: stall (failed nodes hold every slot) ------------------------------


def is_failed(node: NodeFacts, spec: PoolSpec, now: float) -> bool:
    """Failed, or past its reboot timeout (failed by this plan)."""
    return node.phase is Phase.FAILED or timed_out(node, spec, now)


def why_failed(node: NodeFacts, spec: PoolSpec, now: float) -> str:
    """A failed node's cause in a few words: ``reboot timeout``, ``deploy of v2 failed``."""
    if timed_out(node, spec, now) or is_reboot_timeout(node.failure):
        return "reboot timeout"
    if node.failure is not None:
        return f"{node.failure.step} of {node.failure.version} failed"
    return f"failed on {node.current_version}"


def stall(
    spec: PoolSpec,
    order: Sequence[NodeFacts],
    targets: Mapping[str, NodeTarget],
    moving: Sequence[str],
    now: float,
) -> str | None:
    """Why the pool cannot go on by itself, or None.

    ``moving``: the nodes that still have to move (told to stage, staging,
    waiting for a slot, a retry or the window). Stalled when the failed nodes
    that are down fill maxUnavailable: they are not retried but by a resume (or
    come back by themselves), so none of ``moving`` would ever get a slot.
    """
    if not moving:
        return None
    limit = max_unavailable_of(spec, len(order))
    holding = [
        n
        for n in order
        if is_failed(n, spec, now) and is_unavailable(n, targets[n.name].version, spec, now)
    ]
    if len(holding) < limit:
        return None
    held = ", ".join(f"{n.name} ({why_failed(n, spec, now)})" for n in holding)
    return f"every reboot slot is held by failed nodes: {held}"


# The plan: the five steps, then the counts ----------------------------------


def plan(spec: PoolSpec, state: PoolState, nodes: Sequence[NodeFacts], now: float) -> Plan:
    """Decide the next actions for one pool; see the module docstring for the rules."""
    order = ranked(nodes, spec)
    by_name = {n.name: n for n in order}
    targets = desired_versions(spec, order)
    gate = gates(spec, state, order, targets, now)
    decisions = {n.name: decide(n, targets[n.name], gate, spec, now) for n in order}
    candidates = [
        Action(d.action, name, targets[name].version)
        for name, d in decisions.items()
        if d.action is not None and d.action is not ActionKind.STAGE
    ]
    slot = slots(spec, order, targets, candidates, now)
    granted = {a.node for a in slot.granted}
    buckets = Counter(
        Bucket.UPDATING if name in granted else d.bucket for name, d in decisions.items()
    )
    staging = [
        Action(ActionKind.STAGE, name, targets[name].version)
        for name, d in decisions.items()
        if d.action is ActionKind.STAGE
    ]
    reasons = {name: d.reason for name, d in decisions.items() if d.reason is not None}
    moving = [
        name
        for name, d in decisions.items()
        if name not in granted
        and (
            d.bucket is Bucket.PENDING
            or (d.bucket is Bucket.UPDATING and by_name[name].phase is Phase.STAGING)
        )
    ]
    stalled = None if gate.pause_reason is not None else stall(spec, order, targets, moving, now)
    return Plan(
        actions=(*staging, *slot.granted),
        desired={name: t.version for name, t in targets.items()},
        waiting=reasons | dict(slot.waiting),
        status=PoolStatus(
            total=len(order),
            updated=buckets[Bucket.UPDATED],
            updating=buckets[Bucket.UPDATING],
            pending=buckets[Bucket.PENDING],
            failed=buckets[Bucket.FAILED],
            held=buckets[Bucket.HELD],
            unavailable=slot.unavailable,
            max_unavailable=slot.limit,
            paused_reason=gate.pause_reason,
            stalled_reason=stalled,
        ),
        pause_reason=gate.new_pause,
        failures={name: d.failure for name, d in decisions.items() if d.failure is not None},
    )

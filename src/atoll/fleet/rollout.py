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
* **reboot timeout** (``reboot_timeout_seconds``, 0 = none): a node still
  ``rebooting`` longer after its grant (silent, or back but not healthy yet)
  counts as failed (and stays unavailable).
* **paused** (by the spec or by the state): no new action; nodes already
  rebooting finish.
* **maintenance window** (days, start ``HH:MM``, length in minutes, IANA time
  zone): outside it no reboot or rollback is granted; staging continues, since
  it costs no availability. A window may cross midnight (it belongs to the day
  it starts on).

Every node ends up in exactly one status bucket and every node without an
action that is not done gets a human-readable reason. The caller (the server)
persists the decisions; a reboot grant is persisted as phase ``rebooting`` so a
restarted controller counts it as unavailable.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from zoneinfo import ZoneInfo

_QUANTITY = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


class Phase(StrEnum):
    """Where a node is in its update cycle (as last persisted by the controller)."""

    IDLE = "idle"
    STAGING = "staging"
    STAGED = "staged"
    REBOOTING = "rebooting"
    FAILED = "failed"


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
    reboot_timeout_seconds: float = 0.0
    canary_soak_seconds: float = 0.0
    failure_window_seconds: float = 0.0
    maintenance_window: MaintenanceWindow | None = None


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


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    desired: Mapping[str, str]
    waiting: Mapping[str, str]
    status: PoolStatus
    pause_reason: str | None
    """Set when the planner itself paused the pool (failure budget) in this plan."""


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


def plan(spec: PoolSpec, state: PoolState, nodes: Sequence[NodeFacts], now: float) -> Plan:
    """Decide the next actions for one pool; see the module docstring for the rules."""
    order = ranked(nodes, spec)
    total = len(order)
    partition = min(total, spec.partition.resolve(total, round_up=True))
    update_count = total - partition
    max_unavailable = max(1, spec.max_unavailable.resolve(total, round_up=False))
    budget = spec.failure_budget.resolve(total, round_up=False)

    desired: dict[str, str] = {}
    in_update_set: dict[str, bool] = {}
    for index, node in enumerate(order):
        in_set = index < update_count
        in_update_set[node.name] = in_set
        if in_set:
            desired[node.name] = spec.target_version
        else:
            desired[node.name] = spec.previous_version or node.current_version
    canary_names = {n.name for n in order[: min(spec.canary, update_count)] if spec.canary > 0}

    def timed_out(n: NodeFacts) -> bool:
        return (
            n.phase is Phase.REBOOTING
            and spec.reboot_timeout_seconds > 0
            and now - n.last_transition > spec.reboot_timeout_seconds
        )

    def recent(n: NodeFacts) -> bool:
        if spec.failure_window_seconds <= 0:
            return True
        # A timed-out node failed when its timeout expired, not when it was granted.
        failed_at = n.last_transition + (spec.reboot_timeout_seconds if timed_out(n) else 0.0)
        return now - failed_at <= spec.failure_window_seconds

    failed = [n for n in order if n.phase is Phase.FAILED or timed_out(n)]
    counted = [n for n in failed if recent(n)]
    pause_reason = state.pause_reason
    new_pause: str | None = None
    if pause_reason is None and len(counted) > budget:
        names = ", ".join(n.name for n in counted)
        within = (
            f" within {spec.failure_window_seconds:g}s" if spec.failure_window_seconds > 0 else ""
        )
        new_pause = (
            f"failure budget exceeded: {len(counted)} failed node(s){within} ({names}) "
            f"> budget {spec.failure_budget} (= {budget} of {total})"
        )
        pause_reason = new_pause
    if pause_reason is None and spec.paused:
        pause_reason = "paused by the pool spec (paused = true)"
    canary_gate = bool(canary_names) and not state.canary_released
    if pause_reason is None and canary_gate:
        canaries = [n for n in order if n.name in canary_names]
        done = all(
            n.current_version == spec.target_version and n.phase is Phase.IDLE and n.healthy
            for n in canaries
        )
        soaked_for = now - max(n.last_transition for n in canaries)
        if done and spec.canary_soak_seconds > 0:
            if soaked_for >= spec.canary_soak_seconds:
                canary_gate = False  # soaked long enough: released without a resume
            else:
                pause_reason = (
                    f"canary: the first {len(canary_names)} node(s) are updated; soaking "
                    f"{soaked_for:.0f}s of {spec.canary_soak_seconds:g}s (or resume)"
                )
        elif done:
            pause_reason = (
                f"canary: the first {len(canary_names)} node(s) are updated; "
                "waiting for an explicit resume"
            )

    unavailable = {n.name for n in order if is_unavailable(n, desired[n.name], spec, now)}
    zone_load: dict[str, int] = {}
    if spec.scatter_label is not None:
        for n in order:
            if n.name in unavailable:
                zone = n.labels.get(spec.scatter_label, "")
                zone_load[zone] = zone_load.get(zone, 0) + 1

    actions: list[Action] = []
    waiting: dict[str, str] = {}
    reboot_candidates: list[tuple[NodeFacts, ActionKind]] = []
    updated = updating = pending = held = 0
    for node in order:
        want = desired[node.name]
        on_want = node.current_version == want
        if node.phase is Phase.FAILED:
            waiting[node.name] = (
                f"failed while moving to {want} (on {node.current_version}); "
                "not retried until the pool is resumed"
            )
            continue
        if on_want and node.phase is not Phase.REBOOTING:
            if in_update_set[node.name]:
                updated += 1
            else:
                held += 1
            if not node.healthy:
                waiting[node.name] = f"on {want} but unhealthy: counts as unavailable"
            continue
        if timed_out(node):
            waiting[node.name] = (
                f"granted a reboot into {node.staged_version or want} more than "
                f"{spec.reboot_timeout_seconds:g}s ago and not back healthy: "
                "counted as failed and unavailable"
            )
            continue
        if node.phase is Phase.REBOOTING:
            updating += 1
            waiting[node.name] = f"rebooting into {node.staged_version or want}"
            continue
        if pause_reason is not None:
            pending += 1
            waiting[node.name] = f"pool paused: {pause_reason}"
            continue
        if canary_gate and in_update_set[node.name] and node.name not in canary_names:
            pending += 1
            waiting[node.name] = (
                f"canary: waits until the first {len(canary_names)} node(s) are "
                "updated and the pool is resumed"
            )
            continue
        # Rolling back to the previous deployment needs no staging: it is still
        # on disk. Everything else stages first, which costs no availability.
        rolling_back = not in_update_set[node.name] and node.current_version == spec.target_version
        if not rolling_back and node.staged_version != want:
            if node.phase is Phase.STAGING:
                updating += 1
                waiting[node.name] = f"staging {want}"
            else:
                pending += 1
                actions.append(Action(ActionKind.STAGE, node.name, want))
                waiting[node.name] = f"told to stage {want}"
            continue
        if not node.healthy:
            pending += 1
            waiting[node.name] = "unhealthy: will not be rebooted until healthy"
            continue
        if spec.maintenance_window is not None and not spec.maintenance_window.is_open(now):
            pending += 1
            waiting[node.name] = (
                f"staged {want}; outside the maintenance window ({spec.maintenance_window})"
            )
            continue
        reboot_candidates.append((node, ActionKind.ROLLBACK if rolling_back else ActionKind.REBOOT))

    slots = max_unavailable - len(unavailable)
    remaining = list(reboot_candidates)
    while remaining and slots > 0:
        best = min(
            remaining,
            key=lambda c: (
                -priority_of(c[0], spec.priority_label),
                zone_load.get(c[0].labels.get(spec.scatter_label, ""), 0)
                if spec.scatter_label
                else 0,
                c[0].name,
            ),
        )
        remaining.remove(best)
        node, kind = best
        actions.append(Action(kind, node.name, desired[node.name]))
        updating += 1
        slots -= 1
        if spec.scatter_label is not None:
            zone = node.labels.get(spec.scatter_label, "")
            zone_load[zone] = zone_load.get(zone, 0) + 1
    for node, _kind in remaining:
        pending += 1
        waiting[node.name] = (
            f"staged {desired[node.name]}; waiting for a reboot slot "
            f"({len(unavailable)} of maxUnavailable {max_unavailable} unavailable)"
        )

    status = PoolStatus(
        total=total,
        updated=updated,
        updating=updating,
        pending=pending,
        failed=len(failed),
        held=held,
        unavailable=len(unavailable),
        max_unavailable=max_unavailable,
        paused_reason=pause_reason,
    )
    return Plan(
        actions=tuple(actions),
        desired=desired,
        waiting=waiting,
        status=status,
        pause_reason=new_pause,
    )

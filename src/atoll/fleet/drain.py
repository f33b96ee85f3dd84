"""Draining a Node before its reboot: the operator's pure decisions.

A granted node is cordoned and marked for the autoscalers in the grant's
patch, then drained through the Eviction API on every reconcile until no pod
that must move is left; only then may its agent reboot. This module decides,
from the objects the API server returned and an injected ``now``:

* what happens to each pod (:func:`fate`): DaemonSet pods, mirror (static)
  pods and finished pods stay, as with ``kubectl drain``; a pod being deleted
  is waited for; every other pod is evicted;
* which PodDisruptionBudgets cover a pod whose eviction was refused
  (:func:`budgets_covering`, the label selector rules of ``policy/v1``), so
  the report names them;
* where a drain stands (:func:`progress`): drained, progressing, or blocked
  (an eviction refused, or a pod still there past its deletion deadline), and
  what to do once it has been blocked longer than the pool's
  ``spec.drain.timeoutSeconds`` (:class:`OnTimeout`: keep waiting, skip the
  node, or delete the pods the budgets protect);
* the autoscaler marks (:func:`mark`, :func:`unmark`): Karpenter's
  ``karpenter.sh/do-not-disrupt`` and cluster-autoscaler's
  ``scale-down-disabled`` are set on a cordoned node so neither removes it
  mid-upgrade, and only the marks the operator added are removed afterwards.

The operator (:mod:`atoll.fleet.operator`) applies these decisions.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atoll.errors import InputError

AUTOSCALER_MARKS: Mapping[str, str] = {
    "karpenter.sh/do-not-disrupt": "true",
    "cluster-autoscaler.kubernetes.io/scale-down-disabled": "true",
}
A_MARKED = "atoll.dev/autoscaler-marks"
"""The marks the operator added (comma-separated): the only ones it removes."""

MIRROR = "kubernetes.io/config.mirror"
DEFAULT_TIMEOUT = 600.0
TERMINATING_SLACK = 30.0
"""Seconds past a pod's deletion deadline before it counts as not terminating."""


class OnTimeout(enum.StrEnum):
    WAIT = "wait"
    """Keep trying (the default): the report says the drain is blocked and why."""
    SKIP = "skip"
    """Give the grant back: the node is uncordoned, stays on its version and is
    left out of the pool until the pool is resumed."""
    DELETE = "delete"
    """Delete the pods whose eviction is refused (the budget is overridden)."""


@dataclass(frozen=True)
class DrainPolicy:
    timeout_seconds: float = DEFAULT_TIMEOUT
    on_timeout: OnTimeout = OnTimeout.WAIT


DRAIN_KEYS = ("timeoutSeconds", "onTimeout")


def policy_from_object(source: str, raw: object) -> DrainPolicy:
    """A NodePool's ``spec.drain`` (absent: wait, 600 s); errors name the key."""
    if raw is None:
        return DrainPolicy()
    if not isinstance(raw, Mapping):
        raise InputError(f"{source}: spec.drain must be an object, got {raw!r}")
    unknown = set(raw) - set(DRAIN_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown key(s) spec.drain.{sorted(unknown)}")
    timeout = raw.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise InputError(
            f"{source}: spec.drain.timeoutSeconds: expected seconds >= 0, got {timeout!r}"
        )
    choice = raw.get("onTimeout", OnTimeout.WAIT.value)
    try:
        on_timeout = OnTimeout(choice)
    except ValueError:
        allowed = ", ".join(repr(o.value) for o in OnTimeout)
        raise InputError(
            f"{source}: spec.drain.onTimeout: expected one of {allowed}, got {choice!r}"
        ) from None
    return DrainPolicy(float(timeout), on_timeout)


# --- pods ----------------------------------------------------------------------------------


class Fate(enum.StrEnum):
    STAYS = "stays"
    EVICT = "evict"
    TERMINATING = "terminating"


def pod_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name')}"


def fate(pod: Mapping[str, Any]) -> Fate:
    """What a drain does with one pod of the node."""
    meta = pod.get("metadata") or {}
    if any(o.get("kind") == "DaemonSet" for o in meta.get("ownerReferences") or []):
        return Fate.STAYS
    if MIRROR in (meta.get("annotations") or {}):
        return Fate.STAYS
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return Fate.STAYS
    if meta.get("deletionTimestamp"):
        return Fate.TERMINATING
    return Fate.EVICT


def _timestamp(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def stuck(pod: Mapping[str, Any], now: float) -> bool:
    """A pod being deleted, still there well past its deadline (``deletionTimestamp``
    is when its grace period ends): its kubelet is gone or it ignores SIGTERM."""
    deadline = _timestamp((pod.get("metadata") or {}).get("deletionTimestamp"))
    return deadline is not None and now > deadline + TERMINATING_SLACK


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A ``policy/v1`` label selector: ``None`` selects nothing, ``{}`` everything."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(str(operator), False)
        if not ok:
            return False
    return True


def budgets_covering(
    pod: Mapping[str, Any], budgets: Sequence[Mapping[str, Any]]
) -> tuple[str, ...]:
    """``namespace/name`` of each PodDisruptionBudget of the pod's namespace selecting it."""
    meta = pod.get("metadata") or {}
    namespace, labels = meta.get("namespace", "default"), meta.get("labels") or {}
    found = []
    for budget in budgets:
        bmeta = budget.get("metadata") or {}
        if bmeta.get("namespace", "default") != namespace:
            continue
        if selector_matches((budget.get("spec") or {}).get("selector"), labels):
            found.append(f"{namespace}/{bmeta.get('name')}")
    return tuple(sorted(found))


# --- where a drain stands ------------------------------------------------------------------


@dataclass(frozen=True)
class Blocked:
    """A pod that keeps the node from draining, and why."""

    pod: str
    refused: bool = True
    """Its eviction was refused (429); ``False``: it is being deleted and does not go."""
    budgets: tuple[str, ...] = ()
    """The PodDisruptionBudgets selecting it (``namespace/name``)."""

    def __str__(self) -> str:
        if not self.refused:
            return f"{self.pod} does not terminate"
        if self.budgets:
            return (
                f"eviction of {self.pod} refused by PodDisruptionBudget {', '.join(self.budgets)}"
            )
        return f"eviction of {self.pod} refused (429: a PodDisruptionBudget allows no disruption)"

    def as_status(self, node: str) -> dict[str, Any]:
        return {"node": node, "pod": self.pod, "budgets": list(self.budgets), "reason": str(self)}


class Stage(enum.StrEnum):
    DRAINED = "drained"
    PROGRESSING = "progressing"
    BLOCKED = "blocked"
    SKIP = "skip"
    """Blocked past the timeout with ``onTimeout: skip``: give the grant back."""
    DELETE = "delete"
    """Blocked past the timeout with ``onTimeout: delete``: delete the blocked pods."""


@dataclass(frozen=True)
class Progress:
    stage: Stage
    reason: str
    blocked: tuple[Blocked, ...] = field(default=())


def progress(
    blocked: Sequence[Blocked],
    terminating: Sequence[str],
    since: float,
    now: float,
    policy: DrainPolicy,
) -> Progress:
    """Where a drain stands after one round of evictions (pure).

    ``blocked``: pods refused or not terminating; ``terminating``: pods being
    deleted within their grace period; ``since``: the drain's first round.
    """
    if not blocked and not terminating:
        return Progress(Stage.DRAINED, "")
    parts = [str(b) for b in blocked]
    if terminating:
        parts.append(f"waiting for {', '.join(terminating)} to terminate")
    reason = "; ".join(parts)
    if not blocked:
        return Progress(Stage.PROGRESSING, reason)
    elapsed = now - since
    if elapsed < policy.timeout_seconds or policy.on_timeout is OnTimeout.WAIT:
        after = (
            f" for {elapsed:.0f}s (drain timeout {policy.timeout_seconds:g}s, "
            f"onTimeout: {policy.on_timeout.value})"
        )
        return Progress(Stage.BLOCKED, f"drain blocked{after}: {reason}", tuple(blocked))
    stage = Stage.SKIP if policy.on_timeout is OnTimeout.SKIP else Stage.DELETE
    what = "node skipped" if stage is Stage.SKIP else "deleting the blocked pods"
    return Progress(
        stage,
        f"drain blocked past its timeout ({policy.timeout_seconds:g}s): {what}: {reason}",
        tuple(blocked),
    )


# --- autoscaler marks ----------------------------------------------------------------------


def mark(annotations: Mapping[str, str]) -> dict[str, str | None]:
    """The annotation changes that mark a node for the autoscalers (merge-patch values)."""
    added = [k for k in AUTOSCALER_MARKS if k not in annotations]
    changes: dict[str, str | None] = {k: AUTOSCALER_MARKS[k] for k in added}
    if added:
        changes[A_MARKED] = ",".join(added)
    return changes


def unmark(annotations: Mapping[str, str]) -> dict[str, str | None]:
    """The changes that remove the marks the operator added (``None`` deletes a key)."""
    if A_MARKED not in annotations:
        return {}
    ours = [k for k in annotations[A_MARKED].split(",") if k in AUTOSCALER_MARKS]
    changes: dict[str, str | None] = {k: None for k in ours if k in annotations}
    changes[A_MARKED] = None
    return changes

"""What ``atoll fleet operator`` checks before it starts: its CRD and its permissions.

The operator refuses to start, with one message naming everything that is
missing, rather than fail later in a reconcile (a refused eviction or a
refused status patch would otherwise only show as retries in a log):

* **the CRD**: the API server's discovery document of ``atoll.dev/v1alpha1``
  serves ``nodepools`` and its ``status`` subresource (discovery needs no
  permission; the CRD is installed by an administrator with
  ``kubectl apply -f deploy/kubernetes/nodepool-crd.yaml``: the operator does
  not hold the right to create CRDs, and should not);
* **each permission** in :func:`required` (:data:`REQUIRED`, and kopf's peering
  objects when replicas peer), asked with a ``SelfSubjectAccessReview`` (any
  authenticated identity may ask about itself). ``deploy/kubernetes/rbac.yaml``
  grants each of them (a unit test checks it), and a few more for kubectl users
  of the same role (``pods get``, ``nodepools update``).

Deciding what is missing and saying it are pure (:func:`missing`,
:func:`refusal`); :func:`check` asks the API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from atoll.errors import AtollError

GROUP = "atoll.dev"
VERSION = "v1alpha1"
PLURAL = "nodepools"


class PreflightError(AtollError):
    """The cluster lacks the CRD or the operator lacks a permission (exit 1)."""


@dataclass(frozen=True)
class Permission:
    """One verb on one resource (``group`` "" is the core API)."""

    group: str
    resource: str
    verb: str
    why: str
    subresource: str = ""

    def __str__(self) -> str:
        full = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{self.verb} {full}" + (f" ({self.group})" if self.group else "")


def _each(group: str, resource: str, verbs: str, why: str, sub: str = "") -> list[Permission]:
    return [Permission(group, resource, verb, why, sub) for verb in verbs.split()]


REQUIRED: tuple[Permission, ...] = (
    *_each(GROUP, PLURAL, "get list watch patch", "watch the pools (kopf's progress annotations)"),
    *_each(GROUP, PLURAL, "get patch", "write a pool's status", "status"),
    *_each("", "nodes", "get list watch patch", "read the agents' reports, grant, cordon"),
    *_each("", "pods", "list", "find the pods to drain"),
    *_each("", "pods", "delete", "a drain timeout with onTimeout: delete"),
    *_each("", "pods", "create", "drain through the Eviction API", "eviction"),
    *_each("policy", "poddisruptionbudgets", "list", "name the budget that blocks a drain"),
    *_each("", "events", "create", "report blocked drains and kopf's events"),
    *_each(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "list watch",
        "kopf notices CRDs that appear later",
    ),
)


# Only with ``--peering NAME`` (several replicas, one active): kopf's peering objects.
PEERING: tuple[Permission, ...] = tuple(
    _each("kopf.dev", "clusterkopfpeerings", "get list watch patch", "peer with other replicas")
)


def required(*, peering: bool) -> tuple[Permission, ...]:
    """What the operator must be allowed to do, run standalone or peering."""
    return REQUIRED + PEERING if peering else REQUIRED


def review(permission: Permission) -> dict[str, Any]:
    """The ``SelfSubjectAccessReview`` asking about ``permission`` (cluster-wide)."""
    attributes = {
        "group": permission.group,
        "resource": permission.resource,
        "verb": permission.verb,
    }
    if permission.subresource:
        attributes["subresource"] = permission.subresource
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }


def crd_served(discovery: Mapping[str, Any] | None) -> bool:
    """The discovery document of ``atoll.dev/v1alpha1`` serves nodepools and their status."""
    if discovery is None:
        return False
    names = {str(r.get("name")) for r in discovery.get("resources") or []}
    return {PLURAL, f"{PLURAL}/status"} <= names


def missing(answers: Iterable[tuple[Permission, bool]]) -> list[Permission]:
    return [permission for permission, allowed in answers if not allowed]


def refusal(identity: str, crd: bool, lacking: list[Permission]) -> str | None:
    """Why the operator must not start (``None``: it may)."""
    problems = []
    if not crd:
        problems.append(
            f"the NodePool CRD ({PLURAL}.{GROUP}, {VERSION}) is not served by this API server: "
            "kubectl apply -f deploy/kubernetes/nodepool-crd.yaml"
        )
    problems.extend(f"{identity} may not {p}: needed to {p.why}" for p in lacking)
    if not problems:
        return None
    return "atoll fleet operator cannot run:\n" + "\n".join(f"  {p}" for p in problems)


class Reviewer(Protocol):
    async def discovery(self, group_version: str) -> Mapping[str, Any] | None: ...

    async def allowed(self, review: Mapping[str, Any]) -> bool: ...


async def check(api: Reviewer, identity: str, *, peering: bool = False) -> None:
    """Raise :class:`PreflightError` naming what is missing; return when all is there."""
    crd = crd_served(await api.discovery(f"{GROUP}/{VERSION}"))
    answers = [(p, await api.allowed(review(p))) for p in required(peering=peering)]
    message = refusal(identity, crd, missing(answers))
    if message is not None:
        raise PreflightError(
            message,
            hint="kubectl apply -f deploy/kubernetes/rbac.yaml grants what the operator needs "
            "(to the service account atoll-system/atoll-fleet-operator; bind the ClusterRole "
            "atoll-fleet-operator to another identity to run as it)",
        )

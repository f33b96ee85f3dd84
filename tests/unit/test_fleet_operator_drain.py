"""The operator's drain decisions (atoll.fleet.drain), its start-up checks
(atoll.fleet.preflight) and what a drain writes on Nodes, statuses and Events
(atoll.fleet.nodepool): pure functions, tables, injected time. The same code
against a real API server: tests/integration/test_fleet_operator_cluster.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # pyyaml, a kopf dependency, ships no types

from atoll.errors import InputError
from atoll.fleet import drain, nodepool, preflight
from atoll.fleet.drain import Blocked, DrainPolicy, Fate, OnTimeout, Stage
from atoll.fleet.rollout import NodeFacts, Phase, PoolState, plan
from atoll.wire.kubenode import Grant

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def _pod(
    *,
    owner: str | None = None,
    mirror: bool = False,
    phase: str = "Running",
    deleting: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": "apps", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x"}]
    if mirror:
        meta["annotations"] = {drain.MIRROR: "abc"}
    if deleting:
        meta["deletionTimestamp"] = deleting
    return {"metadata": meta, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param(_pod(), Fate.EVICT, id="a bare pod is evicted"),
        pytest.param(_pod(owner="ReplicaSet"), Fate.EVICT, id="a ReplicaSet's pod is evicted"),
        pytest.param(_pod(owner="DaemonSet"), Fate.STAYS, id="a DaemonSet's pod stays"),
        pytest.param(_pod(mirror=True), Fate.STAYS, id="a mirror pod stays"),
        pytest.param(_pod(phase="Succeeded"), Fate.STAYS, id="a finished pod stays"),
        pytest.param(_pod(phase="Failed"), Fate.STAYS, id="a failed pod stays"),
        pytest.param(
            _pod(deleting="2026-01-01T00:00:00Z"), Fate.TERMINATING, id="being deleted: wait"
        ),
    ],
)
def test_fate_of_each_pod(pod: dict[str, Any], expected: Fate) -> None:
    assert drain.fate(pod) is expected


DEADLINE = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (DEADLINE - 10, False),
        (DEADLINE + drain.TERMINATING_SLACK, False),
        (DEADLINE + drain.TERMINATING_SLACK + 1, True),
    ],
)
def test_a_pod_is_stuck_only_well_past_its_deletion_deadline(now: float, expected: bool) -> None:
    assert drain.stuck(_pod(deleting="2026-01-01T00:00:00Z"), now) is expected
    assert drain.stuck(_pod(), now) is False


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        (None, {"app": "web"}, False),
        ({}, {"app": "web"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "1"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "web"]}]},
         {"app": "web"}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
         {"app": "web"}, False),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Bogus"}]}, {"app": "web"}, False),
    ],
)  # fmt: skip
def test_selector_matches(
    selector: dict[str, Any] | None, labels: dict[str, str], expected: bool
) -> None:
    assert drain.selector_matches(selector, labels) is expected


def test_budgets_covering_a_pod_are_its_namespaces_selecting_ones() -> None:
    def pdb(name: str, namespace: str, app: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": app}}},
        }

    pod = _pod(labels={"app": "web"})
    budgets = [pdb("z", "apps", "web"), pdb("a", "apps", "web"), pdb("o", "other", "web")]
    budgets.append(pdb("db", "apps", "db"))
    assert drain.budgets_covering(pod, budgets) == ("apps/a", "apps/z")
    assert drain.budgets_covering(pod, []) == ()


REFUSED = Blocked("apps/db-0", budgets=("apps/db",))
WAIT = DrainPolicy(60.0, OnTimeout.WAIT)
SKIP = DrainPolicy(60.0, OnTimeout.SKIP)
DELETE = DrainPolicy(60.0, OnTimeout.DELETE)


@pytest.mark.parametrize(
    ("blocked", "terminating", "now", "policy", "stage"),
    [
        pytest.param([], [], 0.0, WAIT, Stage.DRAINED, id="nothing left: drained"),
        pytest.param([], ["apps/a"], 999.0, SKIP, Stage.PROGRESSING, id="terminating: progressing"),
        pytest.param([REFUSED], [], 10.0, SKIP, Stage.BLOCKED, id="refused, within the timeout"),
        pytest.param([REFUSED], [], 1e6, WAIT, Stage.BLOCKED, id="wait: blocked for ever"),
        pytest.param([REFUSED], [], 60.0, SKIP, Stage.SKIP, id="past the timeout: skip"),
        pytest.param([REFUSED], ["apps/a"], 61.0, DELETE, Stage.DELETE, id="past it: delete"),
        pytest.param(
            [Blocked("apps/x", refused=False)], [], 61.0, DELETE, Stage.DELETE, id="stuck pod"
        ),
    ],
)
def test_progress_of_a_drain(
    blocked: list[Blocked], terminating: list[str], now: float, policy: DrainPolicy, stage: Stage
) -> None:
    step = drain.progress(blocked, terminating, since=0.0, now=now, policy=policy)
    assert step.stage is stage
    assert step.blocked == tuple(blocked if stage not in (Stage.DRAINED, Stage.PROGRESSING) else [])
    for pod in [*(b.pod for b in blocked), *terminating]:
        assert pod in step.reason


def test_the_blocked_reason_names_the_pod_and_the_budget() -> None:
    step = drain.progress([REFUSED], [], since=100.0, now=130.0, policy=WAIT)
    assert step.reason == (
        "drain blocked for 30s (drain timeout 60s, onTimeout: wait): "
        "eviction of apps/db-0 refused by PodDisruptionBudget apps/db"
    )
    assert str(Blocked("apps/x")) == (
        "eviction of apps/x refused (429: a PodDisruptionBudget allows no disruption)"
    )
    assert str(Blocked("apps/x", refused=False)) == "apps/x does not terminate"
    assert REFUSED.as_status("n1") == {
        "node": "n1",
        "pod": "apps/db-0",
        "budgets": ["apps/db"],
        "reason": str(REFUSED),
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, DrainPolicy()),
        ({}, DrainPolicy(drain.DEFAULT_TIMEOUT, OnTimeout.WAIT)),
        ({"timeoutSeconds": 30, "onTimeout": "delete"}, DrainPolicy(30.0, OnTimeout.DELETE)),
        ({"onTimeout": "skip"}, DrainPolicy(drain.DEFAULT_TIMEOUT, OnTimeout.SKIP)),
    ],
)
def test_drain_policy_of_a_pool(raw: object, expected: DrainPolicy) -> None:
    assert drain.policy_from_object("NodePool web", raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("fast", r"NodePool web: spec.drain must be an object"),
        ({"timeout": 3}, r"NodePool web: unknown key\(s\) spec.drain.\['timeout'\]"),
        ({"timeoutSeconds": -1}, r"spec.drain.timeoutSeconds: expected seconds >= 0, got -1"),
        ({"timeoutSeconds": True}, r"spec.drain.timeoutSeconds"),
        ({"onTimeout": "evict"}, r"spec.drain.onTimeout: expected one of 'wait', 'skip', "),
    ],
)
def test_invalid_drain_policy_names_the_key(raw: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        drain.policy_from_object("NodePool web", raw)
    with pytest.raises(InputError, match=message):
        nodepool.spec_from_object("web", {"version": "2", "drain": raw})


def test_marks_are_added_and_only_the_operators_removed() -> None:
    fresh = drain.mark({})
    assert fresh == {**drain.AUTOSCALER_MARKS, drain.A_MARKED: ",".join(drain.AUTOSCALER_MARKS)}
    assert drain.unmark({**{k: v for k, v in fresh.items() if v}}) == dict.fromkeys(fresh)
    # The admin set Karpenter's mark before: it is not recorded, so it stays afterwards.
    theirs = {"karpenter.sh/do-not-disrupt": "true"}
    ours = drain.mark(theirs)
    assert ours == {
        "cluster-autoscaler.kubernetes.io/scale-down-disabled": "true",
        drain.A_MARKED: "cluster-autoscaler.kubernetes.io/scale-down-disabled",
    }
    after = {**theirs, **{k: v for k, v in ours.items() if v}}
    assert drain.unmark(after) == {
        "cluster-autoscaler.kubernetes.io/scale-down-disabled": None,
        drain.A_MARKED: None,
    }
    assert drain.mark({**drain.AUTOSCALER_MARKS}) == {}
    assert drain.unmark({}) == {}


# --- preflight -----------------------------------------------------------------------------


def test_refusal_names_the_identity_and_each_missing_permission() -> None:
    eviction = next(p for p in preflight.REQUIRED if p.subresource == "eviction")
    budgets = next(p for p in preflight.REQUIRED if p.resource == "poddisruptionbudgets")
    answers = [(p, p not in (eviction, budgets)) for p in preflight.REQUIRED]
    lacking = preflight.missing(answers)
    assert lacking == [eviction, budgets]
    message = preflight.refusal("system:serviceaccount:a:b", True, lacking)
    assert message is not None
    assert message.splitlines()[1:] == [
        "  system:serviceaccount:a:b may not create pods/eviction: needed to drain through "
        "the Eviction API",
        "  system:serviceaccount:a:b may not list poddisruptionbudgets (policy): needed to "
        "name the budget that blocks a drain",
    ]
    assert preflight.refusal("me", True, []) is None
    no_crd = preflight.refusal("me", False, [])
    assert no_crd is not None
    assert "kubectl apply -f deploy/kubernetes/nodepool-crd.yaml" in no_crd


@pytest.mark.parametrize(
    ("discovery", "served"),
    [
        (None, False),
        ({"resources": [{"name": "nodepools"}]}, False),
        ({"resources": [{"name": "nodepools"}, {"name": "nodepools/status"}]}, True),
    ],
)
def test_crd_served(discovery: dict[str, Any] | None, served: bool) -> None:
    assert preflight.crd_served(discovery) is served


def test_a_review_asks_about_one_verb_cluster_wide() -> None:
    eviction = next(p for p in preflight.REQUIRED if p.subresource == "eviction")
    assert preflight.review(eviction)["spec"] == {
        "resourceAttributes": {
            "group": "",
            "resource": "pods",
            "verb": "create",
            "subresource": "eviction",
        }
    }


def test_peering_replicas_need_kopfs_peering_objects_too() -> None:
    standalone, peering = preflight.required(peering=False), preflight.required(peering=True)
    assert not any(p.resource == "clusterkopfpeerings" for p in standalone)
    assert {p.verb for p in peering if p.resource == "clusterkopfpeerings"} == {
        "get",
        "list",
        "watch",
        "patch",
    }


def test_the_shipped_cluster_role_grants_every_required_permission() -> None:
    documents = yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text(encoding="utf-8"))
    role = next(d for d in documents if d and d["kind"] == "ClusterRole")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for p in preflight.required(peering=True):
        full = f"{p.resource}/{p.subresource}" if p.subresource else p.resource
        assert (p.group, full, p.verb) in granted, str(p)


# --- what a drain writes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cordoned", "rebooting", "expected"),
    [(False, True, True), (True, True, None), (True, False, False), (False, False, None)],
)
def test_cordon_change(cordoned: bool, rebooting: bool, expected: bool | None) -> None:
    old = {nodepool.A_CORDONED: "true"} if cordoned else {}
    assert nodepool.cordon_change(old, rebooting) is expected


def test_a_skipped_node_gives_its_grant_back() -> None:
    node = NodeFacts("n1", {}, "1.0", "2.0", True, Phase.REBOOTING, 0.0)
    old = {
        nodepool.A_CORDONED: "true",
        nodepool.A_GRANTED: "2.0",
        nodepool.A_DRAIN_SINCE: "5.000",
        **drain.AUTOSCALER_MARKS,
        drain.A_MARKED: ",".join(drain.AUTOSCALER_MARKS),
    }
    grant, changes = nodepool.skip_changes(node, old, "2.0", "drain blocked", "web")
    assert changes[nodepool.A_SKIPPED] == "2.0"
    assert grant == Grant("1.0", False, False, "web", "drain blocked (resume the pool to retry)")
    assert changes[nodepool.A_PHASE] == Phase.IDLE.value
    removed = {k for k, v in changes.items() if v is None}
    assert removed == {
        nodepool.A_CORDONED,
        nodepool.A_GRANTED,
        nodepool.A_DRAIN_SINCE,
        drain.A_MARKED,
        *drain.AUTOSCALER_MARKS,
    }
    raw: list[dict[str, Any]] = [
        {"metadata": {"name": "n1", "annotations": {nodepool.A_SKIPPED: "2.0"}}},
        {"metadata": {"name": "n2", "annotations": {nodepool.A_SKIPPED: "1.5"}}},
        {"metadata": {"name": "n3"}},
    ]
    assert nodepool.skipped_nodes(raw, "2.0") == ["n1"]


def test_pool_event_is_a_warning_about_the_nodepool() -> None:
    pool = {"metadata": {"name": "web", "uid": "u-1"}}
    event = nodepool.pool_event(pool, "DrainBlocked", "node n1: blocked", DEADLINE)
    assert event["involvedObject"] == {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "NodePool",
        "name": "web",
        "uid": "u-1",
    }
    assert (event["type"], event["reason"], event["message"]) == (
        "Warning",
        "DrainBlocked",
        "node n1: blocked",
    )
    assert event["metadata"] == {"generateName": "web.", "namespace": "default"}
    assert event["firstTimestamp"] == "2026-01-01T00:00:00Z"


def _status(drains: nodepool.DrainReport, *, current: str = "2.0") -> dict[str, Any]:
    spec = nodepool.spec_from_object("web", {"version": "2.0"})
    facts = [NodeFacts("n1", {}, current, None, True, Phase.IDLE, 0.0)]
    result = plan(spec, PoolState(None), facts, 1000.0)
    memory = nodepool.PoolMemory(None, False, None)
    return nodepool.pool_status(result, memory, facts, [], 1, {}, drains, now=1000.0)


def test_pool_status_reports_blocked_drains_and_skipped_nodes() -> None:
    blocked = REFUSED.as_status("n1")
    status = _status(nodepool.DrainReport([blocked]), current="1.0")
    assert status["blockedDrains"] == [blocked]
    assert status["drainBlockedNodes"] == ["n1"]
    condition = next(c for c in status["conditions"] if c["type"] == "DrainBlocked")
    assert (condition["status"], condition["reason"]) == ("True", "DrainBlocked")
    assert condition["message"] == f"node n1: {REFUSED}"

    clear = _status(nodepool.DrainReport())
    assert (clear["phase"], clear["blockedDrains"], clear["skipped"]) == ("Completed", [], [])
    condition = next(c for c in clear["conditions"] if c["type"] == "DrainBlocked")
    assert condition["status"] == "False"

    skipped = _status(nodepool.DrainReport(skipped=["n9"]))
    assert (skipped["phase"], skipped["skipped"]) == ("Incomplete", ["n9"])
    complete = next(c for c in skipped["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "False"
    assert "1 skipped after a drain timeout" in complete["message"]


def test_a_condition_changes_at_the_injected_now_and_keeps_its_time_while_it_holds() -> None:
    fresh = _status(nodepool.DrainReport())
    paused = next(c for c in fresh["conditions"] if c["type"] == "Paused")
    assert paused["lastTransitionTime"] == "1970-01-01T00:16:40Z"  # now=1000.0
    old = {"conditions": [{**paused, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    spec = nodepool.spec_from_object("web", {"version": "2.0"})
    facts = [NodeFacts("n1", {}, "2.0", None, True, Phase.IDLE, 0.0)]
    result = plan(spec, PoolState(None), facts, 2000.0)
    memory = nodepool.PoolMemory(None, False, None)
    later = nodepool.pool_status(result, memory, facts, [], 1, old, now=2000.0)
    kept = next(c for c in later["conditions"] if c["type"] == "Paused")
    assert kept["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    changed = next(c for c in later["conditions"] if c["type"] == "Complete")
    assert changed["lastTransitionTime"] == "1970-01-01T00:33:20Z"

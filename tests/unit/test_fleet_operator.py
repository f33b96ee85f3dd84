"""The fleet operator's pure parts: NodePool specs, the shipped CRD, Node annotations.

Everything here runs in-process without an API server. The operator's wiring
(kopf against kmock's Kubernetes API emulator over loopback HTTP, and the
``atoll fleet operator`` process) is tested in
``tests/integration/test_fleet_operator.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # pyyaml, a kopf dependency, ships no types

from atoll.cli import main
from atoll.errors import InputError
from atoll.fleet import nodepool
from atoll.fleet import operator as op
from atoll.fleet.drain import DRAIN_KEYS, OnTimeout
from atoll.fleet.rollout import NodeFacts, Phase, Quantity, retry_backoff
from atoll.wire import kubenode
from atoll.wire.fleet import RebootPolicy, Step, StepFailure

CRD = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "nodepool-crd.yaml"


def test_spec_from_object_uses_the_pool_validator() -> None:
    spec = op.spec_from_object(
        "web",
        {
            "version": "2.0",
            "selector": {"matchLabels": {"role": "web"}},
            "strategy": {
                "maxUnavailable": "25%",
                "partition": 1,
                "maintenanceWindow": {"days": ["sat"], "start": "02:00", "lengthMinutes": 60},
            },
        },
    )
    assert spec.selector == {"role": "web"}
    assert spec.max_unavailable == Quantity(25, percent=True)
    assert spec.maintenance_window is not None and spec.maintenance_window.length_minutes == 60
    with pytest.raises(InputError, match=r"NodePool web: strategy.max_unavailable"):
        op.spec_from_object("web", {"version": "2", "strategy": {"maxUnavailable": "lots"}})
    with pytest.raises(InputError, match=r"NodePool web: unknown key spec.strategy.maxSurge"):
        op.spec_from_object("web", {"version": "2", "strategy": {"maxSurge": 1}})


@pytest.mark.parametrize(
    ("strategy", "policy"),
    [({}, RebootPolicy.AUTO), ({"reboot": "auto"}, RebootPolicy.AUTO),
     ({"reboot": "full"}, RebootPolicy.FULL)],
)  # fmt: skip
def test_the_nodepool_says_how_its_nodes_restart_as_pool_toml_does(
    strategy: dict[str, str], policy: RebootPolicy
) -> None:
    # The same key in the same place as pool.toml's [strategy] reboot.
    assert op.spec_from_object("web", {"version": "2", "strategy": strategy}).reboot is policy


def test_a_bad_reboot_policy_names_the_nodepool_and_key() -> None:
    with pytest.raises(
        InputError,
        match=r"^NodePool web: strategy\.reboot: expected one of \['auto', 'full'\], got 'soft'",
    ):
        op.spec_from_object("web", {"version": "2", "strategy": {"reboot": "soft"}})


def test_the_grant_carries_the_pools_reboot_policy_outside_its_etag() -> None:
    memory = nodepool.PoolMemory(None, False, None)
    staged = [NodeFacts("n1", {}, "1", "2", True, Phase.STAGED, 0.0)]
    grants = {}
    for policy in RebootPolicy:
        spec = op.spec_from_object("web", {"version": "2", "strategy": {"reboot": policy.value}})
        result, _, facts = nodepool.decide(spec, memory, staged, 1000.0)
        grant = nodepool.grant_of(facts[0], result, "web", reboot=spec.reboot)
        assert (grant.may_reboot, grant.reboot) == (True, policy)
        assert grant.annotations()[kubenode.REBOOT] == policy.value
        assert grant.desired().reboot is policy  # what the agent's loop follows
        grants[policy] = grant
    # A policy changed meanwhile is written to the Node, but is no new grant.
    assert grants[RebootPolicy.AUTO].etag() == grants[RebootPolicy.FULL].etag()
    skipped, _ = nodepool.skip_changes(
        staged[0], {}, "2", "drain blocked", "web", reboot=RebootPolicy.FULL
    )
    assert skipped.reboot is RebootPolicy.FULL and not skipped.may_reboot


def test_example_nodepool_is_valid() -> None:
    example = yaml.safe_load((CRD.parent / "nodepool-example.yaml").read_text(encoding="utf-8"))
    assert example["apiVersion"] == f"{op.GROUP}/{op.VERSION}"
    assert example["kind"] == op.KIND
    spec = op.spec_from_object(example["metadata"]["name"], example["spec"])
    assert spec.scatter_label == "topology.kubernetes.io/zone"
    assert spec.max_unavailable == Quantity(20, percent=True)
    assert spec.reboot is RebootPolicy.AUTO


def test_crd_schema_matches_the_operator() -> None:
    """The shipped CRD accepts exactly the keys the operator understands."""
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    assert crd["spec"]["group"] == op.GROUP
    assert crd["spec"]["names"]["plural"] == op.PLURAL
    assert crd["spec"]["names"]["kind"] == op.KIND
    assert crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == op.VERSION
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["properties"]) == set(op.SPEC_KEYS)
    drain_keys = spec["properties"]["drain"]["properties"]
    assert set(drain_keys) == set(DRAIN_KEYS)
    assert drain_keys["onTimeout"]["enum"] == [o.value for o in OnTimeout]
    strategy = spec["properties"]["strategy"]["properties"]
    assert set(strategy) == set(op.STRATEGY_KEYS)
    assert strategy["reboot"]["enum"] == [p.value for p in RebootPolicy]
    assert set(strategy["maintenanceWindow"]["properties"]) == set(op.WINDOW_KEYS)


def test_cli_fails_at_once_on_missing_or_broken_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [\n", encoding="utf-8")
    # --kubeconfig sets $KUBECONFIG in this process: monkeypatch restores it afterwards.
    monkeypatch.setenv("KUBECONFIG", "")
    assert main(["fleet", "operator", "--kubeconfig", str(broken)]) == 2
    assert f"kubeconfig {broken}:" in capsys.readouterr().err

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert main(["fleet", "operator"]) == 2
    assert "no credentials" in capsys.readouterr().err


def _node(annotations: dict[str, str] | None = None, *, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "labels": {"role": "web"}, "annotations": annotations or {}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


C, S, H, F = kubenode.CURRENT_VERSION, kubenode.STAGED_VERSION, kubenode.HEALTHY, kubenode.FAILED
P, G, D, POOL = op.A_PHASE, op.A_GRANTED, kubenode.DESIRED_VERSION, kubenode.POOL


@pytest.mark.parametrize(
    ("node", "phase", "healthy"),
    [
        pytest.param(_node({C: "1"}), Phase.IDLE, True, id="fresh node: idle"),
        pytest.param(_node({C: "1"}, ready=False), Phase.IDLE, False, id="not Ready: unhealthy"),
        pytest.param(_node({C: "1", H: "false"}), Phase.IDLE, False, id="agent unhealthy"),
        pytest.param(
            _node({C: "1", S: "2", P: "staging", D: "2", POOL: "web"}),
            Phase.STAGED,
            True,
            id="staged",
        ),
        pytest.param(
            _node({C: "1", S: "2", P: "rebooting", G: "2", D: "2", POOL: "web"}),
            Phase.REBOOTING,
            True,
            id="granted, not rebooted yet",
        ),
        pytest.param(
            _node({C: "2", P: "rebooting", G: "2", D: "2", POOL: "web"}),
            Phase.IDLE,
            True,
            id="back on the granted version, Ready: idle",
        ),
        pytest.param(
            _node({C: "2", P: "rebooting", G: "2", D: "2", POOL: "web"}, ready=False),
            Phase.REBOOTING,
            False,
            id="back on the granted version, kubelet not Ready yet: still rebooting",
        ),
        pytest.param(
            _node({C: "2", H: "false", P: "rebooting", G: "2", D: "2", POOL: "web"}),
            Phase.REBOOTING,
            False,
            id="agent not healthy yet on the granted version (its trial): still rebooting",
        ),
        pytest.param(
            _node({C: "2", H: "false", F: "true", P: "rebooting", G: "2", D: "2", POOL: "web"}),
            Phase.FAILED,
            False,
            id="agent unhealthy outside a trial on the granted version: failed",
        ),
        pytest.param(
            _node({C: "1", F: "true", P: "rebooting", G: "2", D: "2", POOL: "web"}),
            Phase.FAILED,
            True,
            id="agent rolled back by itself: failed",
        ),
        pytest.param(_node({C: "1", P: "bogus"}), Phase.IDLE, True, id="hand-edited phase"),
    ],
)
def test_facts_of_node_annotations(node: dict[str, Any], phase: Phase, healthy: bool) -> None:
    facts = op.facts_of(node, now=100.0)
    assert facts is not None
    assert (facts.phase, facts.healthy) == (phase, healthy)
    assert facts.labels == {"role": "web"}


def test_unreported_node_is_not_planned() -> None:
    assert op.facts_of(_node(), now=0.0) is None


def _published(state: kubenode.NodeState, **grant: Any) -> dict[str, Any]:
    """A Node as the agent's patch (and the operator's grant, if any) leave it."""
    notes = {k: v for k, v in state.annotations().items() if v is not None}
    if grant:
        said = kubenode.Grant(**grant).annotations().items()
        notes.update({k: v for k, v in said if v is not None})
    return _node(notes)


def test_facts_of_what_the_agent_publishes() -> None:
    trial = kubenode.NodeState("2", healthy=False, commit="c2", health=kubenode.Health.TRIAL)
    node = _published(trial, version="2", stage=False, may_reboot=True, pool="web")
    node["metadata"]["annotations"].update({P: "rebooting", G: "2"})
    facts = op.facts_of(node, now=1.0)
    assert facts is not None
    assert (facts.current_version, facts.phase, facts.healthy) == ("2", Phase.REBOOTING, False)
    staged = _published(kubenode.NodeState("1", staged="2"), version="2", stage=True,
                        may_reboot=False, pool="web")  # fmt: skip
    staged["metadata"]["annotations"][P] = "staging"
    facts = op.facts_of(staged, now=1.0)
    assert facts is not None
    assert (facts.staged_version, facts.phase) == ("2", Phase.STAGED)


def test_a_failure_said_before_the_agent_saw_the_current_grant_is_not_news() -> None:
    """A resume retries a failed node: the operator moves it to staging with a new
    grant, while the Node still says the failure the agent said under the old one.
    It counts only once the agent answers the grant it has now."""
    rebooting = kubenode.Grant("2", stage=False, may_reboot=True, pool="web")
    resumed = kubenode.Grant("2", stage=True, may_reboot=False, pool="web")
    rolled_back = kubenode.NodeState("1", failed=True, observed=rebooting.etag())

    def phase_of(state: kubenode.NodeState, grant: kubenode.Grant, phase: str) -> Phase:
        node = _published(state, **vars(grant))
        node["metadata"]["annotations"][P] = phase
        facts = op.facts_of(node, now=1.0)
        assert facts is not None
        return facts.phase

    assert phase_of(rolled_back, rebooting, "rebooting") is Phase.FAILED
    assert phase_of(rolled_back, resumed, "staging") is Phase.STAGING
    answered = replace(rolled_back, observed=resumed.etag())
    assert phase_of(answered, resumed, "staging") is Phase.FAILED  # still broken: news
    fixed = kubenode.NodeState("1", observed=resumed.etag())
    assert phase_of(fixed, resumed, "staging") is Phase.STAGING


FETCH = StepFailure(Step.FETCH, "2", "update server unreachable")
RETRY = op.spec_from_object(
    "web", {"version": "2", "strategy": {"onStepFailure": "retry", "maxStepRetries": 1}}
)


def test_a_step_failure_meets_the_pools_on_step_failure_and_is_remembered_on_the_node() -> None:
    staging = kubenode.Grant("2", stage=True, may_reboot=False, pool="web")
    failed = kubenode.NodeState(
        "1", failed=True, failure="fetch of 2 failed", observed=staging.etag(), step_failure=FETCH
    )

    def after(memory: dict[str, str | None], spec: Any, now: float) -> NodeFacts:
        node = _published(failed, **vars(staging))
        node["metadata"]["annotations"].update({k: v for k, v in memory.items() if v})
        facts = op.facts_of(node, now=now, spec=spec)
        assert facts is not None
        return facts

    # fail (the default, and without a pool's spec): failed at once.
    default = after({P: "staging"}, op.spec_from_object("web", {"version": "2"}), 100.0)
    assert (default.phase, default.failure, default.step_attempts) == (Phase.FAILED, FETCH, 1)
    # retry: idle until the backoff has passed, the attempt counted and remembered.
    first = after({P: "staging"}, RETRY, 100.0)
    assert (first.phase, first.failure, first.step_attempts) == (Phase.IDLE, FETCH, 1)
    assert first.retry_at == 100.0 + retry_backoff(1)
    memory = nodepool.memory_of(first)
    assert memory[nodepool.A_RETRY_AT] == f"{first.retry_at:.3f}"
    assert memory[nodepool.A_STEP_ATTEMPTS] == "1"
    # The same failure again under the retry's grant: one retry was all (maxStepRetries 1).
    again = after({**memory, P: "staging"}, RETRY, 200.0)
    assert (again.phase, again.step_attempts, again.retry_at) == (Phase.FAILED, 2, None)
    cleared = nodepool.memory_of(replace(again, failure=None, step_attempts=0, retry_at=None))
    assert {k: cleared[k] for k in (nodepool.A_STEP_FAILURE, nodepool.A_RETRY_AT)} == {
        nodepool.A_STEP_FAILURE: None,  # removed from the Node by the merge patch
        nodepool.A_RETRY_AT: None,
    }
    # Hand-edited memory is forgotten, not an error.
    edited = after({P: "staging", nodepool.A_RETRY_AT: "soon", nodepool.A_STEP_ATTEMPTS: "x"},
                   RETRY, 100.0)  # fmt: skip
    assert (edited.phase, edited.step_attempts) == (Phase.IDLE, 1)


@pytest.mark.parametrize(
    ("notes", "error"),
    [
        ({C: "1", H: "yes"}, 'node n1: annotation atoll.dev/healthy: expected "true" or "false"'),
        ({C: "1", D: "2", POOL: "web", kubenode.STAGE: "1"}, "annotation atoll.dev/stage"),
        ({C: "1\n"}, "node n1: annotation atoll.dev/current-version: expected a version"),
    ],
)
def test_a_node_breaking_the_protocol_blocks_its_pool(notes: dict[str, str], error: str) -> None:
    good = _node({C: "1"})
    good["metadata"]["name"] = "n2"
    seen = nodepool.observe([_node(notes), good, {"metadata": {"name": "n3"}}], 0.0)
    assert [n.name for n in seen.facts] == ["n2"]
    assert seen.unreported == ["n3"]
    assert len(seen.unreadable) == 1
    assert error in seen.unreadable[0]
    status = nodepool.unreadable_status(seen.unreadable)
    assert status["phase"] == "Blocked"
    assert error in status["pauseReason"]


def test_owner_is_the_first_matching_pool_by_name() -> None:
    web = op.spec_from_object("web", {"version": "2", "selector": {"matchLabels": {"role": "web"}}})
    every = op.spec_from_object("all", {"version": "3"})
    assert op.owner([("web", web), ("all", every)], {"role": "web"}) == "all"
    assert op.owner([("web", web)], {"role": "db"}) is None


def _facts(name: str, phase: Phase) -> NodeFacts:
    return NodeFacts(name, {}, "1", None, True, phase, 0.0)


@pytest.mark.parametrize(
    ("phases", "groups"),
    [
        # a node finishing (c) and the next granted (b): the uncordon is written first
        ({"a": Phase.IDLE, "b": Phase.REBOOTING, "c": Phase.IDLE}, [["a", "c"], ["b"]]),
        ({"a": Phase.REBOOTING, "b": Phase.STAGED, "c": Phase.FAILED}, [["b", "c"], ["a"]]),
        ({"a": Phase.REBOOTING, "b": Phase.REBOOTING}, [["a", "b"]]),  # each group in order
        ({"a": Phase.STAGING, "b": Phase.IDLE}, [["a", "b"]]),
        ({}, []),
    ],
)
def test_nodes_leaving_rebooting_are_written_before_nodes_entering_it(
    phases: dict[str, Phase], groups: list[list[str]]
) -> None:
    facts = [_facts(name, phase) for name, phase in phases.items()]
    assert [[n.name for n in g] for g in nodepool.release_first(facts)] == groups


def test_bounded_keeps_the_order_the_limit_and_raises_after_every_call_ended() -> None:
    flight = {"now": 0, "most": 0}
    ended: list[int] = []

    async def call(i: int) -> int:
        flight["now"] += 1
        flight["most"] = max(flight["most"], flight["now"])
        await asyncio.sleep(0.001 * (i % 3))
        flight["now"] -= 1
        ended.append(i)
        if i == 2:
            raise RuntimeError("patch of node 2 refused")
        return i * 10

    assert asyncio.run(op.bounded([call(i) for i in (0, 1, 3, 4, 5)], 2)) == [0, 10, 30, 40, 50]
    assert flight["most"] == 2
    ended.clear()
    with pytest.raises(RuntimeError, match="node 2 refused"):
        asyncio.run(op.bounded([call(i) for i in range(6)], 3))
    assert sorted(ended) == list(range(6))  # none was left running

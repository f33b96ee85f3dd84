"""The Node protocol (atoll.wire.kubenode): encode, decode, validation, as tables."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from atoll.wire import kubenode
from atoll.wire.fleet import (
    Desired,
    ProtocolError,
    RebootPolicy,
    Report,
    Restart,
    RestartKind,
    Step,
    StepFailure,
)
from atoll.wire.kubenode import Grant, Health, NodeProtocolError, NodeState


def _node(
    annotations: dict[str, Any] | None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {"metadata": {"name": "n1", "labels": labels or {}, "annotations": annotations}}


def _applied(patch: dict[str, Any]) -> dict[str, Any]:
    """A fresh Node after a merge patch (``None`` values are removals)."""
    meta = patch["metadata"]
    return {
        "metadata": {
            "name": "n1",
            **{
                part: {k: v for k, v in meta.get(part, {}).items() if v is not None}
                for part in ("labels", "annotations")
            },
        }
    }


@pytest.mark.parametrize(
    ("version", "label"),
    [
        ("1.2.0", "1.2.0"),
        ("v2_rc-1", "v2_rc-1"),
        ("a" * 63, "a" * 63),
        ("a" * 64, None),  # longer than a label value: the annotation only
        ("1.0+build.5", None),  # '+' and '~' are valid in a manifest's version
        ("1.0~rc1", None),
        ("1.0-", None),  # alphanumeric at both ends
        ("-1.0", None),
        ("1 0", None),
    ],
)
def test_the_version_label_only_when_it_is_a_label_value(version: str, label: str | None) -> None:
    assert kubenode.version_label(version) == label
    patch = NodeState(version).patch()
    assert patch["metadata"]["labels"] == {kubenode.LABEL_VERSION: label}  # None removes it
    assert patch["metadata"]["annotations"][kubenode.CURRENT_VERSION] == version


STATES = [
    NodeState("1.0"),
    NodeState("1.0+b", staged="2.0", commit="c" * 64, health=Health.HEALTHY),
    NodeState("2.0", healthy=False, health=Health.TRIAL, commit="abc"),
    NodeState(
        "1.0",
        failed=True,
        failure="rolled back from " + "c" * 64 + ": the health trial failed",
        health=Health.ROLLED_BACK,
    ),
    NodeState("2.0", healthy=False, failed=True, health=Health.UNHEALTHY),
    NodeState("2.0", staged="3.0", observed="0123456789abcdef"),
    NodeState(
        "2.0",
        restart=Restart(
            RestartKind.SOFT, "same kernel and arguments", "2.0", "2026-12-07T07:00:00+00:00"
        ),
    ),
    NodeState(
        "1.0",
        failed=True,
        failure="fetch of 2.0 failed: update server unreachable",
        observed="0123456789abcdef",
        step_failure=StepFailure(Step.FETCH, "2.0", "update server unreachable"),
    ),
]


@pytest.mark.parametrize("state", STATES)
def test_a_state_reads_back_as_itself(state: NodeState) -> None:
    assert NodeState.from_node(_applied(state.patch())) == state


def test_the_agents_patch_sets_every_key_and_removes_what_it_does_not_say() -> None:
    patch = NodeState("2.0", staged="3.0", commit="c1", health=Health.HEALTHY).patch()
    assert patch == {
        "metadata": {
            "labels": {"atoll.dev/version": "2.0"},
            "annotations": {
                "atoll.dev/current-version": "2.0",
                "atoll.dev/commit": "c1",
                "atoll.dev/staged-version": "3.0",
                "atoll.dev/healthy": "true",
                "atoll.dev/failed": "false",
                "atoll.dev/failure": None,
                "atoll.dev/health": "healthy",
                "atoll.dev/restart": None,  # no restart recorded yet
                "atoll.dev/step-failure": None,
                "atoll.dev/update": None,  # an earlier agent's key goes
            },
        }
    }
    # Every key but the grant it answers, which the agent does not know yet (it has
    # just started): the Node keeps the one written last.
    assert set(patch["metadata"]["annotations"]) == {
        *kubenode.AGENT_ANNOTATIONS,
        *kubenode.RETIRED,
    } - {kubenode.OBSERVED_GRANT}
    observed = NodeState("2.0", observed="0123456789abcdef").patch()["metadata"]["annotations"]
    assert observed[kubenode.OBSERVED_GRANT] == "0123456789abcdef"
    assert not set(kubenode.AGENT_ANNOTATIONS) & set(kubenode.GRANT_ANNOTATIONS)


SOFT = Restart(RestartKind.SOFT, "same kernel and arguments", "2.0", "2026-12-07T07:00:00+00:00")


def test_the_last_restart_is_one_annotation_of_compact_json() -> None:
    notes = NodeState("2.0", restart=SOFT).patch()["metadata"]["annotations"]
    assert notes[kubenode.RESTART] == (
        '{"kind":"soft","reason":"same kernel and arguments","version":"2.0",'
        '"at":"2026-12-07T07:00:00+00:00"}'
    )
    assert kubenode.read_restart(notes) == SOFT
    assert kubenode.read_restart({}) is None  # an agent from before it, or no restart yet


def test_a_state_answers_the_grant_it_has_seen() -> None:
    grant = Grant("2.0", stage=True, may_reboot=False, pool="web")
    resumed = Grant("2.0", stage=True, may_reboot=False, pool="web", reason="resumed")
    retried = Grant("2.0", stage=True, may_reboot=True, pool="web")
    assert resumed.etag() == grant.etag() != retried.etag()  # the reason is not the grant
    seen = NodeState("1.0", failed=True, observed=grant.etag())
    assert seen.answers(grant) and seen.answers(resumed) and not seen.answers(retried)
    # An agent that does not say which grant it saw, or a node without a grant.
    assert NodeState("1.0", failed=True).answers(retried)
    assert seen.answers(None)


def test_defaults_for_what_an_agent_left_out() -> None:
    state = NodeState.from_node(_node({kubenode.CURRENT_VERSION: "1.0"}))
    assert state == NodeState("1.0", None, True, False, None, None, Health.UNKNOWN)
    assert NodeState.from_node(_node({})) is None  # not reported yet
    assert NodeState.from_node(_node(None)) is None
    assert NodeState.from_node({"metadata": {"name": "n1"}}) is None


def test_a_failure_is_read_only_with_failed() -> None:
    notes = {kubenode.CURRENT_VERSION: "1", kubenode.FAILED: "false", kubenode.FAILURE: "old"}
    state = NodeState.from_node(_node(notes))
    assert state is not None and state.failure is None


C, H, F = kubenode.CURRENT_VERSION, kubenode.HEALTHY, kubenode.FAILED
SOFT_JSON = kubenode.restart_text(SOFT)


@pytest.mark.parametrize(
    ("notes", "message"),
    [
        (
            {C: "1", H: "True"},
            'annotation atoll.dev/healthy: expected "true" or "false", got \'True\'',
        ),
        ({C: "1", F: "yes"}, 'annotation atoll.dev/failed: expected "true" or "false"'),
        ({C: ""}, "annotation atoll.dev/current-version: expected a version"),
        ({C: "   "}, "annotation atoll.dev/current-version: expected a version"),
        ({C: "1\n2"}, "annotation atoll.dev/current-version: expected a version"),
        ({C: "1" * 129}, "(1-128 printable ASCII characters), got '111111"),
        ({C: "1", kubenode.STAGED_VERSION: "\x00"}, "annotation atoll.dev/staged-version"),
        ({C: "1", kubenode.COMMIT: "c 1"}, "annotation atoll.dev/commit: expected 1-128 letters"),
        ({C: "1", kubenode.HEALTH: "fine"}, "annotation atoll.dev/health: expected one of"),
        (
            {C: "1", F: "true", kubenode.FAILURE: "a\nb"},
            "annotation atoll.dev/failure: expected one",
        ),
        ({C: "1", F: "true", kubenode.FAILURE: "x" * 501}, "at most 500 characters"),
        ({C: 1}, "annotation atoll.dev/current-version: expected a version (1-128"),
        ({C: "1", kubenode.OBSERVED_GRANT: "A-1"}, "annotation atoll.dev/observed-grant"),
    ],
)
def test_a_state_that_breaks_the_protocol_names_the_node_and_key(
    notes: dict[str, Any], message: str
) -> None:
    with pytest.raises(NodeProtocolError, match=r"^node n1: ") as raised:
        NodeState.from_node(_node(notes))
    assert message in str(raised.value)
    assert len(str(raised.value)) < 300  # a long value is not repeated whole


@pytest.mark.parametrize(
    ("notes", "message"),
    [
        ({C: "1", kubenode.RESTART: "soft"}, "annotation atoll.dev/restart: expected a restart"),
        ({C: "1", kubenode.RESTART: "[]"}, "restart must be a JSON object"),
        (
            {
                C: "1",
                kubenode.RESTART: '{"kind": "warm", "reason": "x", "version": "2", "at": "x"}',
            },
            "restart.kind must be one of soft, full, not 'warm'",
        ),
        (
            {C: "1", kubenode.RESTART: SOFT_JSON.replace("same kernel", "same\\u001bkernel")},
            "restart.reason must be one line without control characters",
        ),
        (
            {C: "1", kubenode.RESTART: SOFT_JSON.replace("2026-12-07T", "yesterday ")},
            "restart.at must be an ISO 8601 time",
        ),
        ({C: "1", kubenode.RESTART: SOFT_JSON + " " * 2048}, "expected a restart's JSON, got"),
    ],
)
def test_a_restart_that_is_none_is_named_by_the_views_and_blocks_nothing(
    notes: dict[str, Any], message: str
) -> None:
    # Display only: the state still reads (its pool keeps planning), without a restart.
    state = NodeState.from_node(_node(notes))
    assert state is not None and state.version == "1" and state.restart is None
    with pytest.raises(ProtocolError) as raised:
        kubenode.read_restart(notes)
    assert message in str(raised.value)


def test_annotations_that_are_not_an_object() -> None:
    with pytest.raises(NodeProtocolError, match=r"node n1: metadata\.annotations"):
        NodeState.from_node(_node(["x"]))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: NodeState(""), "version: expected a version"),
        (lambda: NodeState("1", staged="a\tb"), "staged: expected a version"),
        (lambda: NodeState("1", failure="why"), "failure 'why' without failed"),
        (lambda: NodeState("1", failed=True, failure=""), "failure: expected one line"),
        (lambda: NodeState("1", commit="c/1"), "commit: expected 1-128 letters"),
        (lambda: NodeState("1", health="fine"), "health must be a Health"),  # type: ignore[arg-type]
        (lambda: NodeState("1", observed="x y"), "observed: expected an etag"),
        (lambda: Grant("", True, False, "web"), "version: expected a version"),
        (lambda: Grant("2", True, False, "Web"), "pool: expected an object name"),
        (lambda: Grant("2", True, False, "web", resumed="X"), "resumed: expected an etag"),
        (lambda: Grant("2", True, False, "web", reboot="soft"), "reboot: expected a Reboot"),  # type: ignore[arg-type]
        (lambda: NodeState("1", restart="soft"), "restart must be a Restart"),  # type: ignore[arg-type]
    ],
)
def test_a_side_cannot_encode_what_breaks_the_protocol(make: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match="^" + message.replace("(", r"\(")):
        make()


def test_the_state_is_the_fleet_protocols_report() -> None:
    state = NodeState("2", staged="3", healthy=False, failed=True, failure="unhealthy")
    assert state.report() == Report("2", "3", healthy=False, failed=True)
    restarted = NodeState("2.0", restart=SOFT).report()
    assert restarted == Report("2.0", None, restart=SOFT)


GRANTS = [
    Grant("2.0", True, False, "web"),
    Grant("2.0", True, False, "web", resumed="0123456789abcdef"),
    Grant("2.0", False, True, "web", "waiting for a reboot slot (1 of maxUnavailable 1)"),
    Grant("1.0+b", False, False, "a.b-c", ""),
    Grant("2.0", False, True, "web", reboot=RebootPolicy.FULL),
]


@pytest.mark.parametrize("grant", GRANTS)
def test_a_grant_reads_back_as_itself(grant: Grant) -> None:
    assert Grant.from_node(_applied(grant.patch())) == grant


def test_the_grant_is_the_fleet_protocols_desired_answer() -> None:
    grant = Grant("2.0", False, True, "web", "go")
    assert grant.desired() == Desired("2.0", False, True, "go", "web", reboot=RebootPolicy.FULL)
    assert grant.patch() == {
        "metadata": {
            "annotations": {
                "atoll.dev/pool": "web",
                "atoll.dev/desired-version": "2.0",
                "atoll.dev/stage": "false",
                "atoll.dev/may-reboot": "true",
                "atoll.dev/reason": "go",
                "atoll.dev/resumed": None,  # before any resume of the pool
                "atoll.dev/reboot": "full",  # the pool's policy (the default)
            }
        }
    }
    assert set(grant.annotations()) == set(kubenode.GRANT_ANNOTATIONS)
    # Before any resume the grant's etag is the standalone answer's.
    assert grant.tagged() == grant.desired().tagged()
    auto = replace(grant, reboot=RebootPolicy.AUTO)
    assert auto.desired().reboot is RebootPolicy.AUTO
    assert auto.tagged().reboot is RebootPolicy.AUTO


def test_the_reboot_policy_is_not_part_of_the_grants_etag() -> None:
    # A new policy wakes no watching agent and leaves the observed grant answered: the
    # agent reads the policy with the grant of the round that reboots.
    auto = Grant("2.0", True, False, "web")
    full = replace(auto, reboot=RebootPolicy.FULL)
    assert full.etag() == auto.etag()
    assert NodeState("1.0", failed=True, observed=auto.etag()).answers(full)


def test_a_resume_is_a_new_grant_for_every_node() -> None:
    waiting = Grant("2.0", False, False, "web", "waiting for a slot")
    resumed = replace(waiting, resumed=kubenode.resume_token("fixed"))
    assert resumed.etag() != waiting.etag()
    assert resumed.etag() != replace(waiting, resumed=kubenode.resume_token("again")).etag()
    assert Grant.from_node(_applied(resumed.patch())) == resumed
    # A failure said under the grant before the resume does not answer it.
    failed = NodeState("1.0", failed=True, observed=waiting.etag())
    assert failed.answers(waiting) and not failed.answers(resumed)


def test_a_reason_is_cut_to_one_line() -> None:
    grant = Grant("2", False, False, "web", "pods:\n  a/b\tc/d " + "x" * 600)
    assert grant.reason.startswith("pods: a/b c/d xx")
    assert len(grant.reason) == 500 and grant.reason.endswith("\u2026")
    assert Grant.from_node(_applied(grant.patch())) == grant


D, S, M, P = kubenode.DESIRED_VERSION, kubenode.STAGE, kubenode.MAY_REBOOT, kubenode.POOL


@pytest.mark.parametrize(
    ("notes", "message"),
    [
        (
            {D: "2", P: "web", M: "yes"},
            'annotation atoll.dev/may-reboot: expected "true" or "false"',
        ),
        ({D: "2", P: "web", S: "1"}, 'annotation atoll.dev/stage: expected "true" or "false"'),
        ({D: "2"}, "annotation atoll.dev/pool: expected a NodePool's name, got None"),
        ({D: "2", P: "Web!"}, "annotation atoll.dev/pool"),
        ({D: "\x7f", P: "web"}, "annotation atoll.dev/desired-version: expected a version"),
        ({D: "2", P: "web", kubenode.REASON: "a\nb"}, "annotation atoll.dev/reason: expected one"),
        (
            {D: "2", P: "web", kubenode.REBOOT: "soft"},
            "annotation atoll.dev/reboot: expected one of 'auto', 'full', got 'soft'",
        ),
    ],
)
def test_a_grant_that_breaks_the_protocol_names_the_node_and_key(
    notes: dict[str, str], message: str
) -> None:
    with pytest.raises(NodeProtocolError, match=r"^node n1: ") as raised:
        Grant.from_node(_node(notes))
    assert message in str(raised.value)


def test_no_grant_before_the_operator_answers() -> None:
    assert Grant.from_node(_node({C: "1"})) is None
    defaults = Grant.from_node(_node({D: "2", P: "web"}))
    assert defaults == Grant("2", False, False, "web", "")
    assert defaults.reboot is RebootPolicy.FULL  # an operator from before pools chose


FETCH = StepFailure(Step.FETCH, "2.0", "update server unreachable")


def test_a_step_failure_is_the_reports_failure_as_the_standalone_protocol_says_it() -> None:
    state = NodeState("1.0", failed=True, failure="fetch of 2.0 failed", step_failure=FETCH)
    assert state.report() == Report("1.0", None, True, False, FETCH)
    # Without one, failed is the agent's verdict on its health.
    assert NodeState("1.0", failed=True).report() == Report("1.0", None, True, True)
    with pytest.raises(ProtocolError, match="a step failure without failed"):
        NodeState("1.0", step_failure=FETCH)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fetch", "annotation atoll.dev/step-failure: expected a step failure's JSON"),
        ('{"step": "bake", "version": "2", "reason": "x"}', "failure.step"),
        (
            json.dumps({**FETCH.to_json(), "by": "controller"}),
            "a node reports its own failures, not 'controller'",
        ),
        (json.dumps(FETCH.to_json()) + " " * 2048, "expected a step failure's JSON, got"),
    ],
)
def test_a_step_failure_that_is_none_names_the_node_and_key(value: str, message: str) -> None:
    with pytest.raises(NodeProtocolError, match=r"^node n1: ") as raised:
        NodeState.from_node(_node({C: "1", F: "true", kubenode.STEP_FAILURE: value}))
    assert message in str(raised.value)
    # Read only with failed: a stale one beside failed=false is no failure.
    unfailed = NodeState.from_node(_node({C: "1", kubenode.STEP_FAILURE: value}))
    assert unfailed is not None and unfailed.step_failure is None

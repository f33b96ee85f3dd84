"""The fleet protocol's typed messages (atoll.wire.fleet): the JSON on the wire, and what
each side refuses, naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from atoll.wire.fleet import (
    By,
    Desired,
    NodeRecord,
    ProtocolError,
    RebootPolicy,
    Registration,
    Report,
    Restart,
    RestartKind,
    Step,
    StepFailure,
    node_path,
)

# The JSON as docs/fleet.md documents it, key order included (what the controller sends).
WIRE: list[tuple[Any, str]] = [
    (
        Registration("n1", {"zone": "a"}, "1.0", healthy=False),
        '{"name": "n1", "labels": {"zone": "a"}, "version": "1.0", "healthy": false}',
    ),
    (
        Report("1.0", "2.0", healthy=True, failed=False),
        '{"version": "1.0", "staged": "2.0", "healthy": true, "failed": false}',
    ),
    (
        Desired("2.0", stage=True, may_reboot=False, reason="", pool="web"),
        '{"pool": "web", "version": "2.0", "stage": true, "may_reboot": false, "reason": "", '
        '"reboot": "full"}',
    ),
    (
        Desired("1.0", False, False, "no pool selects this node", None, reboot=RebootPolicy.AUTO),
        '{"pool": null, "version": "1.0", "stage": false, "may_reboot": false, '
        '"reason": "no pool selects this node", "reboot": "auto"}',
    ),
    (
        NodeRecord("n1", {}, "1.0", None, True, "idle", 12.5),
        '{"name": "n1", "labels": {}, "current": "1.0", "staged": null, "healthy": true, '
        '"phase": "idle", "last_transition": 12.5}',
    ),
]


@pytest.mark.parametrize(("message", "text"), WIRE)
def test_messages_serialise_as_documented_and_parse_back(message: Any, text: str) -> None:
    assert json.dumps(message.to_json()) == text
    assert type(message).from_json(json.loads(text)) == message


@pytest.mark.parametrize(
    ("kind", "body", "expected"),
    [
        (Registration, {"name": "n", "version": "1"}, Registration("n", {}, "1", True)),
        (Report, {"version": "1"}, Report("1", None, healthy=True, failed=False)),
        (
            Desired,
            {"version": "2", "stage": True, "may_reboot": False},
            Desired("2", True, False, "", None),
        ),
    ],
)
def test_optional_fields_take_their_defaults(kind: Any, body: Any, expected: Any) -> None:
    assert kind.from_json(body) == expected


def test_unknown_keys_are_ignored_so_either_side_may_add_one_first() -> None:
    assert Report.from_json({"version": "1", "staged": None, "uptime": 3}) == Report("1", None)


@pytest.mark.parametrize(
    ("kind", "body", "names"),
    [
        (Registration, ["n1"], "expected a JSON object, not list"),
        (Registration, {"name": "-x", "version": "1"}, "bad name '-x'"),
        (Registration, {"name": "a" * 64, "version": "1"}, "bad name"),
        (Registration, {"name": "n1", "version": ""}, "bad version ''"),
        (Registration, {"name": "n1", "version": "1", "labels": {"a": 1}}, "labels must map"),
        (Registration, {"name": "n1", "version": "1", "healthy": "yes"}, "healthy must be true"),
        (Report, {"version": 1}, "bad version 1"),
        (Report, {"version": "1", "staged": 2}, "bad staged 2"),
        (Report, {"version": "1", "failed": 1}, "failed must be true or false"),
        (Report, {"version": "1", "healthy": None}, "healthy must be true or false"),
        (Desired, {"stage": True, "may_reboot": True}, "version is missing"),
        (Desired, {"version": "2", "stage": "yes", "may_reboot": False}, "stage must be true"),
        (Desired, {"version": "2", "stage": True, "may_reboot": False, "pool": 3}, "pool must"),
        (NodeRecord, {"name": "n", "current": "1", "healthy": True, "phase": "idle"}, "last_tr"),
    ],
)
def test_refusals_name_the_field(kind: Any, body: Any, names: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        kind.from_json(body)
    assert names in str(caught.value)


def test_node_paths_quote_the_name() -> None:
    assert node_path("n1", "report") == "/v1/nodes/n1/report"
    assert node_path("a/b", "desired") == "/v1/nodes/a%2Fb/desired"


# --- step failures (issue 20): a failed update step reaches the controller, typed ----------

ESP_FULL = StepFailure(
    Step.BOOT_ENTRIES,
    "2.0",
    "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB",
    "ESP (/boot/efi)",
)
ESP_FULL_JSON = (
    '{"step": "boot-entries", "version": "2.0", '
    '"reason": "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB", '
    '"resource": "ESP (/boot/efi)"}'
)


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (ESP_FULL, ESP_FULL_JSON),
        (
            StepFailure(Step.FETCH, "2.0", "connection refused"),
            '{"step": "fetch", "version": "2.0", "reason": "connection refused", "resource": null}',
        ),
        (
            Report("1.0", None, healthy=True, failed=False, failure=ESP_FULL),
            '{"version": "1.0", "staged": null, "healthy": true, "failed": false, '
            f'"failure": {ESP_FULL_JSON}}}',
        ),
        (
            # The controller's own (a reboot timeout): "by" only when not the node.
            StepFailure(Step.REBOOT, "2.0", "did not come back", by=By.CONTROLLER),
            '{"step": "reboot", "version": "2.0", "reason": "did not come back", '
            '"resource": null, "by": "controller"}',
        ),
        (
            NodeRecord("n1", {}, "1.0", None, True, "idle", 12.5, ESP_FULL, 42.0),
            '{"name": "n1", "labels": {}, "current": "1.0", "staged": null, "healthy": true, '
            f'"phase": "idle", "last_transition": 12.5, "failure": {ESP_FULL_JSON}, '
            '"retry_at": 42.0}',
        ),
    ],
)
def test_failures_serialise_and_parse_back(message: Any, text: str) -> None:
    assert json.dumps(message.to_json()) == text
    assert type(message).from_json(json.loads(text)) == message


def test_every_step_has_its_wire_name() -> None:
    assert [s.value for s in Step] == ["fetch", "verify", "deploy", "boot-entries", "reboot"]


def test_no_failure_leaves_the_key_out_or_takes_null() -> None:
    assert "failure" not in Report("1", None).to_json()
    assert Report.from_json({"version": "1", "failure": None}) == Report("1", None)
    record = NodeRecord.from_json(
        {
            "name": "n",
            "current": "1",
            "healthy": True,
            "phase": "idle",
            "last_transition": 1,
            "failure": None,
            "retry_at": None,
        }
    )
    assert (record.failure, record.retry_at) == (None, None)
    assert "retry_at" not in record.to_json()


GOOD_FAILURE = {"step": "deploy", "version": "2", "reason": "x", "resource": None}


@pytest.mark.parametrize(
    ("kind", "body", "names"),
    [
        (Report, {"version": "1", "failure": "ESP full"}, "failure must be a JSON object"),
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "step": "bless"}}, "failure.step"),
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "step": None}}, "failure.step"),
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "version": ""}}, "failure.version"),
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "reason": 3}}, "failure.reason"),
        (
            Report,
            {"version": "1", "failure": {**GOOD_FAILURE, "reason": "a\nb"}},
            "failure.reason must be one line",
        ),
        (
            Report,
            {"version": "1", "failure": {**GOOD_FAILURE, "reason": "x" * 501}},
            "failure.reason is 501 characters long, at most 500",
        ),
        (
            Report,
            {"version": "1", "failure": {**GOOD_FAILURE, "resource": 1}},
            "failure.resource must be a string or null",
        ),
        (
            Report,
            {"version": "1", "failure": {**GOOD_FAILURE, "resource": "ESP\x1b[2J"}},
            "failure.resource must be one line",
        ),
        (Report, {"version": "1", "staged": "2", "failure": GOOD_FAILURE}, "staged must be null"),
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "by": "me"}}, "failure.by"),
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "by": None}}, "failure.by"),
        # Unhashable values are refused as such, not a TypeError from a set lookup.
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "by": ["node"]}}, "failure.by"),
        (Report, {"version": "1", "failure": {**GOOD_FAILURE, "step": {}}}, "failure.step"),
        (
            Report,
            {"version": "1", "failure": {**GOOD_FAILURE, "by": "controller"}},
            "failure.by must be 'node' in a node's report",
        ),
        (
            NodeRecord,
            {
                "name": "n",
                "current": "1",
                "healthy": True,
                "phase": "failed",
                "last_transition": 1,
                "retry_at": "soon",
            },
            "retry_at must be a number",
        ),
        (
            NodeRecord,
            {
                "name": "n",
                "current": "1",
                "healthy": True,
                "phase": "failed",
                "last_transition": 1,
                "failure": {**GOOD_FAILURE, "step": "reboot!"},
            },
            "failure.step",
        ),
    ],
)
def test_failure_refusals_name_the_field(kind: Any, body: Any, names: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        kind.from_json(body)
    assert names in str(caught.value)


def test_only_the_controller_records_a_failure_by_the_controller() -> None:
    mine = StepFailure(Step.REBOOT, "2", "did not come back", by=By.CONTROLLER)
    node = StepFailure.from_json(GOOD_FAILURE)
    assert node.by is By.NODE and "by" not in node.to_json()
    with pytest.raises(ProtocolError, match=r"failure\.by must be 'node'"):
        Report("1", None, failure=mine)  # an agent cannot even build one
    record = NodeRecord("n", {}, "1", None, False, "failed", 1.0, mine)
    assert NodeRecord.from_json(record.to_json()).failure == mine


def test_summarise_makes_any_error_text_one_bounded_line() -> None:
    failure = StepFailure.summarise(
        Step.DEPLOY, "2", "ostree admin deploy failed:\n  error: No space left\ton device\r\n"
    )
    assert failure.reason == "ostree admin deploy failed: error: No space left on device"
    long = StepFailure.summarise(Step.FETCH, "2", "y" * 900)
    assert len(long.reason) == 500
    assert long.reason.endswith("\u2026")
    assert StepFailure.summarise(Step.REBOOT, "2", "\n").reason == "failed (no reason given)"


def test_an_answer_with_watches_carries_the_etag_of_its_grant_not_of_its_reason() -> None:
    waiting = Desired("2.0", stage=True, may_reboot=False, reason="slot 1 of 1 taken", pool="web")
    tagged = waiting.tagged()
    assert tagged.etag is not None and len(tagged.etag) == 16
    assert Desired.from_json(json.loads(json.dumps(tagged.to_json()))) == tagged
    assert "etag" not in waiting.to_json()  # a controller without watches: no key
    other_reason = Desired("2.0", True, False, "window closed", "web").tagged()
    assert other_reason.etag == tagged.etag  # a new reason wakes no watch
    for changed in (
        Desired("2.0", True, True, "", "web"),  # the grant
        Desired("3.0", True, False, "", "web"),
        Desired("2.0", False, False, "", "web"),
        Desired("2.0", True, False, "", None),
    ):
        assert changed.tagged().etag != tagged.etag
    with pytest.raises(ProtocolError, match="etag must be"):
        Desired.from_json({**tagged.to_json(), "etag": "../x"})


def test_the_pools_reboot_policy_is_no_part_of_the_etag_and_is_validated() -> None:
    auto = Desired("2.0", True, True, "", "web").tagged()
    full = Desired("2.0", True, True, "", "web", reboot=RebootPolicy.FULL).tagged()
    # A changed policy wakes no watch: the round that reboots reads it with the grant.
    assert full.etag == auto.etag and full.reboot is RebootPolicy.FULL
    assert Desired.from_json({**auto.to_json(), "reboot": "full"}) == full
    with pytest.raises(ProtocolError, match=r"reboot must be one of 'auto', 'full', not 'soft'"):
        Desired.from_json({**auto.to_json(), "reboot": "soft"})


# --- the last restart (issue 15): soft or full, and why, reported and recorded -------------

SOFT = Restart(RestartKind.SOFT, "same kernel and arguments", "2.0", "2026-12-07T07:00:00+00:00")
SOFT_JSON = (
    '{"kind": "soft", "reason": "same kernel and arguments", "version": "2.0", '
    '"at": "2026-12-07T07:00:00+00:00"}'
)


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (SOFT, SOFT_JSON),
        (
            Report("2.0", None, restart=SOFT),
            '{"version": "2.0", "staged": null, "healthy": true, "failed": false, '
            f'"restart": {SOFT_JSON}}}',
        ),
        (
            NodeRecord("n1", {}, "2.0", None, True, "idle", 12.5, restart=SOFT),
            '{"name": "n1", "labels": {}, "current": "2.0", "staged": null, "healthy": true, '
            f'"phase": "idle", "last_transition": 12.5, "restart": {SOFT_JSON}}}',
        ),
    ],
)
def test_a_restart_serialises_and_parses_back(message: Any, text: str) -> None:
    assert json.dumps(message.to_json()) == text
    assert type(message).from_json(json.loads(text)) == message


def test_no_restart_leaves_the_key_out_or_takes_null() -> None:
    assert "restart" not in Report("1", None).to_json()  # as an agent from before it sends
    assert Report.from_json({"version": "1", "restart": None}) == Report("1", None)


GOOD_RESTART = json.loads(SOFT_JSON)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ("soft", "restart must be a JSON object, not str"),
        ({**GOOD_RESTART, "kind": "warm"}, "restart.kind must be one of soft, full, not 'warm'"),
        ({**GOOD_RESTART, "kind": None}, "restart.kind must be one of"),
        ({**GOOD_RESTART, "kind": ["soft"]}, "restart.kind must be one of"),
        ({**GOOD_RESTART, "reason": ""}, "restart.reason must be a non-empty string"),
        ({**GOOD_RESTART, "reason": "a\nb"}, "restart.reason must be one line"),
        ({**GOOD_RESTART, "reason": "x" * 501}, "restart.reason is 501 characters long"),
        ({**GOOD_RESTART, "version": 2}, "restart.version must be a non-empty string"),
        ({**GOOD_RESTART, "version": "v\x1b[2J"}, "restart.version must be one line"),
        ({**GOOD_RESTART, "version": "v" * 201}, "restart.version is 201 characters long"),
        ({**GOOD_RESTART, "at": None}, "restart.at must be a non-empty string"),
        ({**GOOD_RESTART, "at": "7" * 65}, "restart.at is 65 characters long, at most 64"),
        ({**GOOD_RESTART, "at": "yesterday"}, "restart.at must be an ISO 8601 time"),
    ],
)
def test_restart_refusals_name_the_field(body: Any, names: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        Report.from_json({"version": "1", "restart": body})
    assert names in str(caught.value)
    with pytest.raises(ProtocolError):  # nor in the controller's record of the node
        NodeRecord.from_json(
            {**NodeRecord("n", {}, "1", None, True, "idle", 1.0).to_json(), "restart": body}
        )

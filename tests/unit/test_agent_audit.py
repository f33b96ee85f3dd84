"""The audit chain: appends verify; every kind of tampering is detected and located."""

from __future__ import annotations

import datetime
import json
import socket
import threading
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.agent.audit import AuditLog, mask_secrets, record_hash, verify
from atoll.agent.connection import Connection, HttpLimits
from atoll.agent.framing import RequestError


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    ticks = iter(range(1000))
    log = AuditLog(
        tmp_path / "var" / "audit.jsonl",
        clock=lambda: (
            datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
            + datetime.timedelta(seconds=next(ticks))
        ),
    )
    for i in range(n):
        log.append(who="alice", role="operator", what=f"GET /v1/status/{i}", result=200)
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def test_a_fresh_chain_verifies(tmp_path: Path) -> None:
    log = _log(tmp_path)
    verdict = log.verify()
    assert verdict.ok and verdict.records == 5
    records = log.records()
    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[1]["prev"] == records[0]["hash"]
    assert records[0]["time"] == "2026-01-01T00:00:00.000+00:00"


def test_an_edited_record_is_named(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = _lines(log)
    record = json.loads(lines[2])
    record["who"] = "mallory"
    lines[2] = json.dumps(record)
    log.path.write_text("\n".join(lines) + "\n")
    verdict = log.verify()
    assert not verdict.ok
    assert any(":3: seq 2: hash mismatch" in p for p in verdict.problems)


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda ls: ls[:2] + ls[3:], "removed or reordered"),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "removed or reordered"),
        (lambda ls: ls[:-1], "cut off the end"),
        (lambda ls: [*ls[:2], "not json", *ls[2:]], "not an audit record"),
    ],
    ids=["deleted", "reordered", "truncated", "garbage"],
)
def test_deletion_reordering_and_truncation_are_detected(
    tmp_path: Path, mutate: object, expect: str
) -> None:
    log = _log(tmp_path)
    assert callable(mutate)
    log.path.write_text("\n".join(mutate(_lines(log))) + "\n")
    verdict = verify(log.path)
    assert not verdict.ok
    assert any(expect in p for p in verdict.problems), verdict.problems


def test_appends_continue_the_chain_across_instances_and_threads(tmp_path: Path) -> None:
    log = _log(tmp_path, 1)
    again = AuditLog(log.path)
    workers = [
        threading.Thread(target=lambda: again.append(who="bob", what="x")) for _ in range(20)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert again.verify().ok
    assert again.verify().records == 21
    assert len(again.records(since=10)) == 11


def test_secrets_are_masked_before_they_reach_the_log(tmp_path: Path) -> None:
    log = _log(tmp_path, 0)
    log.append(who="alice", params={"registry": {"password": "hunter2", "url": "r"}})
    text = log.path.read_text()
    assert "hunter2" not in text and '"url":"r"' in text
    assert mask_secrets([{"apiToken": 1}]) == [{"apiToken": "***"}]


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("password", True),
        ("registry_password", True),
        ("apiToken", True),
        ("X-Auth-Token", True),
        ("APIKey", True),
        ("private_key", True),
        ("client-secret", True),
        ("credentials", True),
        ("kernel.keys.maxkeys", False),  # a setting: ordinary words, whole or dotted
        ("net.ipv6.conf.all.stable_secret", False),  # settings hold no secret (any viewer reads)
        ("kernel.sysctls", False),
        ("keys", False),
        ("monkey", False),
        ("tokenizer", False),
        ("key", False),
        ("reason", False),
    ],
)
def test_only_whole_words_naming_a_secret_are_masked(key: str, masked: bool) -> None:
    assert (mask_secrets({key: "v"})[key] == "***") is masked


def test_settings_are_recorded_as_they_are(tmp_path: Path) -> None:
    log = _log(tmp_path, 0)
    params = {"kernel.sysctls": {"kernel.keys.maxkeys": "2000", "net.core.somaxconn": "4096"}}
    record = log.append(who="otto", what="PATCH /v1/settings", params=params, result=200)
    assert record["params"] == params


def test_a_torn_last_line_is_ended_and_reported_and_appends_go_on(tmp_path: Path) -> None:
    """A power cut mid-write leaves a partial line: the next request is still recorded,
    chained from the last whole record, and verify names the torn line."""
    log = _log(tmp_path, 3)
    whole = log.path.read_bytes()
    with log.path.open("ab") as f:
        f.write(b'{"hash":"ab12","prev":"00')  # cut short, no newline
    record = log.append(who="otto", what="GET /v1/status", result=200)
    assert record["seq"] == 3 and record["prev"] == json.loads(whole.splitlines()[-1])["hash"]
    log.append(who="otto", what="GET /v1/status", result=200)
    lines = log.path.read_bytes().splitlines()
    assert lines[:3] == whole.splitlines() and lines[3] == b'{"hash":"ab12","prev":"00'
    assert [json.loads(line)["seq"] for line in lines[4:]] == [3, 4]
    verdict = log.verify()
    assert verdict.problems == (f"{log.path}:4: not an audit record",)
    assert [r["seq"] for r in log.records()] == [0, 1, 2, 3, 4]


def test_a_whole_record_without_its_newline_is_kept_in_the_chain(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    log.path.write_bytes(log.path.read_bytes().rstrip(b"\n"))
    log.append(who="otto", what="GET /v1/status", result=200)
    assert log.verify().ok and log.verify().records == 3


def test_a_log_of_nothing_but_a_torn_line_starts_the_chain_again(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.path.write_bytes(b'{"seq":0,"ti')
    assert log.append(who="otto", what="x")["prev"] == "0" * 64
    assert log.verify().problems == (f"{log.path}:1: not an audit record",)


def test_records_keeps_only_the_last_limit_of_a_long_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    lines = []
    for seq in range(5000):  # generated, not appended: unchained, only the listing is tested
        lines.append(json.dumps({"seq": seq, "what": f"GET /{seq}", "pad": "x" * 100}))
    lines.insert(2500, "not json")
    log.path.write_text("\n".join(lines) + "\n")
    assert [r["seq"] for r in log.records(limit=1)] == [4999]
    assert [r["seq"] for r in log.records(since=10, limit=3)] == [4997, 4998, 4999]
    assert [r["seq"] for r in log.records(since=4990)] == list(range(4990, 5000))
    assert [r["seq"] for r in log.records(since=4990, limit=100)] == list(range(4990, 5000))
    assert len(log.records()) == 5000


@dataclass(frozen=True)
class _Peer:
    name: str = "alice"
    role_name: str | None = "viewer"


def test_a_refusal_is_answered_when_the_audit_log_cannot_record_it() -> None:
    def broken(**_: object) -> object:
        raise OSError(28, "No space left on device")

    lines: list[str] = []
    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = Connection(ours, _Peer(), HttpLimits(linger_seconds=0.01), broken, lines.append)
        conn.what = "GET /v1/status"
        assert conn.refuse(RequestError(HTTPStatus.BAD_REQUEST, "bad field")) is False
        ours.shutdown(socket.SHUT_WR)
        answer = theirs.makefile("rb").read()
        conn.rfile.close()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b'{"error": "bad field"}')
    assert lines == [
        "atoll-agent: audit log: cannot record GET /v1/status "
        "(OSError: [Errno 28] No space left on device)"
    ]


def _deep(levels: int) -> object:
    value: object = "bottom"
    for i in range(levels):
        value = {"level": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize(
    "params",
    [
        {"fleet.controller": "http://a/\ud800"},  # a lone surrogate: not UTF-8 encodable
        {"\udfff": 1},
        _deep(300),  # the masking walk recursed per level
        _deep(10_000),
        {"nan": float("nan"), "inf": float("-inf"), "big": 10**5000, "path": Path("/x")},
    ],
    ids=["surrogate-value", "surrogate-key", "deep", "deeper", "not-json"],
)
def test_any_request_can_be_recorded(tmp_path: Path, params: object) -> None:
    """Whatever a request held, its record is written and the chain stays whole."""
    log = _log(tmp_path, 1)
    record = log.append(who="otto", what="PATCH /v1/settings", params=params, result=400)
    assert log.verify().ok, log.verify().problems
    assert json.loads(log.path.read_bytes().splitlines()[-1]) == record
    log.append(who="otto", what="GET /v1/status", result=200)
    assert log.verify().ok and log.verify().records == 3


def test_unencodable_text_is_kept_visible_and_depth_is_cut(tmp_path: Path) -> None:
    log = _log(tmp_path, 0)
    record = log.append(who="x", params={"v": "a\ud800b", "deep": _deep(1000)})
    assert record["params"]["v"] == "a\\ud800b"
    text = json.dumps(record["params"]["deep"])
    assert "nested deeper than" in text and text.count("[") < 100


def test_a_record_larger_than_the_tail_window_does_not_break_the_next_append(
    tmp_path: Path,
) -> None:
    log = _log(tmp_path, 1)
    log.append(who="otto", params={"hostname": "x" * 200_000}, result=422)
    log.append(who="otto", what="GET /v1/status", result=200)
    assert log.verify().ok and log.verify().records == 3


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(st.characters(exclude_categories=[])),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=[]), max_size=8), inner, max_size=3
        )
    ),
    max_leaves=20,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(params=VALUES)
def test_property_every_value_is_recordable(tmp_path: Path, params: object) -> None:
    log = AuditLog(tmp_path / "prop" / "audit.jsonl")
    record = log.append(who="fuzz", params=params)
    line = log.path.read_bytes().splitlines()[-1]
    assert json.loads(line) == record and record["hash"] == record_hash(record)

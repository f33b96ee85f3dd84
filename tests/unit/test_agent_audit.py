"""The audit chain: appends verify; every kind of tampering is detected and located."""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.agent.audit import AuditLog, mask_secrets, record_hash, verify


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

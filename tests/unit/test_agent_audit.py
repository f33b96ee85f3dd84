"""The audit chain: appends verify; every kind of tampering is detected and located."""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path

import pytest

from atoll.agent.audit import AuditLog, mask_secrets, verify


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

"""Fuzz the agent's HTTP layer with raw bytes over real mutual TLS: parsing and dispatch.

``test_agent_fuzz.py`` sends what the OpenAPI document describes, through a
well-behaved client. This sends what a hostile one would: request lines,
header fields and bodies drawn from the shapes that broke the agent before
(ambiguous framing, hidden second requests, lone surrogates, deep nesting,
duplicate keys, control characters, bare LFs) mixed with random bytes, as one
stream on one connection, closed by a last ``Connection: close`` request.

For every stream, whatever it holds:

* the agent answers every request it reads and never with a 5xx;
* every answer has exactly one audit record, made by the client's
  certificate, with the answer's status, and the chain stays whole;
* nothing is applied unless its record says it was accepted (200): files in
  /etc, unit restarts, ostree and reboot commands;
* no traceback reaches the log.

The budget is bounded (``max_examples``) so it runs in ``make test`` in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from atoll.agent.connection import HttpLimits
from tests.integration.running_agent import RunningAgent, running_agent

LAST = b"GET /v1/status HTTP/1.1\r\nHost: node1\r\nConnection: close\r\n\r\n"
CHANGES = {"PATCH /v1/settings"}
ACTIONS = {"POST /v1/upgrade", "POST /v1/rollback", "POST /v1/reboot"}

ROUTES = [
    (b"GET /v1/status", b""),
    (b"GET /v1/settings", b""),
    (b"GET /v1/health", b""),
    (b"GET /v1/audit?limit=2", b""),
    (b"GET /v1/audit?limit=x", b""),
    (b"GET /v1/logs?lines=1", b""),
    (b"GET /v1/openapi.json", b""),
    (b"GET https://node1/v1/status", b""),
    (b"PATCH /v1/settings", b"@HOSTNAME@"),
    (b"PATCH /v1/settings", b'{"network.ntp.servers": ["ntp.example", "10.0.0.1"]}'),
    (b"PATCH /v1/settings", b'{"kernel.sysctls": {"vm.swappiness": 10}}'),
    (b"POST /v1/reboot", b"{}"),
    (b"POST /v1/rollback", b'{"reboot": false}'),
    (b"POST /v1/upgrade", b'{"to": "' + b"ab" * 32 + b'"}'),
    (b"POST /v1/shell", b'{"reason": "look"}'),
    (b"DELETE /v1/status", b""),
    (b"GET /nowhere", b""),
]
LENGTH = b"@LEN@"  # replaced by the body's length
HOSTILE_FIELDS = st.sampled_from(
    [
        b"Host: other",
        b"Content-Type: text/plain",
        b"Content-Length: " + LENGTH,
        b"Content-Length: +" + LENGTH,
        b"Content-Length: " + LENGTH + b", 7",
        b"Content-Length: 0",
        b"Content-Length: 3",
        b"Content-Length: 99999999999999999999",
        b"Transfer-Encoding: chunked",
        b"Expect: 100-continue",
        b"Expect: tea",
        b"Connection: keep-alive",
        b"X-Control: a\x01b",
        b"X-Nul: a\x00b",
        b" folded",
        b"Bad Name: x",
        b"X-Latin: \xe4",
    ]
) | st.binary(max_size=30)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.characters(exclude_categories=[])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
HOSTILE_BODIES = (
    st.sampled_from(
        [
            b'{"hostname": "x\\ud800"}',
            b'{"fleet.controller": "http://c.example/\\udfff"}',
            b'{"hostname": "a", "hostname": "b"}',
            b'{"kernel.sysctls": {"vm.swappiness": "1\\nkernel.x = 1"}}',
            b'{"hostname": "node-9\\n"}',
            b'{"network.dns.servers": ["fe80::1%eth0\\nDNS=1.2.3.4"]}',
            b'{"containers.registry_mirrors": {"..": ["https://m.example"]}}',
            b'{"hostname": NaN}',
            b'{"hostname": 1e999}',
            b"[" * 5000,
            b'{"a": ' * 2000,
            b'{"hostname": "\xed\xa0\x80"}',
            b"\xff\xfe{}",
            b"",
            b"GET /v1/status HTTP/1.1\r\nHost: node1\r\n\r\n",
            b"PATCH /v1/settings HTTP/1.1\r\nHost: node1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 22\r\n\r\n{"hostname": "hidden"}',
        ]
    )
    | st.binary(max_size=80)
    | JSON.map(lambda v: json.dumps({"k": v}).encode())
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request as bytes: well formed, then up to two hostile changes."""
    line, body = draw(st.sampled_from(ROUTES))
    body = body.replace(b"@HOSTNAME@", b'{"hostname": "fuzz-%d"}' % draw(st.integers(0, 999)))
    line += b" HTTP/1.1"
    fields = [b"Host: node1"]
    if body:
        fields += [b"Content-Type: application/json", b"Content-Length: " + LENGTH]
    end = b"\r\n"
    for change in draw(st.lists(st.integers(0, 6), max_size=2)):
        if change == 0:
            line = draw(st.binary(max_size=40) | st.just(line.replace(b"1.1", b"2.0")))
        elif change == 1:
            fields.insert(draw(st.integers(0, len(fields))), draw(HOSTILE_FIELDS))
        elif change == 2 and fields:
            del fields[draw(st.integers(0, len(fields) - 1))]
        elif change == 3:
            body = draw(HOSTILE_BODIES)
        elif change == 4:
            end = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n"]))
        elif change == 5 and fields:
            fields.append(draw(st.sampled_from(fields)))  # a field twice
        elif change == 6:
            line = line.replace(b" ", draw(st.sampled_from([b"  ", b"\t", b" \x00"])), 1)
    raw = end.join([line, *fields]) + end + end + body
    return raw.replace(LENGTH, str(len(body)).encode())


STREAMS = st.lists(requests(), min_size=1, max_size=3).map(lambda rs: b"".join(rs) + LAST)


def _changing(agent: RunningAgent) -> list[list[str]]:
    """The commands that change the node (reading the journal does not)."""
    return [argv for argv in agent.commands if argv[0] != "journalctl"]


@pytest.fixture
def fuzzed(tmp_path: Path) -> Iterator[tuple[RunningAgent, list[str]]]:
    log: list[str] = []
    limits = HttpLimits(head_seconds=0.5, body_seconds=0.5, linger_seconds=0.5)
    with running_agent(tmp_path, limits=limits, log=log.append) as agent:
        yield agent, log


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(stream=STREAMS, client=st.sampled_from(["vera", "otto", "ada"]))
def test_every_request_is_answered_audited_and_applied_only_if_accepted(
    fuzzed: tuple[RunningAgent, list[str]], stream: bytes, client: str
) -> None:
    agent, log = fuzzed
    before, etc = len(agent.records()), agent.etc()
    restarts, commands = len(agent.restarts), len(_changing(agent))

    answers, closed = agent.exchange(stream, client=client, answers=10, wait=5)

    final = [a for a in answers if a.status != 100]  # 100 Continue is not an answer
    for answer in final:
        event(f"answered {answer.status}")
    assert final and closed, (stream, answers)
    assert all(a.status < 500 for a in final), (stream, answers)
    records = agent.wait_records(before + len(final))[before:]
    assert [r["result"] for r in records] == [a.status for a in final], (stream, records)
    assert all(r["who"] == client for r in records), records
    accepted = {r["what"] for r in records if r["result"] == 200}
    if not accepted & CHANGES:
        assert agent.etc() == etc and len(agent.restarts) == restarts, (stream, records)
    if not accepted & ACTIONS:
        assert len(_changing(agent)) == commands, (stream, _changing(agent)[commands:])
    assert not [line for line in log if "Traceback" in line], log


def test_the_chain_stays_whole_after_a_hostile_stream(
    fuzzed: tuple[RunningAgent, list[str]],
) -> None:
    agent, log = fuzzed
    hostile = (
        b"PATCH /v1/settings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 34\r\n\r\n{"fleet.controller": "http://a/\\ud800"}'
        + b"GET /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    agent.exchange(hostile + LAST, client="otto")
    verdict = agent.server.agent.audit.verify()
    assert verdict.ok and verdict.records == len(agent.records()) > 0, verdict.problems
    assert log == []

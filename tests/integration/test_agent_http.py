"""The agent's HTTP layer against hostile clients, over real mutual TLS on 127.0.0.1.

Each test is an attack from issue 19 that used to work: a change escaping the
audit, a request smuggled inside another, framing the agent read differently
from a proxy, refusals nobody recorded, tracebacks for a client that left,
clients that hold connections forever. Raw bytes, so nothing is tidied up by a
client library on the way.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from atoll.agent.connection import HttpLimits
from tests.integration.running_agent import RunningAgent, read_answers, request


@pytest.fixture
def agent(start_agent: Callable[..., RunningAgent]) -> RunningAgent:
    return start_agent()


def _patch(body: bytes, **options: object) -> bytes:
    return request("PATCH", "/v1/settings", body, **options)  # type: ignore[arg-type]


def _assert_audited(agent: RunningAgent, before: int, status: int, who: str = "ada") -> None:
    records = agent.wait_records(before + 1)
    assert len(records) == before + 1, records[before:]
    assert records[-1]["result"] == status and records[-1]["who"] == who, records[-1]
    verdict = agent.server.agent.audit.verify()
    assert verdict.ok, verdict.problems


# --- 1. nothing escapes the audit ------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"fleet.controller": "http://controller.example/\\ud800"}',  # a lone surrogate
        b'{"updates.server": "http://u.example/\\udfff"}',
        b'{"kernel.sysctls": {"a.b": ' + b"[" * 300 + b"]" * 300 + b"}}",  # deep: masking recursed
        b'{"kernel.sysctls": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",  # deeper: the parser
    ],
    ids=["surrogate", "surrogate-2", "nested-300", "nested-10000"],
)
def test_a_hostile_body_is_refused_audited_and_changes_nothing(
    agent: RunningAgent, body: bytes
) -> None:
    before, etc = len(agent.records()), agent.etc()
    answers, _ = agent.exchange(_patch(body))
    assert [a.status for a in answers][:1] == [400], answers
    assert "body: " in answers[0].json()["error"]
    _assert_audited(agent, before, 400)
    assert agent.etc() == etc and agent.restarts == []


def test_an_accepted_change_is_audited_with_its_values(agent: RunningAgent) -> None:
    answers, closed = agent.exchange(_patch(b'{"hostname": "edge-7"}'))
    assert answers[0].status == 200 and not closed
    record = agent.wait_records(1)[-1]
    assert record["what"] == "PATCH /v1/settings" and record["params"] == {"hostname": "edge-7"}
    assert (agent.root / "etc/hostname").read_text() == "edge-7\n"


def test_an_unusable_settings_file_is_no_5xx_and_a_change_repairs_it(agent: RunningAgent) -> None:
    """A value an earlier agent let in (a trailing newline) is refused today: named, not a 500."""
    assert agent.exchange(_patch(b'{"kernel.args": ["quiet"]}'))[0][0].status == 200
    path = agent.root / "etc/atoll/settings.json"
    path.write_text(path.read_text().replace('"hostname": "node1"', '"hostname": "node1\\n"'))
    answers, _ = agent.exchange(request("GET", "/v1/status") + request("GET", "/v1/settings"))
    assert [a.status for a in answers] == [200, 409], answers
    assert answers[0].json()["hostname"] == "node1" and "hostname" in answers[1].json()["error"]
    answers, _ = agent.exchange(_patch(b'{"hostname": "node1"}'))
    assert answers[0].status == 200 and answers[0].json()["kernel.args"] == ["quiet"]


# --- 2. framing -------------------------------------------------------------

HIDDEN = _patch(b'{"hostname": "smuggled"}')


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # a body on a route that takes none was read as the next request
        (request("GET", "/v1/status", HIDDEN, content_type=None), 400),
        # both framings: which one ends the body?
        (
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(HIDDEN)).encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            + HIDDEN,
            400,
        ),
        (
            b"POST /v1/reboot HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + HIDDEN,
            411,
        ),
        # a refused request's unread body
        (request("GET", "/v1/nowhere", HIDDEN, content_type=None), 404),
        (request("PATCH", "/v1/status", HIDDEN, content_type=None), 405),
    ],
    ids=["body-on-get", "cl-and-te", "chunked", "404-with-body", "405-with-body"],
)
def test_a_request_hidden_in_another_never_runs(
    agent: RunningAgent, data: bytes, status: int
) -> None:
    answers, closed = agent.exchange(data)
    assert [a.status for a in answers] == [status] and closed, answers
    assert (agent.root / "etc/hostname").read_text() == "node1\n"
    records = agent.wait_records(1)
    assert [r["result"] for r in records] == [status], records


@pytest.mark.parametrize(
    ("fields", "status", "names"),
    [
        (["Content-Length: +23"], 400, "digits only"),
        (["Content-Length: 2_3"], 400, "digits only"),
        (["Content-Length: 23", "Content-Length: 24"], 400, "differing values"),
        (["Content-Length: 23, 22"], 400, "differing values"),
    ],
)
def test_content_length_is_strict(
    agent: RunningAgent, fields: list[str], status: int, names: str
) -> None:
    body = b'{"hostname": "changed"}'  # 23 bytes
    data = request("PATCH", "/v1/settings", None, fields=["Content-Type: application/json",
                                                          *fields]) + body  # fmt: skip
    answers, closed = agent.exchange(data)
    assert [a.status for a in answers] == [status] and closed, answers
    assert names in answers[0].json()["error"]
    assert (agent.root / "etc/hostname").read_text() == "node1\n"
    _assert_audited(agent, 0, status)


@pytest.mark.parametrize(
    ("data", "status", "names"),
    [
        (_patch(b'{"hostname": "a"}', content_type="text/plain"), 415, "application/json"),
        (_patch(b'{"hostname": "a"}', content_type=None), 415, "application/json"),
        (_patch(b'{"hostname": "a", "hostname": "b"}'), 400, "appears twice"),
    ],
)
def test_json_bodies_only_as_json(
    agent: RunningAgent, data: bytes, status: int, names: str
) -> None:
    answers, _ = agent.exchange(data)
    assert [a.status for a in answers] == [status], answers
    assert names in answers[0].json()["error"]
    assert (agent.root / "etc/hostname").read_text() == "node1\n"
    _assert_audited(agent, 0, status)


def test_an_answer_to_head_has_no_body_to_misread(agent: RunningAgent) -> None:
    data = request("HEAD", "/v1/status") + request("GET", "/v1/status")
    with agent.connect() as conn:
        conn.sendall(data)
        conn.settimeout(5)
        raw = b""
        while raw.count(b"HTTP/1.1 ") < 2 or not raw.endswith(b"}"):
            raw += conn.recv(65536)
    first, second = raw.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"405 ") and first.endswith(b"\r\n\r\n") and b"Allow: GET" in first
    assert second.startswith(b"200 ")


def test_kept_alive_requests_still_work(agent: RunningAgent) -> None:
    two = request("GET", "/v1/status") + _patch(b'{"hostname": "n2"}')
    answers, closed = agent.exchange(two + request("GET", "/v1/settings"), answers=3)
    assert [a.status for a in answers] == [200, 200, 200] and not closed
    assert answers[2].json()["hostname"] == "n2"
    continued = request("POST", "/v1/reboot", b"{}", fields=["Expect: 100-continue"])
    head, _, body = continued.partition(b"\r\n\r\n")
    with agent.connect("otto") as conn:
        conn.sendall(head + b"\r\n\r\n")
        interim, _ = read_answers(conn, answers=1)
        conn.sendall(body)
        final, _ = read_answers(conn, answers=1)
    assert [a.status for a in interim + final] == [100, 200]


# --- 3. every refusal is audited: who, what, why ----------------------------


@pytest.mark.parametrize(
    ("data", "status", "what"),
    [
        (b"GARBAGE\r\n\r\n", 400, "GARBAGE"),
        (b"GET /v1/status HTTP/2.0\r\nHost: x\r\n\r\n", 400, "GET /v1/status HTTP/2.0"),
        (b"BREW /v1/status HTTP/1.1\r\nHost: x\r\n\r\n", 405, "BREW /v1/status"),
        (
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
            431,
            "GET /v1/status HTTP/1.1",
        ),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "GET /aaaa"),
        (b"GET /v1/status HTTP/1.1\nHost: x\n\n", 400, "GET /v1/status HTTP/1.1"),
    ],
    ids=["garbage", "http2", "method", "header-too-large", "line-too-long", "bare-lf"],
)
def test_refusals_the_http_library_made_are_audited(
    agent: RunningAgent, data: bytes, status: int, what: str
) -> None:
    answers, closed = agent.exchange(data)
    assert [a.status for a in answers] == [status], answers
    assert closed == (status != 405)  # a well-formed request with an unknown method keeps it
    assert answers[0].fields["content-type"] == "application/json"
    records = agent.wait_records(1)
    assert len(records) == 1, records
    record = records[0]
    assert record["who"] == "ada" and record["role"] == "admin" and record["result"] == status
    assert what in record["what"]
    assert record["reason"] == answers[0].json()["error"]


def test_a_refused_role_is_audited_with_the_reason(agent: RunningAgent) -> None:
    answers, _ = agent.exchange(_patch(b'{"hostname": "x"}'), client="vera")
    assert answers[0].status == 403
    record = agent.wait_records(1)[-1]
    assert (record["who"], record["result"]) == ("vera", 403)
    assert "needs role operator" in record["reason"]


# --- 5. disconnects, slow clients, too many clients ------------------------


def test_a_client_that_leaves_mid_request_is_one_log_line(
    agent: RunningAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _patch(b'{"hostname": "never-finished"}')
    for cut in (10, len(data) - 5):  # mid-head, mid-body
        with agent.connect() as conn:
            conn.sendall(data[:cut])
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    records = agent.wait_records(2)
    assert agent.server.wait_ended(2, timeout=10)  # both connections' threads are done
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) <= 2, err
    assert [r["result"] for r in records] == ["disconnected", "disconnected"], records
    assert (agent.root / "etc/hostname").read_text() == "node1\n"


def test_headers_must_arrive_within_the_deadline(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent(limits=HttpLimits(head_seconds=0.5))
    start = time.monotonic()
    with agent.connect() as conn:
        conn.sendall(b"GET /v1/status HTTP/1.1\r\n")
        for _ in range(10):  # a byte now and then: each read is quick, the whole is not
            time.sleep(0.1)
            try:
                conn.sendall(b"X")
            except OSError:
                break
        answers, closed = read_answers(conn, answers=1, wait=2)
    assert [a.status for a in answers] == [408] and closed, answers
    assert time.monotonic() - start < 3
    assert agent.wait_records(1)[0]["result"] == 408
    # an idle connection is closed quietly at the deadline (no record: no request)
    with agent.connect() as conn:
        assert read_answers(conn, answers=1, wait=2) == ([], True)
    assert len(agent.records()) == 1


def test_connections_are_bounded_and_the_excess_answered(
    start_agent: Callable[..., RunningAgent],
) -> None:
    limits = HttpLimits(head_seconds=5, connections=2)
    agent = start_agent(limits=limits)
    held = [agent.connect() for _ in range(2)]
    try:
        time.sleep(0.2)
        extra, closed = agent.exchange(request("GET", "/v1/status"))
        assert [a.status for a in extra] == [503] and closed, extra
        assert "connections" in extra[0].json()["error"]
        records = agent.wait_records(1)
        assert records[-1]["result"] == 503 and records[-1]["who"] == "ada"
    finally:
        for conn in held:
            conn.close()
    deadline = time.monotonic() + 5
    while True:
        answers, _ = agent.exchange(request("GET", "/v1/status"))
        if answers[0].status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answers[0].status == 200


def test_many_clients_at_once_are_all_answered(agent: RunningAgent) -> None:
    statuses: list[int] = []

    def client() -> None:
        answers, _ = agent.exchange(request("GET", "/v1/status"), answers=1)
        statuses.extend(a.status for a in answers)

    threads = [threading.Thread(target=client) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 20
    assert agent.server.agent.audit.verify().ok

"""``/v1/logs`` and ``/v1/shell`` on a live agent over real mutual TLS (loopback).

The shell's command is ``/bin/sh`` on the agent's pty instead of ``ctr run`` (no
container runtime on this host); the relay, the upgrade, the client and the
recording are the real ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.agent.logs import LogsQuery, parse_export, parse_query
from atoll.agent.server import Agent, AgentConfig
from atoll.agent.shell import CommandRuntime, SessionId, ShellImageMissing, ShellUnavailable
from atoll.errors import AtollError
from atoll.ops.cli import parse_ttl
from atoll.ops.shell import ShellError, open_shell, relay
from atoll.wire.logentry import format_entry
from tests.integration.running_agent import RunningAgent

# What `journalctl -o json` prints (fields trimmed); MESSAGE as bytes when not UTF-8.
EXPORT = "\n".join(
    json.dumps(r)
    for r in (
        {"__REALTIME_TIMESTAMP": "1795425000123456", "_SYSTEMD_UNIT": "atoll-agent.service",
         "SYSLOG_IDENTIFIER": "python3", "_PID": "412", "PRIORITY": "6",
         "MESSAGE": "atoll-agent: serving on /run/atoll/agent.sock and port 7443"},
        {"__REALTIME_TIMESTAMP": "1795425001000000", "SYSLOG_IDENTIFIER": "kernel",
         "PRIORITY": "4", "MESSAGE": [104, 105, 255]},
    )
) + "\n"  # fmt: skip


def _journal(argv: list[str]) -> str:
    return EXPORT if argv[0] == "journalctl" else ""


@pytest.fixture
def live(start_agent: Callable[..., RunningAgent]) -> RunningAgent:
    return start_agent(
        answers=_journal,
        crl=False,
        hostname=None,
        shell_runtime=CommandRuntime(("/bin/sh", "+i")),
        max_shells=1,
    )


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"unit": ["-f"]}, "unit: '-f'"),
        ({"unit": ["*"]}, "unit: '*'"),
        ({"unit": ["a b"]}, "unit: 'a b'"),
        ({"lines": ["0"]}, "lines: '0'"),
        ({"lines": ["10001"]}, "lines: '10001'"),
        ({"lines": ["-5"]}, "lines: '-5'"),
        ({"lines": ["1", "2"]}, "lines: given 2 times"),
        ({"follow": ["1"]}, "follow: unknown parameter"),
    ],
)
def test_bad_log_queries_name_the_parameter(query: dict[str, list[str]], names: str) -> None:
    with pytest.raises(ValueError, match=names.replace("*", r"\*")):
        parse_query(query)


def test_log_queries_become_bounded_journalctl_argv() -> None:
    assert parse_query({}) == LogsQuery(None, 100)
    wanted = parse_query({"unit": ["getty@tty1.service"], "lines": ["5"]})
    assert wanted.argv() == ["journalctl", "--no-pager", "--quiet", "--output=json",
                             "--lines=5", "--unit", "getty@tty1.service"]  # fmt: skip


def test_journal_export_is_reduced_to_what_an_operator_reads() -> None:
    first, second = parse_export(EXPORT + "not json\n")
    assert first == {
        "time": "2026-11-23T09:10:00.123+00:00",
        "unit": "atoll-agent.service",
        "identifier": "python3",
        "pid": 412,
        "priority": 6,
        "message": "atoll-agent: serving on /run/atoll/agent.sock and port 7443",
    }
    assert second["message"] == "hi\ufffd" and second["unit"] is None
    assert format_entry(first).startswith("2026-11-23T09:10:00.123+00:00 python3[412]: atoll-")


def test_logs_need_the_operator_role_and_run_journalctl(live: RunningAgent) -> None:
    status, body = live.call("vera", "GET", "/v1/logs")
    assert status == 403 and "needs role operator" in body["error"]
    status, body = live.call("otto", "GET", "/v1/logs?unit=atoll-agent.service&lines=2")
    assert status == 200 and body["unit"] == "atoll-agent.service" and body["lines"] == 2
    assert [e["pid"] for e in body["entries"]] == [412, None]
    assert live.commands == [["journalctl", "--no-pager", "--quiet", "--output=json",
                              "--lines=2", "--unit", "atoll-agent.service"]]  # fmt: skip
    status, body = live.call("otto", "GET", "/v1/logs?unit=--all")
    assert status == 400 and "unit:" in body["error"] and len(live.commands) == 1


def test_shell_requests_are_refused_before_anything_starts(live: RunningAgent) -> None:
    upgrade = {"Connection": "Upgrade", "Upgrade": "atoll-shell/1"}
    status, body = live.call("otto", "POST", "/v1/shell", {"reason": "x"}, **upgrade)
    assert status == 403 and "needs role admin" in body["error"]
    status, body = live.call("ada", "POST", "/v1/shell", {"ttl": 60}, **upgrade)
    assert status == 400 and "reason: required" in body["error"]
    status, body = live.call("ada", "POST", "/v1/shell", {"reason": "x"})
    assert status == 426 and "Upgrade: atoll-shell/1" in body["error"]
    assert not (live.root / "var/log/atoll/shell").exists()
    with pytest.raises(ShellError, match="HTTP 403: POST /v1/shell: needs role admin"):
        open_shell(live.client("otto"), {"reason": "x"})
    assert [r["result"] for r in live.records()] == [403, 400, 426, 403]


def test_a_shell_session_over_mtls_is_audited_with_its_transcript(live: RunningAgent) -> None:
    conn, session, early = open_shell(live.client("ada"), {"reason": "why", "tty": False})
    # A second session is refused while this one runs (max_shells=1), and audited.
    with pytest.raises(ShellError, match="HTTP 409: 1 shells already open"):
        open_shell(live.client("ada"), {"reason": "again", "tty": False})
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    os.write(stdin_w, b"echo from-$((40+2)) $ATOLL_SHELL\nexit 7\n")
    os.close(stdin_w)
    end = relay(conn, early, stdin_r, stdout_w)
    os.close(stdout_w)
    output = os.read(stdout_r, 65536)
    for fd in (stdin_r, stdout_r):
        os.close(fd)
    assert output == f"from-42 {session}\n".encode()
    assert (end.session, end.end, end.exit_status) == (session, "exit", 7)
    start, refused, finish = live.records()
    assert start["what"] == "POST /v1/shell" and start["result"] == 101
    assert start["who"] == "ada" and start["role"] == "admin" and start["session"] == session
    assert start["params"] == {"reason": "why", "ttl": 900, "tty": False}
    assert refused["result"] == 409
    assert finish["what"] == "shell end" and finish["session"] == session
    assert (finish["end"], finish["exit_status"], finish["reason"]) == ("exit", 7, "why")
    transcript = Path(finish["transcript"])
    assert transcript == live.root / f"var/log/atoll/shell/{session}.log"
    assert hashlib.sha256(transcript.read_bytes()).hexdigest() == finish["transcript_sha256"]
    assert live.server.agent.audit.verify().ok


@dataclass(frozen=True)
class NoToolbox(CommandRuntime):
    """A node whose toolbox is gone; it has one other image."""

    def prepare(self, image: str | None = None) -> None:
        if image is None:
            raise ShellUnavailable("the ops toolbox image localhost/atoll/toolbox:1 is missing")
        if image != "docker.io/library/busybox:1":
            raise ShellImageMissing(f"image {image} is not in containerd")


def test_a_shell_without_its_image_is_refused_naming_it_and_audited(
    start_agent: Callable[..., RunningAgent],
) -> None:
    live = start_agent(hostname=None, shell_runtime=NoToolbox(("/bin/sh",)))
    upgrade = {"Connection": "Upgrade", "Upgrade": "atoll-shell/1"}
    status, body = live.call("ada", "POST", "/v1/shell", {"reason": "x"}, **upgrade)
    assert status == 503 and "localhost/atoll/toolbox:1 is missing" in body["error"]
    asked = {"reason": "x", "image": "docker.io/library/absent:1"}
    status, body = live.call("ada", "POST", "/v1/shell", asked, **upgrade)
    assert status == 404 and "docker.io/library/absent:1 is not in containerd" in body["error"]
    with pytest.raises(ShellError, match="HTTP 503: ops shell: the ops toolbox"):
        open_shell(live.client("ada"), {"reason": "x", "tty": False})
    assert [r["result"] for r in live.records()] == [503, 404, 503]
    assert not (live.root / "var/log/atoll/shell").exists()


def test_client_ttl_durations() -> None:
    assert [parse_ttl(t) for t in ("90", "90s", "15m", "1h")] == [90, 90, 900, 3600]
    with pytest.raises(AtollError, match="--ttl '15 min'"):
        parse_ttl("15 min")


@dataclass
class Leftovers:
    """A runtime whose earlier sessions' containers are still there."""

    left: list[str]
    stopped: list[str]

    def argv(self, session: SessionId, tty: bool, image: str | None = None) -> list[str]:
        return ["/bin/true"]

    def stop(self, session: SessionId) -> list[str]:
        self.stopped.append(session)
        self.left.remove(session)
        return []

    def leftovers(self) -> list[SessionId]:
        return [SessionId(s) for s in self.left]

    def running(self, session: SessionId) -> bool:
        return True

    def prepare(self, image: str | None = None) -> None:
        return


def test_containers_left_by_an_earlier_agent_are_reaped_and_audited(tmp_path: Path) -> None:
    runtime = Leftovers(["old1", "old2"], [])
    config = AgentConfig(
        root=tmp_path,
        audit_path=tmp_path / "audit.jsonl",
        cert=tmp_path / "absent.crt",
        key=tmp_path / "absent.key",
        ca=tmp_path / "absent-ca.crt",
        crl=None,
        runner=lambda argv: None,
        shell_runtime=runtime,
    )
    agent = Agent(config)
    agent.shells_ready.clear()
    agent.reap_shells()
    assert agent.shells_ready.is_set() and runtime.stopped == ["old1", "old2"]
    reaped = [(r["what"], r["session"], r["problems"]) for r in agent.audit.records()]
    assert reaped == [("shell reaped", "old1", []), ("shell reaped", "old2", [])]

"""The ops shell on the agent side: the pty relay, TTL, recording, ``ctr`` as a program.

No container runtime on this host: a plain ``/bin/sh`` stands in for ``ctr run``
on a real pty (same relay, same recording), and a script stands in for ``ctr``;
the containerd argv and request validation are checked as data in
tests/unit/test_agent_shell.py, and run for real in tests/vm/test_agent_shell_vm.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from atoll.agent.shell import (
    ContainerdRuntime,
    SessionId,
    ShellRequest,
    ShellResult,
    ShellSession,
)
from atoll.wire.shellframe import End, Frame, FrameReader, encode_frame


@dataclass
class StandIn:
    """``/bin/sh`` instead of ``ctr run``; records the stop calls the session makes."""

    command: tuple[str, ...] = ("/bin/sh",)
    stopped: list[str] = field(default_factory=list)
    started: threading.Event | None = None  # None: runs at once; else when it is set
    checks: int = 0  # calls of running() that answered "not yet"
    checked: threading.Condition = field(default_factory=threading.Condition)

    def argv(self, session: SessionId, tty: bool, image: str | None = None) -> list[str]:
        # ctr run without --tty hands the container pipes: no prompts; +i does that here.
        return list(self.command) if tty or len(self.command) > 1 else [*self.command, "+i"]

    def stop(self, session: SessionId) -> list[str]:
        self.stopped.append(session)
        return []

    def leftovers(self) -> list[SessionId]:
        return []

    def running(self, session: SessionId) -> bool:
        if self.started is None or self.started.is_set():
            return True
        with self.checked:
            self.checks += 1
            self.checked.notify_all()
        return False

    def prepare(self, image: str | None = None) -> None:
        return

    def wait_checks(self, count: int, timeout: float) -> bool:
        """Whether the session asked ``count`` times (and heard "not yet") within ``timeout`` s."""
        with self.checked:
            return self.checked.wait_for(lambda: self.checks >= count, timeout)


class Clock:
    """Real time plus a jump the test controls (the session reads only this clock)."""

    def __init__(self) -> None:
        self.jump = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.jump


@dataclass
class Running:
    client: socket.socket
    thread: threading.Thread
    result: list[ShellResult]
    frames: FrameReader = field(default_factory=FrameReader)
    output: bytes = b""

    def send(self, kind: Frame, payload: bytes = b"") -> None:
        self.client.sendall(encode_frame(kind, payload))

    def until(self, wanted: bytes | None) -> dict[str, Any] | None:
        """Read frames until ``wanted`` is in the output (or the EXIT frame, returned)."""
        self.client.settimeout(10)
        while wanted is None or wanted not in self.output:
            data = self.client.recv(65536)
            assert data, f"connection closed; output so far: {self.output!r}"
            for kind, payload in self.frames.feed(data):
                if kind is Frame.DATA:
                    self.output += payload
                elif kind is Frame.EXIT:
                    exit_frame: dict[str, Any] = json.loads(payload)
                    return exit_frame
        return None

    def finish(self) -> ShellResult:
        self.thread.join(15)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    sockets: list[socket.socket] = []

    def run(request: ShellRequest, runtime: StandIn, clock: Clock | None = None) -> Running:
        client, server = socket.socketpair()
        sockets.extend((client, server))
        session = ShellSession(
            request, runtime, tmp_path / "shell", who="ada", clock=clock or Clock()
        )
        result: list[ShellResult] = []
        thread = threading.Thread(target=lambda: result.append(session.run(server)))
        thread.start()
        return Running(client, thread, result)

    yield run
    for s in sockets:
        s.close()


def _events(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return lines[0], lines[1:]


def test_a_scripted_session_exits_with_the_commands_status_and_is_recorded(start: Any) -> None:
    runtime = StandIn()
    shell = start(ShellRequest("check disk", ttl=60, tty=False), runtime)
    shell.send(Frame.DATA, b"echo out-$((6*7)); echo err >&2; exit 3\n")
    end = shell.until(None)
    result = shell.finish()
    # No echo and no \r\n rewriting without a tty: the output is exactly the command's.
    assert shell.output == b"out-42\nerr\n"
    assert end == {"id": result.session, "end": "exit", "exit_status": 3}
    assert result.end is End.EXIT and result.exit_status == 3
    assert runtime.stopped == [result.session]  # checked that nothing is left behind
    data = result.transcript.read_bytes()
    assert hashlib.sha256(data).hexdigest() == result.transcript_sha256
    assert oct(result.transcript.stat().st_mode & 0o777) == "0o600"
    header, events = _events(result.transcript)
    assert header["version"] == 2
    assert header["atoll"]["who"] == "ada" and header["atoll"]["reason"] == "check disk"
    assert header["atoll"]["command"] == ["/bin/sh", "+i"] and header["atoll"]["ttl"] == 60
    kinds = {kind: "".join(e[2] for e in events if e[1] == kind) for kind in "iom"}
    assert kinds["i"] == "echo out-$((6*7)); echo err >&2; exit 3\n"
    assert kinds["o"] == "out-42\nerr\n"
    assert kinds["m"] == "end=exit exit_status=3"
    assert result.bytes_in == len(kinds["i"]) and result.bytes_out == 11


def test_end_of_stdin_ends_a_script_without_exit(start: Any) -> None:
    shell = start(ShellRequest("x", ttl=60, tty=False), StandIn())
    shell.send(Frame.DATA, b"echo one\necho two")  # the last line is not terminated
    shell.send(Frame.EOF)
    end = shell.until(None)
    assert shell.output == b"one\ntwo\n" and end is not None and end["exit_status"] == 0


def test_the_end_of_stdin_waits_until_the_container_runs(start: Any) -> None:
    """ctr loses an end of input that arrives while its task is being created."""
    started = threading.Event()
    runtime = StandIn(started=started)
    shell = start(ShellRequest("x", ttl=60, tty=False), runtime)
    shell.send(Frame.DATA, b"echo one\n")
    shell.send(Frame.EOF)
    assert shell.until(b"one\n") is None
    assert runtime.wait_checks(3, timeout=10)  # asked three times: not running yet
    assert shell.thread.is_alive()  # so the end of input is held back
    started.set()
    end = shell.until(None)
    assert end is not None and end["end"] == "exit" and end["exit_status"] == 0


def test_a_terminal_session_echoes_and_resizes(start: Any) -> None:
    shell = start(ShellRequest("x", ttl=60, tty=True, rows=30, cols=100), StandIn())
    shell.send(Frame.DATA, b"stty size\n")
    shell.until(b"30 100")
    shell.send(Frame.RESIZE, (40).to_bytes(2, "big") + (120).to_bytes(2, "big"))
    shell.send(Frame.DATA, b"stty size; exit\n")
    end = shell.until(None)
    assert b"40 120" in shell.output and b"\r\n" in shell.output  # a real terminal
    assert end is not None and end["end"] == "exit"
    _, events = _events(shell.finish().transcript)
    assert ["r", "120x40"] in [e[1:] for e in events]


def test_the_ttl_kills_the_session_and_stops_the_runtime(start: Any) -> None:
    clock = Clock()
    runtime = StandIn(("/bin/sh", "-c", "echo started; sleep 600"))
    shell = start(ShellRequest("x", ttl=300, tty=False), runtime, clock)
    shell.until(b"started\n")
    assert shell.thread.is_alive()
    clock.jump = 301.0  # five minutes later, as the session's clock sees it
    end = shell.until(None)
    result = shell.finish()
    assert end == {"id": result.session, "end": "ttl", "exit_status": -1}  # SIGHUP
    # stopped before the kill (the container first) and checked after it
    assert runtime.stopped == [result.session, result.session]
    assert _events(result.transcript)[1][-1][1:] == ["m", "end=ttl exit_status=-1"]


def test_a_disconnect_kills_the_session(start: Any) -> None:
    shell = start(ShellRequest("x", ttl=300, tty=True), StandIn())
    shell.send(Frame.DATA, b"echo here-$((1+1))\n")
    shell.until(b"here-2")
    shell.client.close()
    result = shell.finish()
    assert result.end is End.DISCONNECT
    assert result.exit_status in (-1, -9)  # SIGHUP, or SIGKILL after the grace time


def test_containerd_stop_and_leftovers_run_ctr(tmp_path: Path) -> None:
    """``ctr`` replaced by a script that logs its argv and lists two containers."""
    log = tmp_path / "ctr.log"
    ctr = tmp_path / "ctr"
    ctr.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n'
        'case "$*" in *"containers list"*) printf "atoll-shell-a1\\nweb\\natoll-shell-b2\\n";; '
        '*"tasks kill"*) echo "no such task" >&2; exit 1;; '
        '*"tasks list"*) printf "TASK PID STATUS\\natoll-shell-a1 42 RUNNING\\n'
        'atoll-shell-b2 0 CREATED\\n";; esac\n'
    )
    ctr.chmod(0o755)
    runtime = ContainerdRuntime(ctr=str(ctr))
    assert runtime.leftovers() == ["a1", "b2"]
    assert runtime.stop(SessionId("a1")) == ["container atoll-shell-a1 is still listed by ctr"]
    assert runtime.stop(SessionId("zz")) == []  # the failing kill (task gone) is not a problem
    assert log.read_text().splitlines()[1:5] == [
        "-n default tasks kill --signal SIGKILL atoll-shell-a1",
        "-n default tasks delete --force atoll-shell-a1",
        "-n default containers delete atoll-shell-a1",
        "-n default containers list --quiet",
    ]
    # A session's end of input waits for its task to be listed RUNNING.
    assert runtime.running(SessionId("a1")) and not runtime.running(SessionId("b2"))

"""The ops shell on the agent side, as data: request validation, the containerd argv, frames.

Sessions on a real pty (``/bin/sh`` standing in for ``ctr run``) and ``ctr`` run
as a program are in tests/integration/test_agent_shell.py; the real containerd
in tests/vm/test_agent_shell_vm.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from atoll.agent.shell import (
    ContainerdRuntime,
    SessionId,
    ShellInputError,
    ShellRequest,
    parse_request,
)
from atoll.wire.shellframe import Frame, FrameReader, encode_frame


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({}, "reason: required"),
        ({"reason": "   "}, "reason: required"),
        ({"reason": 3}, "reason: expected str"),
        ({"reason": "a\x1b[2Jb"}, "no control characters"),
        ({"reason": "x" * 501}, "at most 500"),
        ({"reason": "x", "ttl": 0}, "ttl: 0 seconds"),
        ({"reason": "x", "ttl": 14401}, "ttl: 14401"),
        ({"reason": "x", "ttl": "15m"}, "ttl: expected int"),
        ({"reason": "x", "ttl": True}, "ttl: expected int"),
        ({"reason": "x", "tty": 1}, "tty: expected bool"),
        ({"reason": "x", "rows": 0}, "rows: 0"),
        ({"reason": "x", "shell": "/bin/bash"}, "shell: unknown field"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], names: str) -> None:
    with pytest.raises(ShellInputError, match=names.replace("[", r"\[")):
        parse_request(body)


def test_a_good_request_gets_defaults() -> None:
    assert parse_request({"reason": " disk full? "}) == ShellRequest("disk full?", 900, True)
    got = parse_request({"reason": "x", "ttl": 60, "tty": False, "rows": 50, "cols": 200})
    assert got == ShellRequest("x", 60, False, 50, 200)


def test_the_ops_container_is_read_only_on_the_host_with_host_namespaces() -> None:
    argv = ContainerdRuntime().argv(SessionId("s1"), tty=True)
    assert argv[:6] == ["ctr", "-n", "default", "run", "--rm", "--tty"]
    joined = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--with-ns"]
    assert joined == ["network:/proc/1/ns/net", "pid:/proc/1/ns/pid"]
    assert "type=bind,src=/,dst=/host,options=rbind:rro" in argv
    assert "--privileged" not in argv
    assert argv[-3:] == ["docker.io/library/busybox:atoll", "atoll-shell-s1", "/bin/sh"]
    assert "--tty" not in ContainerdRuntime().argv(SessionId("s1"), tty=False)


def test_frames_are_reassembled_across_reads_and_bounded() -> None:
    reader = FrameReader()
    wire = encode_frame(Frame.DATA, b"hello") + encode_frame(Frame.EOF)
    assert reader.feed(wire[:3]) == []
    assert reader.feed(wire[3:]) == [(Frame.DATA, b"hello"), (Frame.EOF, b"")]
    with pytest.raises(ValueError, match="at most"):
        FrameReader().feed(bytes([1]) + (1 << 20).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="unknown frame type"):
        FrameReader().feed(bytes([9, 0, 0, 0, 0]))

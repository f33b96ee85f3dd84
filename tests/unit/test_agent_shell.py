"""The ops shell on the agent side, as data: request validation, the containerd argv, frames.

Sessions on a real pty (``/bin/sh`` standing in for ``ctr run``) and ``ctr`` run
as a program are in tests/integration/test_agent_shell.py; the real containerd
in tests/vm/test_agent_shell_vm.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atoll.agent.shell import (
    ContainerdRuntime,
    SessionId,
    ShellInputError,
    ShellRequest,
    ShellUnavailable,
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
        ({"reason": "x", "image": "busybox"}, "image: not a full image reference"),
        ({"reason": "x", "image": "docker.io/x:1 --privileged"}, "image: not a full"),
        ({"reason": "x", "image": "--privileged/x:1"}, "image: not a full"),  # a ctr flag
        ({"reason": "x", "image": ".x/y:1"}, "image: not a full"),
        ({"reason": "x", "image": "docker.io/" + "x" * 250 + ":1"}, "at most 255"),
        ({"reason": "x", "image": 7}, "image: expected str"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], names: str) -> None:
    with pytest.raises(ShellInputError, match=names.replace("[", r"\[")):
        parse_request(body)


def test_a_good_request_gets_defaults() -> None:
    assert parse_request({"reason": " disk full? "}) == ShellRequest("disk full?", 900, True)
    got = parse_request({"reason": "x", "ttl": 60, "tty": False, "rows": 50, "cols": 200})
    assert got == ShellRequest("x", 60, False, 50, 200)
    diagnosis = parse_request({"reason": "x", "image": "docker.io/library/busybox:atoll"})
    assert diagnosis.image == "docker.io/library/busybox:atoll"


def toolbox_runtime(
    images: Path, text: str = "toolbox-0a1b.oci.tar localhost/x/tb:1\n"
) -> ContainerdRuntime:
    images.mkdir(parents=True, exist_ok=True)
    (images / "toolbox.list").write_text(text)
    return ContainerdRuntime(images=images, imported=images / "imported")


def test_the_ops_container_is_read_only_on_the_host_with_host_namespaces(tmp_path: Path) -> None:
    runtime = toolbox_runtime(tmp_path)
    argv = runtime.argv(SessionId("s1"), tty=True)
    assert argv[:6] == ["ctr", "-n", "default", "run", "--rm", "--tty"]
    joined = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--with-ns"]
    assert joined == ["network:/proc/1/ns/net", "pid:/proc/1/ns/pid"]
    assert "type=bind,src=/,dst=/host,options=rbind:rro" in argv
    assert [a for a in argv if a.startswith("type=bind")] == [
        "type=bind,src=/,dst=/host,options=rbind:rro"
    ]  # nothing of the host is writable
    assert "--privileged" not in argv
    assert argv[-3:] == ["localhost/x/tb:1", "atoll-shell-s1", "/bin/sh"]
    assert "--tty" not in runtime.argv(SessionId("s1"), tty=False)
    # A diagnosis shell: the same container, another (preloaded) image.
    diagnosis = runtime.argv(SessionId("s1"), tty=True, image="docker.io/library/busybox:1")
    assert diagnosis[-3:] == ["docker.io/library/busybox:1", "atoll-shell-s1", "/bin/sh"]
    assert diagnosis[:-3] == argv[:-3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"this image has no ops toolbox \(.*toolbox.list is missing"),
        ("toolbox.tar localhost/x/tb:1 extra\n", r"toolbox.list:1: expected '<archive> <ref"),
        ("../etc/passwd localhost/x/tb:1\n", "is not a plain file name"),
        ("", "expected one toolbox, found 0"),
    ],
)
def test_a_missing_or_bad_toolbox_list_is_named(
    tmp_path: Path, text: str | None, message: str
) -> None:
    runtime = (
        ContainerdRuntime(images=tmp_path) if text is None else toolbox_runtime(tmp_path, text)
    )
    with pytest.raises(ShellUnavailable, match=message):
        runtime.toolbox()


def test_frames_are_reassembled_across_reads_and_bounded() -> None:
    reader = FrameReader()
    wire = encode_frame(Frame.DATA, b"hello") + encode_frame(Frame.EOF)
    assert reader.feed(wire[:3]) == []
    assert reader.feed(wire[3:]) == [(Frame.DATA, b"hello"), (Frame.EOF, b"")]
    with pytest.raises(ValueError, match="at most"):
        FrameReader().feed(bytes([1]) + (1 << 20).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="unknown frame type"):
        FrameReader().feed(bytes([9, 0, 0, 0, 0]))

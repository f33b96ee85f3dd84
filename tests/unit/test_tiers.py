"""The unit tier's guard (``tests/unit/conftest.py``): every way out of the process fails.

Each case is a call a unit test might make by mistake; the guard must fail it with
the message that says where the test belongs, before anything starts or connects.
"""

from __future__ import annotations

import os
import pty
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from atoll import process
from atoll.agent import command


def _unix(use: Callable[[socket.socket, str], object], tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        use(s, str(tmp_path / "s"))


def _tcp(use: Callable[[socket.socket, tuple[str, int]], object]) -> None:
    with socket.socket() as s:  # closed here: the guard's failure skips the library's close
        use(s, ("127.0.0.1", 9))


@pytest.mark.parametrize(
    ("call", "called"),
    [
        (lambda _: process.run(["true"]), "subprocess.Popen"),
        (lambda _: process.start(["sleep", "60"]), "subprocess.Popen"),
        (lambda _: command.run(["true"], timeout=5), "subprocess.Popen"),
        (lambda _: command.spawn(["/bin/sh"], terminal=0), "os.fork"),
        (lambda _: os.posix_spawn("/bin/true", ["true"], {}), "os.posix_spawn"),
        (lambda _: pty.openpty(), "pty.openpty"),
        (lambda _: os.openpty(), "os.openpty"),
        (lambda _: _tcp(socket.socket.connect), "socket.socket.connect"),
        (lambda _: _tcp(socket.socket.bind), "socket.socket.bind"),
        (lambda tmp: _unix(socket.socket.bind, tmp), "socket.socket.bind"),
        (lambda tmp: _unix(socket.socket.connect_ex, tmp), "socket.socket.connect_ex"),
    ],
    ids=["process.run", "process.start", "command.run", "command.spawn", "posix_spawn",
         "pty.openpty", "os.openpty", "tcp-connect", "tcp-bind", "unix-bind", "unix-connect"],
)  # fmt: skip
def test_programs_sockets_and_ptys_fail_the_test(
    tmp_path: Path, call: Callable[[Path], object], called: str
) -> None:
    with pytest.raises(pytest.fail.Exception, match="move this test to tests/integration") as e:
        call(tmp_path)
    assert called in str(e.value)
    assert not (tmp_path / "s").exists()  # nothing was bound


def test_socket_pairs_stay_allowed() -> None:
    """In-process pipes: neither bound nor connected (the ops shell's frames use them)."""
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"x")
        assert b.recv(1) == b"x"

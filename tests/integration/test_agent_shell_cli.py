"""``atoll node shell`` as a user runs it, against a live agent on loopback (mutual TLS).

The client is a separate process: once with its stdin a pipe (a script), once on
a pseudo-terminal of its own (raw mode, the window size sent, the mode restored).
The agent's shell command is ``/bin/sh`` on its pty (no containerd on this host).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll import process
from atoll.agent.server import AgentServer
from atoll.agent.shell import CommandRuntime
from atoll.pki import Role
from tests.integration.running_agent import RunningAgent


@dataclass(frozen=True)
class Live:
    argv: list[str]
    server: AgentServer


@pytest.fixture
def live(start_agent: Callable[..., RunningAgent]) -> Live:
    agent = start_agent(
        answers=lambda argv: "",
        clients=[("ada", Role.ADMIN)],
        crl=False,
        hostname=None,
        shell_runtime=CommandRuntime(("/bin/sh", "+i")),
    )
    creds = agent.pki / "clients"
    argv = [sys.executable, "-m", "atoll", "node", "--endpoint", agent.endpoint,
            "--ca", str(agent.pki / "ca.crt"), "--cert", str(creds / "ada.crt"),
            "--key", str(creds / "ada.key"), "shell", "--reason", "cli test"]  # fmt: skip
    return Live(argv, agent.server)


def test_a_piped_script_gets_exact_output_and_the_exit_status(live: Live) -> None:
    done = process.run(live.argv, input=b"echo a-$((2+3))\nexit 4\n", timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (4, b"a-5\n", b"")


def test_the_ttl_ends_a_session_with_a_message(live: Live) -> None:
    done = process.run([*live.argv, "--ttl", "2s"], input=b"sleep 30\n", timeout=60, check=False)
    assert done.returncode == 1 and b"ended: ttl (TTL of 2 s)" in done.stderr
    end = live.server.agent.audit.records()[-1]
    assert end["what"] == "shell end" and end["end"] == "ttl" and end["ttl"] == 2


def test_a_terminal_session_runs_in_raw_mode_with_the_window_size(live: Live) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    client = process.start(live.argv, stdin=slave, stdout=slave, stderr=slave)
    try:
        deadline = time.monotonic() + 30
        # The client switches its terminal to raw mode once the session is open.
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.05)
        os.write(master, b"stty size; tty\nexit 5\n")
        assert client.wait(timeout=30) == 5
        assert termios.tcgetattr(slave)[3] & termios.ICANON  # the mode is restored
        out = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                out += os.read(master, 65536)
            except OSError:
                break
    finally:
        client.kill()
        os.close(master)
    # the agent's pty at the client's size; our input echoed by the agent's pty, not ours
    text = out.decode(errors="replace")
    assert "33 111" in text and "/dev/pts/" in text and "stty size; tty" in text, text
    os.close(slave)
    start = next(r for r in live.server.agent.audit.records() if r.get("result") == 101)
    assert start["params"]["tty"] is True
    header = json.loads(Path(start["transcript"]).read_text().splitlines()[0])
    assert (header["width"], header["height"]) == (111, 33)

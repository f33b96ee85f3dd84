"""The agent's runner, its pure parts: the error's message, the environment, refused
timeouts. Programs run for real in tests/integration/test_agent_command.py."""

from __future__ import annotations

import math

import pytest

from atoll.agent import command
from atoll.agent.command import CommandError


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            CommandError(["ostree", "admin", "status"], status=1, stderr="error: no sysroot\n"),
            "ostree admin status: exit 1 | error: no sysroot",
        ),
        (
            CommandError(
                ["ostree", "admin", "deploy", "--retain", "abc"],
                timeout=1800.0,
                stderr=b"Copying /etc changes\n\n  fsync...\n",
            ),
            "ostree admin deploy --retain abc: timed out after 1800 s | Copying /etc changes"
            " | fsync...",
        ),
        (CommandError(["blkid", "-p"], timeout=0.5), "blkid -p: timed out after 0.5 s"),
        (
            CommandError(["ctr", "version"], start_error=FileNotFoundError(2, "No such file")),
            "ctr version: cannot run: No such file",
        ),
        (CommandError(["sleep", "9"], status=-9), "sleep 9: killed by SIGKILL"),
        # The argv is a line a user can paste into a shell.
        (
            CommandError(["mount", "/dev/x", "/run/a b"], status=32),
            "mount /dev/x '/run/a b': exit 32",
        ),
        # Only the last lines of stderr, each cut short.
        (
            CommandError(["x"], status=2, stderr="1\n2\n3\n4\n" + "y" * 600),
            "x: exit 2 | 3 | 4 | " + "y" * (command.TAIL_CHARS - 3) + "...",
        ),
    ],
)
def test_the_error_names_the_argv_what_happened_and_the_tail_of_stderr(
    error: CommandError, message: str
) -> None:
    assert str(error) == message
    assert isinstance(error, RuntimeError)  # the loops that survive failures catch it


def test_the_error_keeps_its_parts_for_callers_that_decide_on_them() -> None:
    timed_out = CommandError(["ostree", "pull"], timeout=60, stderr="a\nb\n")
    assert timed_out.timed_out and timed_out.status is None
    assert (timed_out.what, timed_out.stderr_tail) == ("timed out after 60 s", ("a", "b"))
    failed = CommandError(["ostree", "pull"], status=1)
    assert not failed.timed_out and failed.stderr_tail == () and failed.detail == "exit 1"


def test_the_environment_is_clean_unless_the_caller_adds_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/home/someone/evil.so")
    monkeypatch.setenv("PATH", "/home/someone/bin")
    assert command.environment() == {"PATH": command.PATH, "LANG": "C.UTF-8"}
    assert command.environment({"TERM": "dumb", "PATH": "/opt/bin"}) == {
        "PATH": "/opt/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan])
def test_a_call_without_a_finite_timeout_is_refused_before_anything_runs(timeout: float) -> None:
    with pytest.raises(ValueError, match=r"timeout: .* finite number of seconds"):
        command.run(["/nonexistent/never-run"], timeout=timeout)


def test_an_empty_argv_is_refused() -> None:
    with pytest.raises(ValueError, match="empty argv"):
        command.run([], timeout=1)


def test_the_tail_skips_blank_lines_and_takes_the_last_ones() -> None:
    assert command.tail(b"\n a \n\nb\n  \nc\n", lines=2) == ("b", "c")
    assert command.tail("", lines=3) == ()
    assert command.tail("a\nb", lines=0) == ()

"""atoll.process with real programs: run() waits for one, start() leaves one running.

The stop tests use programs that behave like the ones atoll starts: one that
ends on SIGTERM (a server), one that ignores it (a hung child), one that
starts children of its own (qemu and its relays).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from atoll.errors import ToolError, ToolMissing
from atoll.process import DEVNULL, PIPE, STDOUT, interrupt_on_sigterm, run, start

# Says it is ready once its TERM handler is set, then waits to be stopped.
IGNORES_TERM = "trap '' TERM; echo ready; while :; do sleep 0.1; done"


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` ends (or is only a zombie left to init) within ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# -- run -----------------------------------------------------------------------


def test_run_captures_output() -> None:
    result = run(["printf", "%s", "hello"])
    assert result.stdout == b"hello"


def test_run_uses_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOLL_LEAK", "secret")
    result = run(["env"])
    assert b"ATOLL_LEAK" not in result.stdout
    assert b"LANG=C.UTF-8" in result.stdout


def test_failure_names_program_exit_code_and_stderr() -> None:
    with pytest.raises(ToolError) as exc:
        run(["sh", "-c", "echo broken pipe dream >&2; exit 3"])
    message = str(exc.value)
    assert "exit code 3" in message
    assert "broken pipe dream" in message
    assert exc.value.returncode == 3


def test_stdin_is_closed() -> None:
    result = run(["cat"], timeout=10)
    assert result.stdout == b""


def test_run_streams_lines_and_keeps_the_tail_for_errors() -> None:
    seen: list[str] = []
    result = run(
        ["/bin/sh", "-c", "echo one; echo two >&2; echo three"], on_line=seen.append, check=False
    )
    assert seen == ["one", "two", "three"]
    assert result.returncode == 0
    with pytest.raises(ToolError, match="three"):
        run(["/bin/sh", "-c", "echo three; exit 3"], on_line=seen.append)


def test_a_program_past_its_timeout_is_killed_and_named() -> None:
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"sleep: timed out after 1 s: .*sleep 30") as exc:
        run(["sleep", "30"], timeout=1, check=False)
    assert exc.value.returncode == -1
    assert time.monotonic() - started < 10


def test_a_callback_that_fails_stops_the_streamed_program(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def fail(line: str) -> None:
        raise RuntimeError(f"callback saw {line}")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="callback saw started"):
        run(["sh", "-c", f"echo $$ > {pid_file}; echo started; exec sleep 30"], on_line=fail)
    assert _gone(int(pid_file.read_text()), within=1.0)
    assert time.monotonic() - started < 10


def test_ctrl_c_during_a_streamed_run_ends_everything_the_program_started(
    tmp_path: Path,
) -> None:
    # A stand-in for mmdebstrap: its helper ignores SIGINT and would keep writing
    # into the work directory after the main process has ended on Ctrl-C.
    helper_pid = tmp_path / "helper"
    script = (
        # (bounded: 30 s at most, should it ever escape)
        f"(trap '' INT; for i in $(seq 600); do touch {tmp_path}/work.$$; sleep 0.05; done) & "
        f"echo $! > {helper_pid}; echo started; wait"
    )

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    # As atoll's long verbs run it (compose, cluster build): with Python's SIGINT handler
    # back, so the program starts with SIGINT's default action even when this process
    # was started with SIGINT ignored (a script's background job: CI).
    with interrupt_on_sigterm(), pytest.raises(KeyboardInterrupt):
        run(["sh", "-c", script], on_line=interrupt)
    # Gone when run() returns, not some time later: the caller removes work
    # directories next.
    assert _gone(int(helper_pid.read_text()), within=0.0)


# -- start ---------------------------------------------------------------------


def test_start_returns_at_once_with_pipes_and_a_clean_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATOLL_LEAK", "secret")
    with start(["sh", "-c", "read x; echo got $x; env"], stdin=PIPE, stdout=PIPE) as child:
        assert child.poll() is None and child.returncode is None
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(b"hello\n")
        child.stdin.close()
        output = child.stdout.read()
        assert child.wait(timeout=10) == 0
    assert output.startswith(b"got hello\n")
    assert b"ATOLL_LEAK" not in output and b"LANG=C.UTF-8" in output
    assert child.returncode == 0


def test_start_sends_output_to_a_file_and_stdin_is_closed(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with log.open("wb") as out:
        script = "cat; echo to-stderr >&2; pwd; echo $ATOLL_MARK"
        env = {"ATOLL_MARK": "added"}
        child = start(["sh", "-c", script], cwd=tmp_path, stdout=out, stderr=STDOUT, env=env)
    assert child.wait(timeout=10) == 0
    assert log.read_bytes() == f"to-stderr\n{tmp_path}\nadded\n".encode()


def test_wait_past_its_timeout_names_the_program_and_leaves_it_running() -> None:
    with start(["sleep", "30"]) as child:
        with pytest.raises(ToolError, match=r"sleep \(pid \d+\): still running after 0.2 s"):
            child.wait(timeout=0.2)
        assert child.poll() is None
    assert child.returncode == -signal.SIGTERM  # leaving the block stopped it


def test_stop_ends_a_program_that_honours_sigterm_at_once() -> None:
    child = start(["sleep", "30"])
    started = time.monotonic()
    assert child.stop(grace=20) == -signal.SIGTERM
    assert time.monotonic() - started < 10
    assert child.stop() == -signal.SIGTERM  # idempotent


def test_stop_kills_a_program_that_ignores_sigterm_after_the_grace() -> None:
    child = start(["sh", "-c", IGNORES_TERM], stdout=PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert child.stop(grace=0.5) == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - started < 10
    child.close()


def test_kill_gives_no_grace_and_reaps() -> None:
    child = start(["sh", "-c", IGNORES_TERM], stdout=DEVNULL)
    assert child.kill() == -signal.SIGKILL
    assert child.poll() == -signal.SIGKILL
    child.send_signal(signal.SIGTERM)  # ended: nothing is sent to a reused pid


def test_leaving_the_block_stops_the_program_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError), start(["sleep", "30"]) as child:
        raise RuntimeError("the caller failed")
    assert child.returncode == -signal.SIGTERM


def test_a_child_in_its_own_session_is_stopped_with_what_it_started() -> None:
    # A stand-in for qemu and its relay processes.
    with start(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=PIPE, session=True) as child:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert os.getsid(child.pid) == child.pid != os.getsid(0)
        child.stop(grace=5)
    assert _gone(grandchild)


def test_a_child_in_our_session_is_signalled_alone() -> None:
    with start(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=PIPE) as child:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        assert os.getsid(child.pid) == os.getsid(0)
        child.kill()
    assert not _gone(grandchild, within=0.3)
    os.kill(grandchild, signal.SIGKILL)  # ours to clean up: its pid was just read
    assert _gone(grandchild)


def test_a_program_that_cannot_start_is_named(tmp_path: Path) -> None:
    with pytest.raises(ToolMissing, match="not found"):
        start([tmp_path / "absent"])
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ToolError, match=r"not-executable: cannot start \(Permission denied\)"):
        start([script])

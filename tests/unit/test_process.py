from __future__ import annotations

import pytest

from atoll.errors import ToolError, ToolMissing
from atoll.process import command_line, run


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


def test_missing_program_names_package() -> None:
    with pytest.raises(ToolMissing) as exc:
        run(["atoll-no-such-program"])
    assert "atoll-no-such-program: not installed" in str(exc.value)


def test_stdin_is_closed() -> None:
    result = run(["cat"], timeout=10)
    assert result.stdout == b""


def test_command_line_is_pasteable() -> None:
    assert command_line(["echo", "a b", "c"]) == "echo 'a b' c"


def test_run_streams_lines_and_keeps_the_tail_for_errors() -> None:
    seen: list[str] = []
    result = run(
        ["/bin/sh", "-c", "echo one; echo two >&2; echo three"], on_line=seen.append, check=False
    )
    assert seen == ["one", "two", "three"]
    assert result.returncode == 0
    with pytest.raises(ToolError, match="three"):
        run(["/bin/sh", "-c", "echo three; exit 3"], on_line=seen.append)

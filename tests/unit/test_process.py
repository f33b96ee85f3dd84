"""atoll.process without starting anything: argv, environment, errors, decoding.

What needs real programs (running, streaming, start/stop/kill) is in
tests/integration/test_process.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import ToolMissing
from atoll.process import Completed, as_text, clean_environment, command_line, run, start


def test_missing_program_names_package() -> None:
    with pytest.raises(ToolMissing) as exc:
        run(["atoll-no-such-program"])
    assert "atoll-no-such-program: not installed" in str(exc.value)


def test_a_missing_program_is_not_started_either() -> None:
    with pytest.raises(ToolMissing, match="atoll-no-such-program: not installed"):
        start(["atoll-no-such-program", "--serve"])


def test_a_known_missing_program_says_which_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("atoll.process.CLEAN_PATH", "/nonexistent")
    with pytest.raises(ToolMissing) as exc:
        start(["qemu-system-x86_64"])
    assert exc.value.hint == "apt-get install qemu-system-x86"


def test_an_empty_argv_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match=r"run\(\) needs a program"):
        run([])
    with pytest.raises(ValueError, match=r"start\(\) needs a program"):
        start([])


def test_command_line_is_pasteable() -> None:
    assert command_line(["echo", "a b", "c"]) == "echo 'a b' c"
    assert command_line([Path("/usr/bin/env"), "x=$y"]) == "/usr/bin/env 'x=$y'"


def test_the_environment_is_clean_with_explicit_additions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATOLL_LEAK", "secret")
    monkeypatch.setenv("HOME", "/home/ada")
    monkeypatch.setenv("PATH", "/home/ada/bin")
    env = clean_environment({"PYTHONPATH": "/src", "LANG": "C"})
    assert "ATOLL_LEAK" not in env
    assert env["HOME"] == "/home/ada"  # passed through
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert (env["PYTHONPATH"], env["LANG"], env["LC_ALL"]) == ("/src", "C", "C.UTF-8")


def test_as_text_decodes_output_and_replaces_bad_bytes() -> None:
    done: Completed[bytes] = Completed(["x"], 3, stdout=b"caf\xc3\xa9\n", stderr=b"\xff")
    text = as_text(done)
    assert (text.args, text.returncode, text.stdout, text.stderr) == (["x"], 3, "café\n", "\ufffd")
    assert as_text(Completed(["x"], 0)).stdout == ""  # nothing captured

"""``atoll``'s entry point: the one place where errors become exit codes.

The table runs :func:`atoll.cli.main` in-process on a stand-in parser whose one
verb (``probe``) does what the row says, so each row checks main's mapping
alone: 0 ok, 1 failed, 2 bad input, 130 interrupted, and a closed pipe.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Iterator

import pytest

from atoll import cli
from atoll.errors import (
    AtollError,
    InputError,
    Interrupted,
    ManifestError,
    ToolError,
    ToolMissing,
)

Verb = Callable[[argparse.Namespace], int]


def test_version_flag_prints_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert "atoll 0.1.0" in capsys.readouterr().out


def test_unknown_verb_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-verb"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _probe(verb: Verb) -> Callable[[], argparse.ArgumentParser]:
    """A parser like :func:`atoll.cli.build_parser`'s with one verb, ``probe``."""

    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="atoll")
        parser.add_argument("--debug", action="store_true")
        sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
        probe = sub.add_parser("probe")
        probe.add_argument("--count", type=int, default=1)
        probe.set_defaults(handler=verb)
        return parser

    return build


def _raises(error: BaseException) -> Verb:
    def verb(_: argparse.Namespace) -> int:
        raise error

    return verb


def _exit_code(argv: list[str]) -> int:
    """main's return value, or the code argparse exits with (as the console script would)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        assert isinstance(e.code, int), e.code
        return e.code


@pytest.mark.parametrize(
    ("argv", "verb", "code", "stderr"),
    [
        pytest.param(["probe"], lambda _: 0, 0, "", id="ok"),
        pytest.param(
            ["--debug", "probe", "--count", "3"], lambda a: a.count - 3, 0, "", id="flags"
        ),
        pytest.param(
            ["probe"],
            _raises(AtollError("ostree pull: no such ref")),
            1,
            "atoll probe: ostree pull: no such ref\n",
            id="failed",
        ),
        pytest.param(
            ["probe"],
            _raises(ToolError("mmdebstrap failed", argv=["mmdebstrap"], returncode=1)),
            1,
            "atoll probe: mmdebstrap failed\n",
            id="a tool failed",
        ),
        pytest.param(
            ["probe"], _raises(ToolMissing("qemu-img: not found")), 1, "qemu-img", id="no tool"
        ),
        pytest.param(
            ["probe"],
            _raises(InputError("web.toml: [image].size: '1X'", hint="e.g. 4G")),
            2,
            "atoll probe: web.toml: [image].size: '1X'\n  hint: e.g. 4G\n",
            id="bad input",
        ),
        pytest.param(
            ["probe"],
            _raises(ManifestError(["web.toml: a", "web.toml: b"])),
            2,
            "manifest has 2 problems:\n  web.toml: a\n  web.toml: b\n",
            id="bad manifest",
        ),
        pytest.param(["probe", "--count", "x"], lambda _: 0, 2, "invalid int value", id="usage"),
        pytest.param(["probe", "--nope"], lambda _: 0, 2, "unrecognized arguments", id="flag"),
        pytest.param([], lambda _: 0, 2, "required: VERB", id="no verb"),
        pytest.param(
            ["probe"], _raises(KeyboardInterrupt()), 130, "atoll: interrupted\n", id="Ctrl-C"
        ),
        pytest.param(
            ["probe"],
            _raises(Interrupted("interrupted; the cache is consistent")),
            130,
            "atoll probe: interrupted; the cache is consistent\n",
            id="interrupted",
        ),
        pytest.param(["probe"], _raises(BrokenPipeError()), 1, "", id="closed pipe"),
    ],
)
def test_exit_codes(
    argv: list[str],
    verb: Verb,
    code: int,
    stderr: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "build_parser", _probe(verb))
    assert _exit_code(argv) == code
    err = capsys.readouterr().err
    if stderr:
        assert stderr in err
    else:
        assert err == ""


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only atoll's own errors become exit codes; anything else is a bug to see."""
    monkeypatch.setattr(cli, "build_parser", _probe(_raises(ZeroDivisionError("bug"))))
    with pytest.raises(ZeroDivisionError):
        cli.main(["probe"])


@pytest.fixture
def closed_pipe() -> Iterator[io.TextIOWrapper]:
    """A pipe whose reader has gone (``atoll ... | head``), as a text file to write to.

    A test makes it stdout in its body: capsys sets its own stdout again when
    the test starts.
    """
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", encoding="utf-8") as pipe:
        yield pipe


def _prints(lines: int) -> Verb:
    def verb(_: argparse.Namespace) -> int:
        for i in range(lines):
            print(f"line {i}")
        return 0

    return verb


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(100_000, id="the verb's own write fails"),
        pytest.param(1, id="the last flush fails"),
    ],
)
def test_a_closed_pipe_ends_quietly(
    lines: int,
    closed_pipe: io.TextIOWrapper,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "build_parser", _probe(_prints(lines)))
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    assert cli.main(["probe"]) == 1
    assert capsys.readouterr().err == ""
    # What the interpreter does at exit: flush stdout. It now goes to /dev/null,
    # so no "Exception ignored ... BrokenPipeError" follows.
    closed_pipe.write("more\n")
    closed_pipe.flush()
    assert os.path.samestat(os.fstat(closed_pipe.fileno()), os.stat(os.devnull))


def test_help_into_a_closed_pipe_is_quiet(
    closed_pipe: io.TextIOWrapper,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "build_parser", _probe(lambda _: 0))
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().err == ""
    closed_pipe.flush()
    assert os.path.samestat(os.fstat(closed_pipe.fileno()), os.stat(os.devnull))

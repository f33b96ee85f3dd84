"""The reporter times stages itself, on its clock, and still ends a stage that raised.

Every face (terminal, plain lines, JSON lines) is driven by a fake clock that
the test advances by hand: no sleeps, exact durations.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import pytest
from rich.console import Console

from atoll.errors import AtollError, ManifestError, ToolError
from atoll.progress import JsonReporter, PlainReporter, Reporter, RichReporter, Stage


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Face:
    """A reporter writing into a buffer, on a fake clock."""

    def __init__(self, make: Callable[[io.StringIO, FakeClock], Reporter]) -> None:
        self.clock = FakeClock()
        self.out = io.StringIO()
        self.reporter = make(self.out, self.clock)

    def text(self) -> str:
        self.reporter.close()
        return self.out.getvalue()


def plain(out: io.StringIO, clock: FakeClock) -> Reporter:
    return PlainReporter(out, clock=clock)


def json_lines(out: io.StringIO, clock: FakeClock) -> Reporter:
    return JsonReporter(out, clock=clock, wall_clock=lambda: 1_700_000_000.0)


def terminal(out: io.StringIO, clock: FakeClock) -> Reporter:
    console = Console(file=out, force_terminal=False, color_system=None, width=120)
    return RichReporter(console, clock=clock)


def _record(stage: str, seconds: float, detail: str = "", *, failed: bool) -> str:
    return json.dumps(
        {
            "detail": detail,
            "event": "stage-end",
            "failed": failed,
            "seconds": seconds,
            "stage": stage,
            "time": 1_700_000_000.0,
        },
        sort_keys=True,
    )


BEGIN = '{"detail": "3 packages", "event": "stage-begin", "stage": "rootfs", "time": 1700000000.0}'


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (plain, ["==> rootfs: 3 packages", "<== rootfs (2.5s)"]),
        (json_lines, [BEGIN, _record("rootfs", 2.5, failed=False)]),
        (terminal, ["done rootfs (2.5s)"]),
    ],
    ids=["plain", "json", "terminal"],
)
def test_a_stage_is_timed_on_the_reporters_clock(
    make: Callable[[io.StringIO, FakeClock], Reporter], expected: list[str]
) -> None:
    face = Face(make)
    with face.reporter.stage("rootfs", "3 packages") as stage:
        face.clock.advance(2.5)
    assert stage == Stage("rootfs", seconds=2.5, failed=False)
    lines = [line.rstrip() for line in face.text().splitlines()]
    for line in expected:
        assert line in lines


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (plain, "<== slim failed (1.8s): slim: removing packages broke binaries"),
        (
            json_lines,
            _record("slim", 1.75, "slim: removing packages broke binaries", failed=True),
        ),
        (terminal, "failed slim (1.8s) - slim: removing packages broke binaries"),
    ],
    ids=["plain", "json", "terminal"],
)
def test_a_stage_that_raised_ends_as_failed_with_its_time(
    make: Callable[[io.StringIO, FakeClock], Reporter], expected: str
) -> None:
    face = Face(make)
    error = ToolError(
        "slim: removing packages broke binaries\n  /usr/bin/x: needs libx.so",
        argv=["x"],
        returncode=1,
    )
    with pytest.raises(ToolError) as raised, face.reporter.stage("slim") as stage:
        face.clock.advance(1.75)
        raise error
    assert raised.value is error  # the error goes on, unchanged
    assert stage == Stage("slim", seconds=1.75, failed=True)
    assert expected in [line.rstrip() for line in face.text().splitlines()]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (plain, "<== commit failed (0.5s): interrupted"),
        (json_lines, _record("commit", 0.5, "interrupted", failed=True)),
        (terminal, "failed commit (0.5s) - interrupted"),
    ],
    ids=["plain", "json", "terminal"],
)
def test_ctrl_c_ends_the_stage_as_interrupted(
    make: Callable[[io.StringIO, FakeClock], Reporter], expected: str
) -> None:
    face = Face(make)
    with pytest.raises(KeyboardInterrupt), face.reporter.stage("commit"):
        face.clock.advance(0.5)
        raise KeyboardInterrupt
    assert expected in [line.rstrip() for line in face.text().splitlines()]


def test_brackets_in_a_failure_are_shown_as_written_on_a_terminal() -> None:
    face = Face(terminal)
    with pytest.raises(AtollError), face.reporter.stage("slim"):
        raise AtollError("[strip] remove broke [/usr/bin/x]")
    assert "failed slim (0.0s) - [strip] remove broke [/usr/bin/x]" in face.text()


def test_a_manifest_error_ends_the_stage_with_its_head_line() -> None:
    face = Face(plain)
    with pytest.raises(ManifestError), face.reporter.stage("validate"):
        raise ManifestError(["m.toml: [packages].include: unknown package 'x'"])
    assert face.text().splitlines()[-1] == "<== validate failed (0.0s): manifest has 1 problem:"


def test_stages_nest_and_each_gets_its_own_time() -> None:
    face = Face(plain)
    with face.reporter.stage("compose") as outer:
        face.clock.advance(1.0)
        with face.reporter.stage("rootfs") as inner:
            face.clock.advance(3.0)
        face.clock.advance(0.5)
    assert (outer.seconds, inner.seconds) == (4.5, 3.0)
    assert face.text().splitlines() == [
        "==> compose",
        "==> rootfs",
        "<== rootfs (3.0s)",
        "<== compose (4.5s)",
    ]


def test_a_long_error_is_cut_to_one_short_line() -> None:
    face = Face(plain)
    with pytest.raises(RuntimeError), face.reporter.stage("shape"):
        raise RuntimeError("x" * 300)
    last = face.text().splitlines()[-1]
    assert last == "<== shape failed (0.0s): " + "x" * 117 + "..."

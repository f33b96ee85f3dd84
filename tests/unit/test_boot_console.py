"""Console parsing and the phase table, from recorded console lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.boot.console import (
    ConsoleState,
    Milestone,
    parse_analysis,
    parse_timespan,
)
from atoll.boot.report import BootReport, phases_from

# A trimmed console of a real atoll boot (direct mode, TCG), with host times.
RECORDED: list[tuple[float, str]] = [
    (3.0, "[    0.000000] Linux version 6.1.0-27-cloud-amd64 (debian-kernel@lists.debian.org)"),
    (
        5.0,
        "[    1.900000] Run /usr/lib/ostree/ostree-prepare-root as init process",
    ),
    (5.5, "atoll-prepare-root: deployment /ostree/deploy/atoll/deploy/abc.0"),
    (
        6.5,
        "[    3.400000] systemd[1]: systemd 252.30-1~deb12u2 running in system mode (+PAM +AUDIT)",
    ),
    (12.0, "[  OK  ] Reached target \x1b[0;1;39mbasic.target\x1b[0m - Basic System."),
    (14.0, "[  OK  ] Started containerd.service - containerd container runtime."),
    (15.0, "ATOLL-READY uptime=12.50 11.00"),
    (16.0, "ATOLL-ANALYZE begin"),
    (
        16.0,
        "ATOLL-ANALYZE time Startup finished in 2.100s (kernel) + 10.400s (userspace) = 12.500s",
    ),
    (16.0, "ATOLL-ANALYZE time multi-user.target reached after 10.3s in userspace."),
    (16.0, "ATOLL-ANALYZE chain multi-user.target @10.3s"),
    (16.0, "ATOLL-ANALYZE chain └─containerd.service @7.1s +3.2s"),
    (16.0, "ATOLL-ANALYZE chain   └─basic.target @6.9s"),
    (16.0, "ATOLL-ANALYZE chain     └─systemd-udev-settle.service @1.2s +5.6s"),
    (16.0, "ATOLL-ANALYZE blame 5.600s systemd-udev-settle.service"),
    (16.0, "ATOLL-ANALYZE blame 1min 2.5s slow.service"),
    (16.0, "ATOLL-ANALYZE blame 812ms systemd-journald.service"),
    (16.0, "ATOLL-ANALYZE unit basic.target 6900000"),
    (16.0, "ATOLL-ANALYZE end"),
    (17.0, "ATOLL-SELFTEST usr-readonly ok"),
    (17.0, "ATOLL-SELFTEST container fail no preloaded busybox image: "),
    (17.0, "ATOLL-SELFTEST verdict fail"),
]


def _feed(lines: list[tuple[float, str]]) -> ConsoleState:
    state = ConsoleState()
    for now, line in lines:
        state.feed(line, now)
    return state


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("812ms", 0.812), ("5.1s", 5.1), ("1min 2.5s", 62.5), ("300us", 0.0003), ("2h", 7200.0)],
)
def test_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


def test_timespan_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a systemd time span"):
        parse_timespan("soon")


def test_milestones_and_ready_from_a_recorded_boot() -> None:
    state = _feed(RECORDED)
    assert state.ready
    assert state.ready_uptime == pytest.approx(12.5)
    assert state.milestones[Milestone.KERNEL] == 3.0
    assert state.milestones[Milestone.SYSTEMD] == 6.5
    assert state.milestones[Milestone.BASIC] == 12.0
    assert state.milestones[Milestone.CONTAINERD] == 14.0
    assert Milestone.AGENT not in state.milestones
    # The kernel started 3.0 s (host) - 0.0 s (printk) after... its first line.
    assert state.kernel_start == pytest.approx(3.0)
    assert state.init_printk == pytest.approx(1.9)
    assert state.fatal is None


def test_systemd_analysis_block() -> None:
    analysis = _feed(RECORDED).analysis
    assert analysis is not None
    assert analysis.kernel_seconds == pytest.approx(2.1)
    assert analysis.userspace_seconds == pytest.approx(10.4)
    units = [link.unit for link in analysis.critical_chain]
    assert units == [
        "multi-user.target",
        "containerd.service",
        "basic.target",
        "systemd-udev-settle.service",
    ]
    slowest = analysis.slowest_on_chain(1)
    assert [(s.unit, s.took) for s in slowest] == [("systemd-udev-settle.service", 5.6)]
    assert analysis.blame[1] == ("slow.service", 62.5)
    assert analysis.unit_active == {"basic.target": 6.9}


def test_selftest_lines() -> None:
    state = _feed(RECORDED)
    assert state.selftest["usr-readonly"] == ("ok", "")
    assert state.selftest["container"][0] == "fail"
    assert state.selftest_verdict == "fail"


def test_a_selftest_line_after_another_writers_partial_line_is_read() -> None:
    """systemd's spinner ends with a carriage return, not a newline: the next line
    written to the console starts after it."""
    state = ConsoleState()
    spinner = "\r\x1b[K[  \x1b[0;31m*\x1b[0m] A start job is running for /dev/vdb (5s / 1min 30s)"
    state.feed(spinner + "\rATOLL-SELFTEST usr-readonly ok", now=1.0)
    state.feed("[   9.1] x ATOLL-SELFTEST etc-writable fail /etc refused a write", now=1.0)
    # Seen in a test run: a kernel message inside the line, before its newline.
    journald = "[   30.507735] systemd-journald[150]: Received client request to flush"
    state.feed("ATOLL-SELFTEST var-writable ok" + journald, now=1.0)
    assert state.selftest == {
        "usr-readonly": ("ok", ""),
        "etc-writable": ("fail", "/etc refused a write"),
        "var-writable": ("ok", ""),
    }


@pytest.mark.parametrize(
    ("line", "meaning"),
    [
        ("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs", "kernel panic"),
        ("[    2.1] Requested init /sbin/foo failed (error -2).", "the init program could not run"),
        ("You are in emergency mode. After logging in, type ...", "systemd emergency mode"),
        ("BdsDxe: No bootable option or device was found.", "the firmware found nothing to boot"),
    ],
)
def test_fatal_lines_fail_fast(line: str, meaning: str) -> None:
    state = _feed([(1.0, "[    0.000000] Linux version 6.1.0"), (2.0, line)])
    assert state.fatal == meaning
    assert state.fatal_line == line.rstrip()
    assert not state.ready


def test_fatal_words_after_ready_are_ignored() -> None:
    state = _feed([(1.0, "ATOLL-READY uptime=3.0"), (2.0, "Kernel panic - not syncing")])
    assert state.fatal is None


def test_tail_keeps_the_last_lines_only() -> None:
    state = _feed([(float(i), f"line {i}") for i in range(100)])
    assert state.tail[-1] == "line 99"
    assert len(state.tail) == ConsoleState.TAIL


def test_phases_on_the_host_clock() -> None:
    state = _feed(RECORDED)
    phases = {p.name: p for p in phases_from(state, started=1.0)}
    # Firmware ends when the kernel started (host time of a line minus printk time).
    assert phases["firmware"].seconds == pytest.approx(2.0)
    # The hand-over to PID 1 is placed by the printk clock: 3.0 + 1.9.
    assert phases["kernel"].seconds == pytest.approx(1.9)
    assert phases["PID 1 to systemd"].seconds == pytest.approx(6.5 - 4.9)
    assert phases["systemd to basic.target"].seconds == pytest.approx(5.5)
    assert phases["to containerd ready"].seconds == pytest.approx(2.0)
    assert phases["to agent ready"].seconds == pytest.approx(1.0)
    assert phases["to agent ready"].end == pytest.approx(14.0)


def test_a_missing_milestone_is_reported_missing_not_guessed() -> None:
    lines = [line for line in RECORDED if "containerd" not in line[1]]
    phases = {p.name: p for p in phases_from(_feed(lines), started=1.0)}
    assert phases["to containerd ready"].seconds is None
    # The next phase starts from the last milestone seen (basic.target at 12.0).
    assert phases["to agent ready"].seconds == pytest.approx(3.0)


def test_report_json_names_slowest_units(tmp_path: Path) -> None:
    state = _feed(RECORDED)
    report = BootReport(
        image=tmp_path / "x.img",
        firmware="direct",
        accel="tcg",
        ready=True,
        ready_seconds=14.0,
        ready_uptime=state.ready_uptime,
        phases=phases_from(state, 1.0),
        analysis=state.analysis,
        console_log=tmp_path / "console.log",
    )
    payload = report.to_json()
    analyze = payload["systemd_analyze"]
    assert analyze["kernel_seconds"] == pytest.approx(2.1)
    assert analyze["slowest_on_critical_chain"][0]["unit"] == "systemd-udev-settle.service"
    assert payload["phases"][0]["name"] == "firmware"


def test_parse_analysis_ignores_noise() -> None:
    analysis = parse_analysis(["chain The time when unit became active...", "blame", "unit x"])
    assert analysis.critical_chain == ()
    assert analysis.blame == ()
    assert analysis.unit_active == {}

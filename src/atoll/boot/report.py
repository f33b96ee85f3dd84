"""The measured boot: :class:`BootReport`, built from a console's state, shown as a table.

Phases are measured on the host clock from the moment qemu was started:

========================  ==================================================
firmware                  qemu start -> the guest kernel starts
kernel                    kernel start -> PID 1 runs (prepare-root / init)
PID 1 to systemd          prepare-root sets up the deployment, execs systemd
systemd to basic.target   early units: mounts, udev, journald, tmpfiles...
to containerd ready       containerd.service started (Type=notify: ready)
to agent ready            the agent (or, until it exists, ATOLL-READY)
========================  ==================================================

A phase whose end was never seen on the console (a unit not in the image,
systemd's status output switched off) is reported as missing, never guessed;
the next phase then starts from the last milestone that was seen.
systemd's own split (kernel/userspace) and the slowest units on the critical
path come from the guest's ``systemd-analyze`` (:mod:`atoll.boot.console`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from atoll.boot.console import ConsoleState, Milestone, SystemdAnalysis

PHASES: tuple[tuple[str, Milestone], ...] = (
    ("firmware", Milestone.KERNEL),
    ("kernel", Milestone.INIT),
    ("PID 1 to systemd", Milestone.SYSTEMD),
    ("systemd to basic.target", Milestone.BASIC),
    ("to containerd ready", Milestone.CONTAINERD),
    ("to agent ready", Milestone.READY),
)


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float | None  # None: the phase's end was not seen
    end: float | None  # seconds since qemu started


@dataclass(frozen=True)
class BootReport:
    image: Path
    firmware: str
    accel: str
    ready: bool
    # qemu start -> ready marker on the host clock; None when not ready.
    ready_seconds: float | None
    # Guest uptime printed with the ready marker (kernel start -> ready).
    ready_uptime: float | None
    phases: tuple[Phase, ...]
    analysis: SystemdAnalysis | None
    console_log: Path
    failure: str | None = None
    last_lines: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        analysis: dict[str, Any] | None = None
        if self.analysis is not None:
            analysis = {
                "startup": self.analysis.startup,
                "kernel_seconds": self.analysis.kernel_seconds,
                "userspace_seconds": self.analysis.userspace_seconds,
                "critical_chain": [
                    {"unit": link.unit, "at": link.at, "took": link.took}
                    for link in self.analysis.critical_chain
                ],
                "slowest_on_critical_chain": [
                    {"unit": link.unit, "took": link.took}
                    for link in self.analysis.slowest_on_chain()
                ],
                "blame": [{"unit": unit, "seconds": s} for unit, s in self.analysis.blame],
            }
        return {
            "image": str(self.image),
            "firmware": self.firmware,
            "accel": self.accel,
            "ready": self.ready,
            "ready_seconds": _round(self.ready_seconds),
            "ready_uptime": self.ready_uptime,
            "phases": [
                {"name": p.name, "seconds": _round(p.seconds), "end": _round(p.end)}
                for p in self.phases
            ],
            "systemd_analyze": analysis,
            "console_log": str(self.console_log),
            "failure": self.failure,
            "last_lines": list(self.last_lines),
        }

    def render(self, console: Console) -> None:
        """The phase table, then systemd's split and the slowest units."""
        table = Table(title=f"boot of {self.image.name} ({self.firmware}, {self.accel})")
        table.add_column("phase")
        table.add_column("seconds", justify="right")
        table.add_column("at", justify="right")
        for phase in self.phases:
            table.add_row(phase.name, _fmt(phase.seconds), _fmt(phase.end))
        status = "[green]ready[/green]" if self.ready else f"[red]not ready[/red]: {self.failure}"
        table.add_row("[bold]total[/bold]", _fmt(self.ready_seconds), status)
        console.print(table)
        if self.analysis is not None:
            kernel, user = self.analysis.kernel_seconds, self.analysis.userspace_seconds
            console.print(f"systemd-analyze: kernel {_fmt(kernel)} s, userspace {_fmt(user)} s")
            slow = self.analysis.slowest_on_chain()
            if slow:
                console.print("slowest units on the critical chain:")
                for link in slow:
                    console.print(f"  {_fmt(link.took):>7} s  {link.unit}", highlight=False)
        if not self.ready and self.last_lines:
            console.print(f"last console lines ({self.console_log}):")
            for line in self.last_lines:
                console.print(f"  | {line}", highlight=False, markup=False)


def phases_from(state: ConsoleState, started: float) -> tuple[Phase, ...]:
    """Phases on the host clock, ``started`` = when qemu was started."""
    marks: dict[Milestone, float] = dict(state.milestones)
    # The console shows the kernel's first lines late (when the serial console
    # registers); the printk clock says when the kernel really started.
    if state.kernel_start is not None:
        marks[Milestone.KERNEL] = max(
            started, min(state.kernel_start, marks.get(Milestone.KERNEL, state.kernel_start))
        )
    if state.init_printk is not None and state.kernel_start is not None:
        marks[Milestone.INIT] = state.kernel_start + state.init_printk
    phases = []
    previous = started
    for name, milestone in PHASES:
        at = marks.get(milestone)
        if at is None:
            phases.append(Phase(name, None, None))
            continue
        phases.append(Phase(name, max(0.0, at - previous), at - started))
        previous = at
    return tuple(phases)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"

"""Reading a booting machine's serial console: milestones, fatal errors, systemd's report.

The console is the only channel a fresh atoll node has (there is no SSH), so
everything the host learns about a boot comes from lines on it:

* **milestones** with the host time a line was seen: the kernel's first
  message, the hand-over to PID 1 (the kernel's ``Run ... as init process`` or
  atoll's prepare-root marker), systemd starting, ``basic.target``, containerd,
  the agent and the ``ATOLL-READY`` line printed by ``atoll-ready.service``;
* **fatal patterns** (kernel panic, no root, init that cannot run, emergency
  mode, firmware with nothing to boot): the watcher reports them at once, so
  ``atoll boot`` fails in seconds instead of waiting for its timeout;
* the **systemd-analyze block** printed by ``atoll-boot-report.service``
  (lines prefixed ``ATOLL-ANALYZE``), parsed into :class:`SystemdAnalysis`;
* the **self-test verdict** (``ATOLL-SELFTEST`` lines) used by the VM tests.

Kernel lines carry the guest's printk time (``[    2.345678]``). Under TCG the
guest clock follows the host's, so the kernel's start on the host clock is the
host time of a kernel line minus its printk time: that splits "firmware" from
"kernel" even though the serial console only starts printing mid-way through
the kernel's boot. This module is pure (lines in, state out) and is tested
with recorded consoles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\]\s?")


class Milestone(StrEnum):
    KERNEL = "kernel"  # the kernel's first line on the console
    INIT = "init"  # the kernel runs PID 1 (atoll's prepare-root, or systemd)
    SYSTEMD = "systemd"  # systemd starts in the deployment
    BASIC = "basic"  # basic.target reached
    CONTAINERD = "containerd"  # containerd.service started (ready: Type=notify)
    AGENT = "agent"  # atoll-agent.service started
    READY = "ready"  # ATOLL-READY from atoll-ready.service


_MILESTONE_PATTERNS: tuple[tuple[Milestone, re.Pattern[str]], ...] = (
    (Milestone.KERNEL, re.compile(r"Linux version \d")),
    (Milestone.INIT, re.compile(r"Run \S+ as init process|atoll-prepare-root")),
    (Milestone.SYSTEMD, re.compile(r"systemd\[1\]: systemd \d+.* running in system mode")),
    (Milestone.BASIC, re.compile(r"Reached target .*(basic\.target|Basic System)")),
    (Milestone.CONTAINERD, re.compile(r"Started .*(containerd\.service|containerd container)")),
    (Milestone.AGENT, re.compile(r"Started .*atoll-agent\.service")),
    (Milestone.READY, re.compile(r"^ATOLL-READY\b")),
)

# Lines that mean the boot cannot succeed: fail fast, never wait for the timeout.
FATAL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Kernel panic - not syncing"), "kernel panic"),
    (re.compile(r"VFS: Unable to mount root fs"), "the kernel cannot mount the root filesystem"),
    (re.compile(r"No working init found"), "the kernel found no init to run"),
    (re.compile(r"Requested init \S+ failed"), "the init program could not run"),
    (re.compile(r"Starting init: \S+ exists but couldn't execute"), "init exists but cannot run"),
    (re.compile(r"atoll-prepare-root.*\b(error|fatal|failed)\b", re.I), "prepare-root failed"),
    (re.compile(r"Freezing execution\."), "systemd froze (fatal error in PID 1)"),
    (re.compile(r"You are in emergency mode|Entering emergency mode"), "systemd emergency mode"),
    (re.compile(r"Failed to start .*(Switch Root|Initrd)"), "the initramfs could not switch root"),
    (re.compile(r"UEFI Interactive Shell|^Shell>"), "the firmware found nothing to boot"),
    (re.compile(r"BdsDxe: No bootable option"), "the firmware found nothing to boot"),
    (re.compile(r"Failed to (load|start) image"), "the bootloader failed"),
    (re.compile(r"Boot failed: not a bootable disk"), "the firmware found nothing to boot"),
)

# systemd-analyze's "Startup finished in ... = ..." parts: "(kernel)", "(userspace)"...
_STARTUP_PART = re.compile(r"([0-9][0-9a-z. ]*?)\s+\((\w+)\)")
_CHAIN_LINE = re.compile(
    r"^[\s│├└─|`-]*(\S+)\s+@([0-9][0-9a-z. ]*?)(?:\s+\+([0-9][0-9a-z. ]*?))?\s*$"
)
_BLAME_LINE = re.compile(r"^\s*([0-9][0-9a-z. ]*?)\s+(\S+\.\w+)\s*$")
_TIMESPAN_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|min|h|d|s)")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_timespan(text: str) -> float:
    """systemd's time spans ("1min 2.345s", "812ms", "5.1s") in seconds."""
    parts = _TIMESPAN_PART.findall(text.replace(" ", ""))
    if not parts:
        raise ValueError(f"not a systemd time span: {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


_EMBEDDED_PRINTK = re.compile(r"\[\s*\d+\.\d+\]")


def clean_line(raw: str) -> str:
    """A console line without colours, carriage returns or trailing blanks."""
    return _ANSI.sub("", raw).replace("\r", "").rstrip()


@dataclass(frozen=True)
class ChainLink:
    """One unit on systemd's critical chain: active at ``at`` s, took ``took`` s."""

    unit: str
    at: float
    took: float | None


@dataclass(frozen=True)
class SystemdAnalysis:
    """What the guest's systemd says about its own boot (atoll-boot-report.service)."""

    # "firmware", "loader", "kernel", "initrd", "userspace" -> seconds.
    startup: dict[str, float]
    critical_chain: tuple[ChainLink, ...]
    blame: tuple[tuple[str, float], ...]  # slowest units first
    # Unit -> CLOCK_MONOTONIC seconds when it became active (0 = never).
    unit_active: dict[str, float]
    raw: tuple[str, ...]

    @property
    def kernel_seconds(self) -> float | None:
        return self.startup.get("kernel")

    @property
    def userspace_seconds(self) -> float | None:
        return self.startup.get("userspace")

    def slowest_on_chain(self, count: int = 5) -> list[ChainLink]:
        timed = [link for link in self.critical_chain if link.took is not None]
        return sorted(timed, key=lambda link: link.took or 0.0, reverse=True)[:count]


def parse_analysis(lines: list[str]) -> SystemdAnalysis:
    """Parse the ``ATOLL-ANALYZE <section> <text>`` lines (prefix already removed)."""
    startup: dict[str, float] = {}
    chain: list[ChainLink] = []
    blame: list[tuple[str, float]] = []
    unit_active: dict[str, float] = {}
    for line in lines:
        section, _, text = line.partition(" ")
        if section == "time" and "Startup finished" in text:
            summary = text.split(" = ")[0]
            for span, what in _STARTUP_PART.findall(summary):
                try:
                    startup[what] = parse_timespan(span)
                except ValueError:
                    continue
        elif section == "chain":
            match = _CHAIN_LINE.match(text)
            if match:
                took = parse_timespan(match.group(3)) if match.group(3) else None
                chain.append(ChainLink(match.group(1), parse_timespan(match.group(2)), took))
        elif section == "blame":
            match = _BLAME_LINE.match(text)
            if match:
                blame.append((match.group(2), parse_timespan(match.group(1))))
        elif section == "unit":
            fields = text.split()
            if len(fields) == 2 and fields[1].isdigit():
                unit_active[fields[0]] = int(fields[1]) / 1e6
    return SystemdAnalysis(startup, tuple(chain), tuple(blame), unit_active, tuple(lines))


@dataclass
class ConsoleState:
    """Everything learned so far from one console; fed line by line."""

    milestones: dict[Milestone, float] = field(default_factory=dict)
    # Host time at which the guest kernel started (host time minus printk time).
    kernel_start: float | None = None
    init_printk: float | None = None  # guest seconds at the hand-over to PID 1
    ready_uptime: float | None = None
    fatal: str | None = None
    fatal_line: str | None = None
    analysis_lines: list[str] = field(default_factory=list)
    analysis: SystemdAnalysis | None = None
    selftest: dict[str, tuple[str, str]] = field(default_factory=dict)
    tail: list[str] = field(default_factory=list)
    lines_seen: int = 0

    TAIL = 40

    def feed(self, raw: str, now: float) -> None:
        """One console line, seen at host time ``now``."""
        line = clean_line(raw)
        if not line:
            return
        self.lines_seen += 1
        self.tail.append(line)
        del self.tail[: -self.TAIL]
        stamp = _PRINTK.match(line)
        body = line[stamp.end() :] if stamp else line
        if stamp and self.kernel_start is None:
            self.kernel_start = now - float(stamp.group(1))
        for milestone, pattern in _MILESTONE_PATTERNS:
            if milestone not in self.milestones and pattern.search(body):
                self.milestones[milestone] = now
                if milestone is Milestone.INIT and stamp:
                    self.init_printk = float(stamp.group(1))
                if milestone is Milestone.READY:
                    self.ready_uptime = _field_float(body, "uptime")
        # Anywhere in the line: another writer of the console (systemd's "A start job is
        # running" spinner ends without a newline) may have left a partial line first.
        analyze, selftest = body.find("ATOLL-ANALYZE "), body.find("ATOLL-SELFTEST ")
        if analyze >= 0:
            self._analysis_line(body[analyze:].removeprefix("ATOLL-ANALYZE "))
        elif selftest >= 0:
            # A kernel message may land inside the line before its newline (printk
            # writes to the serial port directly): the line ends where one begins.
            text = _EMBEDDED_PRINTK.split(body[selftest:], maxsplit=1)[0].rstrip()
            parts = text.split(" ", 3)
            if len(parts) >= 3:
                self.selftest[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")
        if self.fatal is None and Milestone.READY not in self.milestones:
            for pattern, meaning in FATAL_PATTERNS:
                if pattern.search(body):
                    self.fatal, self.fatal_line = meaning, line
                    break

    def _analysis_line(self, text: str) -> None:
        if text == "begin":
            self.analysis_lines = []
        elif text == "end":
            self.analysis = parse_analysis(self.analysis_lines)
        else:
            self.analysis_lines.append(text)

    @property
    def ready(self) -> bool:
        return Milestone.READY in self.milestones

    @property
    def selftest_verdict(self) -> str | None:
        verdict = self.selftest.get("verdict")
        return verdict[0] if verdict else None


def _field_float(text: str, name: str) -> float | None:
    match = re.search(rf"\b{name}=(\d+(?:\.\d+)?)", text)
    return float(match.group(1)) if match else None

"""Node health checks, and the trial of a new deployment that rolls back by itself.

**Checks** (each a :class:`Check`: name, ok, detail), what a container host needs:

* ``systemd``: ``systemctl is-system-running`` says ``running``, and no failed
  unit (``systemctl list-units --state=failed``) outside ``ignore_units``.
  ``starting`` is not healthy *yet*; ``degraded`` with failed units is a
  *definite* failure (waiting will not fix it);
* ``containerd``: ``ctr version`` answers on containerd's socket (skipped, ok,
  when the image has no ``ctr``);
* ``var-space``: ``/var`` has at least ``min_free_mib`` and ``min_free_percent`` free;
* ``agent``: the agent's Unix socket accepts a connection (connect only, no
  request: the audit log is not filled with health probes);
* user checks: every executable in ``/etc/atoll/health.d`` or
  ``/usr/lib/atoll/health.d`` (``/etc`` wins for one name) must exit 0.

Every command a check runs gets ``PROBE_TIMEOUT`` seconds (:func:`run_probe`);
one that does not answer by then is killed and its check fails.

Every round's result is written atomically to ``/var/lib/atoll/health.json``
(``healthy``, ``checks``, ``booted``, ``trial``, ``rolled_back``, ``rollback``),
which the update loop reports to the fleet controller
(:func:`atoll.agent.update_loop.read_health`) and ``GET /v1/health`` serves.

**Trial and automatic rollback** (:class:`Monitor`, run by the daemon at each
start). The pending-upgrade marker (:mod:`atoll.agent.markers`) written when a
deployment was staged says which commit is new and which is the fallback:

* booted into the *new* commit: a trial. The boot is counted in the marker;
  checks run every ``interval_seconds``. All passing: confirmed (marker removed,
  audited, the boot entry blessed). A definite failure for ``settle_rounds``
  rounds in a row, or no pass within ``grace_seconds``, or more than
  ``max_boots`` boots into it: the marker becomes ``rolled-back`` *first* (so a
  power cut cannot lose the decision), the previous deployment is made the
  default again (:meth:`atoll.agent.deployments.Deployments.rollback`, which
  also syncs the ESP), the rollback is recorded and audited, and the node
  restarts into it (``restart``: a soft-reboot when the kernel allows it,
  :mod:`atoll.agent.softreboot`; without it ``systemctl reboot``);
* booted into the *previous* commit after a rollback: done, marker removed;
* booted into the previous commit in a later boot than the one that staged
  the new one, without a rollback: the new deployment never reached the agent
  (systemd-boot's boot counting fell back, or someone picked the old entry):
  the booted deployment is made the default again and the rollback recorded;
* the same, but the marker still says ``deploying``: the power went before the
  new boot entry reached the ESP, so the new commit never had its chance to
  boot. Nothing is recorded against it: the half-staged deployment is removed
  and the update loop stages it again.

Boot counting covers boots that never reach the agent: the daemon syncs a new
default entry onto the ESP as ``<id>+3.conf``; systemd-boot counts each try
down and, at ``+0``, boots the previous entry. Debian 12 ships
``systemd-bless-boot`` in the ``systemd-boot`` package, which the image does not
carry, so the *agent* blesses (drops the counter of the booted entry,
:func:`atoll.agent.bootentries.bless_node`) after the first healthy round of
every UEFI boot. Time comes from an injected :class:`Clock`, commands from an
injected :data:`Probe`: the state machine is tested on the host with fake time
and recorded answers. Standard library only: this runs on the node.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from atoll.agent import command, failpoints, markers
from atoll.agent.deployments import Deployment, DeploymentError, Deployments
from atoll.agent.markers import MarkerError, Pending, TrialState

HEALTH = Path("var/lib/atoll/health.json")
CONFIG = Path("etc/atoll/health.toml")
USER_CHECK_DIRS = (Path("etc/atoll/health.d"), Path("usr/lib/atoll/health.d"))
AGENT_SOCKET = Path("/run/atoll/agent.sock")
MIB = 1024 * 1024
PROBE_TIMEOUT = 30.0  # seconds a check's command may take (a hung one fails its check)

Probe = Callable[[Sequence[str]], tuple[int, str]]
"""Runs argv; returns (exit status, stdout + stderr). Never raises for a failing command."""


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class EventClock:
    """Real time; sleeping ends early when ``stop`` is set (the daemon's SIGTERM)."""

    stop: threading.Event

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, seconds))


@dataclass(frozen=True)
class HealthConfig:
    grace_seconds: float = 300.0  # a trial that is not healthy by then rolls back
    interval_seconds: float = 5.0  # between checks during a trial
    recheck_seconds: float = 60.0  # between checks once settled
    settle_rounds: int = 3  # definite failures in a row that end a trial early
    max_boots: int = 3  # boots into a new commit without confirming it
    min_free_mib: int = 256
    min_free_percent: float = 5.0
    ignore_units: tuple[str, ...] = ()


_CONFIG_KEYS: dict[str, tuple[type, float, float]] = {
    "grace_seconds": (float, 10, 86400),
    "interval_seconds": (float, 0.5, 600),
    "recheck_seconds": (float, 1, 86400),
    "settle_rounds": (int, 1, 100),
    "max_boots": (int, 1, 100),
    "min_free_mib": (int, 0, 1 << 30),
    "min_free_percent": (float, 0, 100),
}


class HealthConfigError(ValueError):
    """The health configuration is invalid (the message names the file and key)."""


def load_config(root: Path = Path("/")) -> HealthConfig:
    """``/etc/atoll/health.toml`` (every key optional), validated as a whole."""
    path = root / CONFIG
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return HealthConfig()
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HealthConfigError(f"{path}: {e}") from e
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "ignore_units":
            if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
                raise HealthConfigError(f"{path}: ignore_units: expected a list of unit names")
            values[key] = tuple(value)
            continue
        if key not in _CONFIG_KEYS:
            raise HealthConfigError(f"{path}: {key}: unknown key")
        kind, low, high = _CONFIG_KEYS[key]
        number_ok = type(value) is int or (kind is float and type(value) is float)
        if not number_ok or not low <= value <= high:
            raise HealthConfigError(f"{path}: {key}: {value!r} must be a number in {low}..{high}")
        values[key] = kind(value)
    return HealthConfig(**values)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    definite: bool = False  # a failure waiting will not fix (systemd finished with failures)


def run_probe(argv: Sequence[str], timeout: float = PROBE_TIMEOUT) -> tuple[int, str]:
    """The node's :data:`Probe` (:func:`atoll.agent.command.run`): a bounded wait, and
    shell-like statuses for what did not run: 124 timed out, 127 not found, 126 not runnable."""
    try:
        done = command.run(argv, timeout=timeout, check=False)
    except command.CommandError as e:
        if e.timed_out:
            return 124, f"{' '.join(argv)}: no answer within {timeout:g} s"
        if isinstance(e.start_error, FileNotFoundError):
            return 127, f"{argv[0]}: not found"
        reason = e.start_error.strerror if e.start_error is not None else e.what
        return 126, f"{argv[0]}: {reason}"
    return done.status, (done.stdout_text + done.stderr_text).strip()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


SHOW_USERSPACE = ["systemctl", "show", "--property=UserspaceTimestampMonotonic"]
SHOW_STAMPS = ["systemctl", "show", "--property=Id", "--property=StateChangeTimestampMonotonic"]


def _failed_before_this_userspace(probe: Probe, units: Sequence[str]) -> set[str]:
    """The units among ``units`` that failed before this userspace began.

    A soft-reboot carries the unit states of the userspace it ends into the next
    one (systemd serializes them), so a unit that failed there, say the broken
    release's own unit after a rollback, is still listed ``failed`` here, where it
    may not even exist. The manager's ``UserspaceTimestampMonotonic`` is taken anew
    by each systemd a soft-reboot starts (it is not serialized), and the monotonic
    clock runs on with the kernel: a failure stamped before it is not this boot's.
    After a firmware boot nothing can be stamped before it. Unknown stamps: none."""
    if not units:
        return set()
    _, out = probe(SHOW_USERSPACE)
    started = _show_values(out).get("UserspaceTimestampMonotonic", "")
    if not started.isdigit() or int(started) == 0:
        return set()
    _, out = probe(
        [
            "systemctl",
            "show",
            "--property=Id",
            "--property=StateChangeTimestampMonotonic",
            "--",
            *units,
        ]
    )
    before = set()
    for block in out.split("\n\n"):
        values = _show_values(block)
        stamp = values.get("StateChangeTimestampMonotonic", "")
        if values.get("Id") in units and stamp.isdigit() and 0 < int(stamp) < int(started):
            before.add(values["Id"])
    return before


def _show_values(text: str) -> dict[str, str]:
    pairs = (line.partition("=") for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, _, value in pairs}


def check_systemd(probe: Probe, ignore_units: Sequence[str] = ()) -> Check:
    _, out = probe(["systemctl", "is-system-running"])
    state = _last_line(out) or "unknown"
    _, listing = probe(
        ["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"]
    )
    failed = [
        line.split()[0]
        for line in listing.splitlines()
        if line.strip() and line.split()[0] not in ignore_units
    ]
    earlier = _failed_before_this_userspace(probe, failed)
    failed = [unit for unit in failed if unit not in earlier]
    detail = state + (f"; failed: {', '.join(failed)}" if failed else "")
    if earlier:
        detail += f"; failed before this userspace began: {', '.join(sorted(earlier))}"
    if failed:
        # Still starting: a unit may yet be restarted; once systemd is done, it is final.
        return Check("systemd", False, detail, definite=state in ("degraded", "running"))
    # Failed units that are all ignored leave systemd "degraded": that is fine here.
    return Check("systemd", state in ("running", "degraded"), detail)


def check_containerd(probe: Probe, root: Path = Path("/")) -> Check:
    if not (root / "usr/bin/ctr").exists():
        return Check("containerd", True, "not in the image")
    status, out = probe(["ctr", "version"])
    if status != 0:
        return Check("containerd", False, f"ctr version: exit {status}: {_last_line(out)}")
    server = out.split("Server:", 1)[-1] if "Server:" in out else ""
    version = next(
        (line.split(":", 1)[1].strip() for line in server.splitlines() if "Version:" in line),
        "?",
    )
    return Check("containerd", True, f"answers (server {version})")


def check_var_space(path: Path, min_free_mib: int, min_free_percent: float) -> Check:
    try:
        st = os.statvfs(path)
    except OSError as e:
        return Check("var-space", False, f"{path}: {e.strerror}")
    free = st.f_bavail * st.f_frsize
    total = st.f_blocks * st.f_frsize
    percent = 100.0 * free / total if total else 0.0
    detail = f"{free // MIB} MiB free ({percent:.1f}%) on {path}"
    return Check("var-space", free >= min_free_mib * MIB and percent >= min_free_percent, detail)


def check_agent(path: Path, timeout: float = 5.0) -> Check:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as e:
            return Check("agent", False, f"{path}: {e.strerror or e}")
    return Check("agent", True, f"{path} accepts connections")


def user_checks(root: Path, probe: Probe) -> list[Check]:
    """Executables in health.d (``/etc`` overrides ``/usr/lib`` for one name), by name."""
    found: dict[str, Path] = {}
    for directory in reversed(USER_CHECK_DIRS):
        base = root / directory
        if base.is_dir():
            for path in base.iterdir():
                if path.is_file() and os.access(path, os.X_OK):
                    found[path.name] = path
    out = []
    for name in sorted(found):
        status, text = probe([str(found[name])])
        detail = _last_line(text) or f"exit {status}"
        out.append(
            Check(
                f"user:{name}", status == 0, detail if status == 0 else f"exit {status}: {detail}"
            )
        )
    return out


@dataclass(frozen=True)
class Checker:
    """Runs every check of one node."""

    root: Path
    probe: Probe
    config: HealthConfig
    agent_socket: Path = AGENT_SOCKET

    def __call__(self) -> list[Check]:
        return [
            check_systemd(self.probe, self.config.ignore_units),
            check_containerd(self.probe, self.root),
            check_var_space(
                self.root / "var", self.config.min_free_mib, self.config.min_free_percent
            ),
            check_agent(self.agent_socket),
            *user_checks(self.root, self.probe),
        ]


class Outcome(StrEnum):
    NO_TRIAL = "no-trial"  # no pending upgrade
    WAITING = "waiting"  # staged; this boot has not rebooted into it yet
    CONFIRMED = "confirmed"  # booted the new commit and it passed
    ROLLED_BACK = "rolled-back"  # the new commit failed here: previous made default, reboot
    ROLLBACK_FAILED = "rollback-failed"  # ostree refused; the node stays as it is
    RECOVERED = "recovered"  # booted the previous commit after our rollback
    FELL_BACK = "fell-back"  # booted the previous commit without our rollback (boot counting)
    STALE = "stale"  # a marker for commits that are not booted (removed)
    INTERRUPTED = "interrupted"  # power lost before the new entry reached the ESP: undone
    STOPPED = "stopped"  # the agent stopped during the trial


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _short(commit: str) -> str:
    return commit[:12]


@dataclass
class Monitor:
    """One node's health loop and upgrade trial (see the module docstring)."""

    root: Path
    deployments: Deployments
    checks: Callable[[], list[Check]]
    config: HealthConfig
    clock: Clock
    record: Callable[..., object]  # AuditLog.append
    bless: Callable[[], str | None] = lambda: None
    # Restarts into the previous deployment after a rollback (``booted``, the new
    # default, why); None: ``systemctl reboot``. The daemon passes a soft-reboot
    # when the kernel allows it (:class:`atoll.agent.softreboot.Restarter`).
    restart: Callable[[Deployment, Deployment, str], object] | None = None
    boot_id: Callable[[], str] = markers.current_boot_id
    now: Callable[[], str] = _utc_now
    log: Callable[[str], None] = field(
        default=lambda m: print(f"atoll-agent: health: {m}", file=sys.stderr, flush=True)
    )
    stop: threading.Event = field(default_factory=threading.Event)
    decided: threading.Event = field(default_factory=threading.Event)  # see settle()
    was_healthy: bool = False  # a round outside a trial passed in this boot (and blessed)
    last: dict[str, Any] = field(default_factory=dict)

    @property
    def marker_path(self) -> Path:
        return self.root / markers.PENDING

    def _audit(self, what: str, result: str, **params: Any) -> None:
        self.record(
            who="agent:health", role=None, what=f"health: {what}", params=params, result=result
        )

    # -- one round -----------------------------------------------------------

    def round(self, booted: Deployment | None = None, trial: Pending | None = None) -> list[Check]:
        """Run the checks, write health.json, bless the boot entry once healthy."""
        checks = self.checks()
        if any(c.name == "systemd" and c.detail.startswith("stopping") for c in checks):
            # The node is shutting down (a reboot it asked for): units stop, containerd
            # goes; that says nothing of its health. The last record stands, so no
            # "unhealthy" reaches the controller (or the Node) as the node leaves.
            return checks
        healthy = all(c.ok for c in checks)
        if trial is None and healthy != self.last.get("healthy"):
            # Said when it changes (the trial says its own): why a node is unhealthy
            # is on its console and in its journal, not only in health.json.
            failing = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
            self.log("healthy" if healthy else f"unhealthy: {failing}")
        rollback = markers.read_rollback(self.root / markers.ROLLBACK)
        record: dict[str, Any] = {
            "healthy": healthy,
            "checked_at": self.now(),
            "booted": booted.checksum if booted else None,
            "version": booted.version if booted else None,
            "checks": [asdict(c) for c in checks],
            "trial": trial.as_dict() if trial else None,
            "rolled_back": rollback is not None,
            "rollback": rollback.as_dict() if rollback else None,
        }
        markers.write_json(self.root / HEALTH, record)
        self.last = record
        if healthy and trial is None and not self.was_healthy:
            self._bless()
        return checks

    def _bless(self) -> None:
        self.was_healthy = True
        try:
            name = self.bless()
        except (OSError, ValueError, command.CommandError) as e:
            self.log(f"could not bless the boot entry: {e}")
            return
        if name:
            self.log(f"boot entry blessed: {name}")

    # -- the start of a boot -------------------------------------------------

    def _booted(self) -> tuple[Deployment | None, list[Deployment]]:
        current = self.deployments.status()
        return next((d for d in current if d.booted), None), current

    def settle(self) -> Outcome:
        """Decide what this boot means for a pending upgrade; run its trial if any.

        ``decided`` is set once the decision is made (before a trial's checks
        start): the update loop waits for it, so it never stages or reboots
        against a marker this boot has not settled yet.
        """
        try:
            return self._settle()
        finally:
            self.decided.set()

    def _settle(self) -> Outcome:
        # The decision holds the deployments' lock: an API upgrade or the update
        # loop cannot write a marker between reading this one and acting on it.
        with self.deployments.lock:
            try:
                marker = markers.read_pending(self.marker_path)
            except MarkerError as e:
                self.log(f"{e}: ignored and removed")
                self._audit("marker unusable", "removed", error=str(e))
                markers.clear(self.marker_path)
                marker = None
            try:
                booted, current = self._booted()
            except DeploymentError as e:
                self.log(f"no deployment status: {e}")
                self.round()
                return Outcome.NO_TRIAL
            if marker is None or booted is None:
                self.round(booted)
                return Outcome.NO_TRIAL
            if booted.checksum == marker.previous:
                return self._on_previous(marker, booted, current)
            if booted.checksum != marker.new:
                self.log(
                    f"marker for {_short(marker.new)} but {_short(booted.checksum)} booted: removed"
                )
                markers.clear(self.marker_path)
                self.round(booted)
                return Outcome.STALE
        # The trial runs for minutes: outside the lock. The update loop reports
        # meanwhile; upgrades are refused until it is decided (Deployments.upgrade).
        self.decided.set()
        return self._trial(marker, booted)

    def _on_previous(
        self, marker: Pending, booted: Deployment, current: list[Deployment]
    ) -> Outcome:
        if marker.state is TrialState.ROLLED_BACK:
            self._make_default(current)
            markers.clear(self.marker_path)
            self.log(f"back on {booted.version or _short(booted.checksum)} after the rollback")
            self._audit("rollback complete", "ok", booted=booted.checksum, failed=marker.new)
            self.round(booted)
            return Outcome.RECOVERED
        waiting = (TrialState.DEPLOYING, TrialState.STAGED)
        if marker.state in waiting and marker.staged_boot == self.boot_id():
            self.round(booted)
            return Outcome.WAITING
        if marker.state is TrialState.DEPLOYING:
            return self._interrupted(marker, booted, current)
        # Rebooted after staging, yet the previous commit runs: the new one never
        # reached (or never finished) its trial; systemd-boot fell back.
        reason = (
            f"{_short(marker.new)} did not reach the agent; the previous boot entry was booted"
            if marker.state is TrialState.STAGED
            else f"the trial boot of {_short(marker.new)} did not finish; the previous entry booted"
        )
        self.log(f"{reason}: making {_short(booted.checksum)} the default again")
        try:
            self._make_default(current)
            self.log(f"{_short(marker.new)} removed; {_short(booted.checksum)} is the default")
        except DeploymentError as e:
            self.log(f"could not make the booted deployment the default: {e}")
        self._remember_rollback(marker, reason)
        markers.clear(self.marker_path)
        self._audit(
            "fell back",
            "rolled-back",
            **{"from": marker.new, "to": booted.checksum, "reason": reason},
        )
        self.round(booted)
        return Outcome.FELL_BACK

    def _interrupted(
        self, marker: Pending, booted: Deployment, current: list[Deployment]
    ) -> Outcome:
        """The power went before the new boot entry reached the ESP: undo, not a failure.

        The new commit never had its chance to boot, so nothing is recorded
        against it: the half-staged deployment is removed and the update loop
        stages it again from the start.
        """
        label = marker.new_version or _short(marker.new)
        self.log(f"the upgrade to {label} was cut short before its boot entry was written")
        try:
            self._make_default(current)
            self.log(f"{_short(marker.new)} removed; {_short(booted.checksum)} is the default")
        except (DeploymentError, OSError, ValueError, command.CommandError) as e:
            # The marker goes anyway: staging again in this boot writes a fresh one.
            self.log(f"could not remove the interrupted deployment: {e}")
        markers.clear(self.marker_path)
        self._audit("upgrade interrupted", "undone", commit=marker.new, booted=booted.checksum)
        self.round(booted)
        return Outcome.INTERRUPTED

    def _make_default(self, current: list[Deployment]) -> None:
        """Remove a pending default so the booted deployment is the default again."""
        if current and not current[0].booted and current[0].pending:
            self.deployments.rollback(keep_marker=True)

    def _remember_rollback(self, marker: Pending, reason: str) -> None:
        record = markers.Rollback(marker.new, marker.previous, reason, self.now())
        markers.write_json(self.root / markers.ROLLBACK, record.as_dict())

    # -- the trial -----------------------------------------------------------

    def _trial(self, marker: Pending, booted: Deployment) -> Outcome:
        boot = self.boot_id()
        if marker.state is TrialState.ROLLED_BACK:
            # The decision was recorded but the rollback did not take (power cut).
            return self._roll_back(marker, booted, marker.reason or "an interrupted rollback")
        # An agent restarted within one boot does not count that boot twice.
        boots = marker.boots + (0 if marker.last_boot == boot else 1)
        marker = marker.advance(state=TrialState.TRIAL, boots=boots, last_boot=boot)
        markers.write_pending(self.marker_path, marker)
        failpoints.hit("trial:started", self.root)
        if boots > self.config.max_boots:
            return self._roll_back(
                marker,
                booted,
                f"{boots} boots into {_short(marker.new)} without passing health checks",
            )
        label = marker.new_version or _short(marker.new)
        self.log(f"trial of {label}: boot {boots}, up to {self.config.grace_seconds:g} s to pass")
        self._audit("trial started", "trial", commit=marker.new, boot=boots)
        deadline = self.clock.monotonic() + self.config.grace_seconds
        streak = 0
        while True:
            checks = self.round(booted, marker)
            failing = [c for c in checks if not c.ok]
            if not failing:
                markers.clear(self.marker_path)
                self.log(f"{label} is healthy: confirmed")
                self._audit("confirmed", "ok", commit=marker.new, boot=boots)
                self.round(booted)  # the record without the trial; blesses the entry
                return Outcome.CONFIRMED
            summary = "; ".join(f"{c.name}: {c.detail}" for c in failing)
            streak = streak + 1 if any(c.definite for c in failing) else 0
            now = self.clock.monotonic()
            if streak >= self.config.settle_rounds:
                return self._roll_back(marker, booted, summary)
            if now >= deadline:
                reason = f"not healthy within {self.config.grace_seconds:g} s: {summary}"
                return self._roll_back(marker, booted, reason)
            if self.stop.is_set():
                return Outcome.STOPPED
            self.clock.sleep(min(self.config.interval_seconds, deadline - now))

    def _roll_back(self, marker: Pending, booted: Deployment, reason: str) -> Outcome:
        marker = marker.advance(state=TrialState.ROLLED_BACK, reason=reason)
        markers.write_pending(self.marker_path, marker)  # the decision first
        to = marker.previous_version or _short(marker.previous)
        self.log(f"ROLLBACK from {marker.new_version or _short(marker.new)} to {to}: {reason}")
        self._remember_rollback(marker, reason)
        params = {"from": marker.new, "to": marker.previous, "reason": reason}
        try:
            self.deployments.rollback(keep_marker=True)
        except DeploymentError as e:
            self.log(f"rollback failed: {e}")
            self._audit("rollback", "failed", **params, error=str(e))
            self.round(booted, marker)
            return Outcome.ROLLBACK_FAILED
        self._audit("rollback", "rolled-back", **params)
        self.round(booted, marker)
        self.log("rebooting into the previous deployment")
        try:
            self._restart(booted, reason)
        except DeploymentError as e:
            # Usually the shutdown it started has already killed systemctl; if
            # not, the next boot (whenever) still lands on the previous commit.
            self.log(f"reboot: {e}")
        return Outcome.ROLLED_BACK

    def _restart(self, booted: Deployment, reason: str) -> None:
        if self.restart is None:
            self.deployments.reboot()
            return
        _, current = self._booted()
        into = current[0] if current and not current[0].booted else None
        if into is None:
            self.deployments.reboot()  # no new default to switch into: the firmware decides
            return
        self.restart(booted, into, f"rollback: {reason}")

    # -- the daemon's loop ---------------------------------------------------

    def next_delay(self, settle_until: float) -> float:
        """Seconds to the next round: short until healthy once (or settled), then long."""
        if self.was_healthy or self.clock.monotonic() >= settle_until:
            return self.config.recheck_seconds
        return self.config.interval_seconds

    def run_forever(self) -> None:
        """Settle this boot, then re-check every ``recheck_seconds`` until ``stop`` is set."""
        # Leave the moment of READY=1 to the units ordered after the agent (the
        # ready marker is measured): the first round starts one interval later.
        if self.stop.wait(self.config.interval_seconds):
            return
        try:
            outcome = self.settle()
        except Exception as e:  # the agent must keep serving whatever happens here
            self.log(f"trial failed: {type(e).__name__}: {e}")
            outcome = Outcome.NO_TRIAL
        if outcome is Outcome.ROLLED_BACK:
            return  # rebooting
        # Early in a boot systemd is still "starting": check often until the
        # first healthy round (or the grace period is over), then seldom.
        settle_until = self.clock.monotonic() + self.config.grace_seconds
        while not self.stop.wait(self.next_delay(settle_until)):
            try:
                booted, _ = self._booted()
                self.round(booted)
            except Exception as e:
                self.log(f"check round failed: {type(e).__name__}: {e}")


def read_record(root: Path = Path("/")) -> dict[str, Any] | None:
    """The last health record (``GET /v1/health``), or None before the first round."""
    try:
        record = json.loads((root / HEALTH).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m atoll.agent.health``: run the checks once and print them (console use)."""
    parser = argparse.ArgumentParser(prog="atoll.agent.health")
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument("--socket", type=Path, default=AGENT_SOCKET)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.root)
    except HealthConfigError as e:
        print(f"atoll health: {e}", file=sys.stderr)
        return 2
    checks = Checker(args.root, run_probe, config, args.socket)()
    print(
        json.dumps(
            {"healthy": all(c.ok for c in checks), "checks": [asdict(c) for c in checks]}, indent=2
        )
    )
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())

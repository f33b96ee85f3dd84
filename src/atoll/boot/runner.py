"""Booting an atoll disk under qemu and watching it become ready.

:class:`Machine` is the Python API the VM tests, the demo, the agent and fleet
tests use; ``atoll boot`` (:mod:`atoll.boot.cli`) is a thin layer on top::

    with Machine(BootSpec(image, firmware=Firmware.DIRECT, guest_ports=(8470,))) as vm:
        report = vm.wait_ready()          # BootReport; raises BootFailed
        port = vm.host_port(8470)         # 127.0.0.1:port reaches the guest's 8470
    # leaving the block powers the VM off (QMP system_powerdown, then quit)

What happens, in order:

1. the boot is planned from the disk: direct mode reads the default boot
   entry's kernel and command line through :func:`atoll.disk.read_default_entry`
   (re-read for every boot: each deploy changes ``ostree=``); UEFI mode gives
   the VM its own copy of OVMF's variable store;
2. qemu starts (:mod:`atoll.tools.qemu`) with the serial console written to a
   file in the VM's state directory, the network restricted (``restrict=on``)
   and each requested guest port forwarded from a free port on 127.0.0.1;
3. the console file is followed line by line into a
   :class:`~atoll.boot.console.ConsoleState`; the wait ends at the ready
   marker, at a fatal console line (kernel panic, nothing to boot...), when
   qemu exits, or at the timeout, whichever comes first. Failures raise
   :class:`BootFailed` carrying the :class:`~atoll.boot.report.BootReport` with
   the last console lines.

A VM left running (``--keep``) is described by ``state.json`` in its state
directory (pid, QMP socket, console, ports), which is how ``atoll boot --stop``
finds it again. Time comes from an injected :class:`Clock`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol, TypedDict

from atoll.boot.console import ConsoleState, Milestone
from atoll.boot.report import BootReport, phases_from
from atoll.disk import read_default_entry
from atoll.durable import write_atomic
from atoll.errors import AtollError, InputError
from atoll.process import Child
from atoll.tools import qemu
from atoll.wire.userdata import FW_CFG_NAME

SELFTEST_FW_CFG = "opt/atoll/selftest"
USER_DATA_FW_CFG = FW_CFG_NAME  # where the node looks for its user data
# The console goes to ttyS0 in both modes; direct mode adds it to the entry's line.
SERIAL_CONSOLE = "console=ttyS0,115200"


# What Linux prints last when the machine restarts (kernel/reboot.c).
REBOOT_LINE = "reboot: Restarting system"


class Firmware(StrEnum):
    UEFI = "uefi"
    DIRECT = "direct"


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class KernelOverride:
    """Boot this kernel (and initrd) instead of the disk's entry (conventional baselines)."""

    kernel: Path
    append: str
    initrd: Path | None = None


@dataclass(frozen=True)
class BootSpec:
    image: Path
    firmware: Firmware = Firmware.DIRECT
    user_data: Path | None = None
    guest_ports: tuple[int, ...] = ()
    selftest: bool = False
    # Writes go to a throw-away qcow2 overlay, so the image can be booted again
    # from the same state (tests, benchmarks). Off for `atoll boot`: a node's
    # first boot is meant to stick.
    snapshot: bool = False
    state_dir: Path | None = None  # default: a fresh directory (see state_root)
    memory_mib: int = 1024
    cpus: int = 1
    accel: qemu.AccelChoice | None = None
    kernel_override: KernelOverride | None = None
    # Services on the host the guest may reach (qemu.HOST_SERVICES_ADDRESS:guest).
    host_services: tuple[qemu.HostService, ...] = ()
    extra_append: tuple[str, ...] = ()
    # When the guest reboots, qemu ends and the runner starts it again on the
    # same disk and EFI variables (a cold reset; see Machine.poll).
    cold_reboot: bool = True


class StateFile(TypedDict):
    pid: int
    image: str
    firmware: str
    qmp: str
    console: str
    ports: dict[str, int]


class BootFailed(AtollError):
    """The machine did not become ready; ``report`` says how far it got."""

    def __init__(self, message: str, report: BootReport) -> None:
        super().__init__(message, hint=f"console log: {report.console_log}")
        self.report = report


def state_root() -> Path:
    """Where running VMs are described: $XDG_RUNTIME_DIR/atoll/vm, else build/vm."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "atoll" / "vm" if runtime else Path("build") / "vm"


def state_dir_for(image: Path) -> Path:
    return state_root() / image.resolve().stem


@dataclass
class _Follower:
    """Reads the console file as qemu appends to it, whole lines at a time."""

    path: Path
    _file: IO[bytes] | None = None
    _partial: bytes = b""

    def new_lines(self) -> list[str]:
        if self._file is None:
            try:
                self._file = self.path.open("rb")
            except FileNotFoundError:
                return []
        chunk = self._file.read()
        if not chunk:
            return []
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in lines]

    def rest(self) -> list[str]:
        lines = self.new_lines()
        if self._partial:
            lines.append(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        return lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class Machine:
    """One qemu VM booting an atoll disk; a context manager that always stops it."""

    spec: BootSpec
    clock: Clock = field(default_factory=SystemClock)
    keep: bool = False  # leaving the context does not stop the VM

    def __post_init__(self) -> None:
        self._process: Child | None = None
        self._state = ConsoleState()
        self._started = 0.0
        self._ports: dict[int, int] = {}
        self._owned_dir = self.spec.state_dir is None
        self.state_dir = self.spec.state_dir or Path(tempfile.mkdtemp(prefix="atoll-vm-"))
        self.console_log = self.state_dir / "console.log"
        self.qmp_socket = self.state_dir / "qmp.sock"
        self._stderr_path = self.state_dir / "qemu.stderr"
        self._follower = _Follower(self.console_log)
        self._accel = qemu.Accel.TCG
        self._argv: list[str] = []
        self._rebooting = False  # the guest kernel said it restarts
        self._unread: list[str] = []  # read by `running`, not yet returned by poll()
        self.reboots = 0  # guest reboots so far (each a fresh qemu process)

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Machine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.keep or exc is not None:
            # A snapshot VM's writes are thrown away: no need for an orderly power-off.
            self.stop(grace=0.0 if self.spec.snapshot else 20.0)

    def plan(self) -> list[str]:
        """Prepare the state directory and return qemu's argv (no VM started)."""
        spec = self.spec
        if not spec.image.is_file():
            raise InputError(f"{spec.image}: no such disk image")
        if spec.user_data is not None and not spec.user_data.is_file():
            raise InputError(f"--user-data {spec.user_data}: no such file")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.console_log, self.qmp_socket, self._stderr_path):
            stale.unlink(missing_ok=True)
        self._accel = qemu.choose_accel(spec.accel)
        disk, disk_format = spec.image, qemu.image_format(spec.image)
        if spec.snapshot:
            disk, disk_format = self.state_dir / "overlay.qcow2", "qcow2"
            disk.unlink(missing_ok=True)
            qemu.create_overlay(spec.image, disk)
        boot = self._boot_method()
        self._ports = {guest: qemu.free_port() for guest in spec.guest_ports}
        fw_cfg_files: tuple[tuple[str, Path], ...] = ()
        if spec.user_data is not None:
            fw_cfg_files = ((USER_DATA_FW_CFG, spec.user_data.resolve()),)
        machine = qemu.MachineSpec(
            disk=disk,
            disk_format=disk_format,
            boot=boot,
            console_log=self.console_log,
            qmp_socket=self.qmp_socket,
            accel=self._accel,
            memory_mib=spec.memory_mib,
            cpus=spec.cpus,
            forwards=tuple(qemu.Forward(h, g) for g, h in self._ports.items()),
            host_services=spec.host_services,
            fw_cfg_files=fw_cfg_files,
            fw_cfg_strings=((SELFTEST_FW_CFG, "1"),) if spec.selftest else (),
            no_reboot=spec.cold_reboot,
        )
        return qemu.machine_argv(machine)

    def _boot_method(self) -> qemu.DirectKernel | qemu.Uefi:
        spec = self.spec
        if spec.firmware is Firmware.UEFI:
            code, vars_template = qemu.find_ovmf()
            vars_copy = self.state_dir / "OVMF_VARS.fd"
            shutil.copyfile(vars_template, vars_copy)
            return qemu.Uefi(code, vars_copy)
        if spec.kernel_override is not None:
            o = spec.kernel_override
            try:
                head = o.kernel.read_bytes()[:1024]
            except OSError as e:
                raise InputError(f"{o.kernel}: cannot read kernel ({e.strerror})") from e
            check_kernel(head, str(o.kernel))
            return qemu.DirectKernel(o.kernel, _append(o.append, spec.extra_append), o.initrd)
        entry = read_default_entry(spec.image)
        check_kernel(entry.kernel, f"{spec.image}: boot entry {entry.entry.id}: kernel")
        kernel = self.state_dir / "vmlinuz"
        kernel.write_bytes(entry.kernel)
        return qemu.DirectKernel(kernel, _append(entry.options, spec.extra_append))

    def start(self) -> None:
        self._argv = self.plan()
        with self._stderr_path.open("wb") as stderr:
            self._started = self.clock.monotonic()
            self._process = qemu.spawn(self._argv, stderr)
        self._write_state()

    def _restart_after_reboot(self) -> None:
        """The guest rebooted and qemu ended (``-no-reboot``): power it on again.

        Same disk, same EFI variables, same forwards; the console log goes on.
        Why not qemu's own reset: OVMF hangs in its DXE phase after a warm
        reset under TCG on this machine (qemu 7.2, OVMF 2022.11).
        """
        assert self._process is not None
        self._process.wait()
        self._rebooting = False
        self.reboots += 1
        with self._stderr_path.open("ab") as stderr:
            self._process = qemu.spawn(self._argv, stderr)
        self._write_state()

    def _write_state(self) -> None:
        assert self._process is not None
        state: StateFile = {
            "pid": self._process.pid,
            "image": str(self.spec.image.resolve()),
            "firmware": str(self.spec.firmware),
            "qmp": str(self.qmp_socket.resolve()),
            "console": str(self.console_log.resolve()),
            "ports": {str(g): h for g, h in self._ports.items()},
        }
        write_atomic(self.state_dir / "state.json", json.dumps(state, indent=2) + "\n")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def ports(self) -> dict[int, int]:
        """Guest port -> host port on 127.0.0.1."""
        return dict(self._ports)

    def host_port(self, guest: int) -> int:
        try:
            return self._ports[guest]
        except KeyError:
            raise AtollError(
                f"guest port {guest} is not forwarded (BootSpec.guest_ports)"
            ) from None

    @property
    def console(self) -> ConsoleState:
        return self._state

    # -- watching ------------------------------------------------------------

    def poll(self) -> list[str]:
        """Feed the console lines written since the last call; return them."""
        lines = self._unread + self._read_console()
        self._unread = []
        if (
            self.spec.cold_reboot
            and self._rebooting
            and self._process is not None
            and self._process.poll() == 0
        ):
            lines += self._read_console(rest=True)
            self._restart_after_reboot()
        return lines

    def _read_console(self, rest: bool = False) -> list[str]:
        now = self.clock.monotonic()
        lines = self._follower.rest() if rest else self._follower.new_lines()
        for line in lines:
            self._state.feed(line, now)
            if REBOOT_LINE in line:
                self._rebooting = True
        return lines

    def wait_for(self, text: str, timeout: float) -> str | None:
        """The next console line containing ``text``; None on timeout or qemu exit."""
        deadline = self.clock.monotonic() + timeout
        while True:
            for line in self.poll():
                if text in line:
                    return line
            if not self.running or self.clock.monotonic() >= deadline:
                return None
            self.clock.sleep(0.1)

    def wait_until(self, condition: Callable[[ConsoleState], bool], timeout: float) -> bool:
        """Wait until ``condition`` holds on the console state; False on timeout or exit."""
        deadline = self.clock.monotonic() + timeout
        while True:
            self.poll()
            if condition(self._state):
                return True
            if not self.running or self.clock.monotonic() >= deadline:
                self.poll()
                return condition(self._state)
            self.clock.sleep(0.1)

    def wait_ready(self, timeout: float = 120.0, *, then_analysis: float = 0.0) -> BootReport:
        """Wait for ``ATOLL-READY``; also wait up to ``then_analysis`` s for the
        systemd-analyze block. Raises :class:`BootFailed` when not ready."""
        if self._process is None:
            raise AtollError("the VM is not started")
        deadline = self._started + timeout
        failure: str | None = None
        while True:
            self.poll()
            if self._state.ready:
                break
            if self._state.fatal is not None:
                failure = f"{self._state.fatal}: {self._state.fatal_line}"
                break
            if not self.running:
                # The last lines may hold the marker (or the reason qemu ended).
                for line in self._follower.rest():
                    self._state.feed(line, self.clock.monotonic())
                if Milestone.READY in self._state.milestones:
                    break
                failure = f"qemu exited with code {self._process.poll()}{self._stderr_tail()}"
                break
            if self.clock.monotonic() >= deadline:
                failure = f"not ready after {timeout:g} s"
                break
            self.clock.sleep(0.1)
        if failure is None and then_analysis > 0:
            analysis_deadline = self.clock.monotonic() + then_analysis
            while self._state.analysis is None and self.clock.monotonic() < analysis_deadline:
                if not self.running:
                    break
                self.clock.sleep(0.2)
                self.poll()
        report = self.report(failure)
        if failure is not None:
            raise BootFailed(f"{self.spec.image}: {failure}", report)
        return report

    def report(self, failure: str | None = None) -> BootReport:
        state = self._state
        ready_at = state.milestones.get(Milestone.READY)
        return BootReport(
            image=self.spec.image,
            firmware=str(self.spec.firmware),
            accel=str(self._accel),
            ready=state.ready,
            ready_seconds=None if ready_at is None else ready_at - self._started,
            ready_uptime=state.ready_uptime,
            phases=phases_from(state, self._started),
            analysis=state.analysis,
            console_log=self.console_log,
            failure=failure,
            last_lines=tuple(state.tail[-20:]) if failure else (),
        )

    def _stderr_tail(self) -> str:
        try:
            text = self._stderr_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        lines = text.splitlines()[-5:]
        return (": " + " / ".join(lines)) if lines else ""

    @property
    def running(self) -> bool:
        """qemu runs, or it ended for a guest reboot that the next poll() restarts."""
        if self._process is None:
            return False
        code = self._process.poll()
        if code is None:
            return True
        if code == 0 and self.spec.cold_reboot and not self._rebooting:
            # qemu may have ended before poll() read the kernel's last words.
            self._unread += self._read_console(rest=True)
        return code == 0 and self._rebooting and self.spec.cold_reboot

    # -- stopping ------------------------------------------------------------

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL qemu, no shutdown; what the guest had not written is lost."""
        if self._process is not None:
            self._process.kill()
            self._unread += self._read_console(rest=True)
        self.stop()

    def stop(self, grace: float = 20.0) -> None:
        """Power off in order (ACPI), then quit qemu, then kill it; idempotent."""
        if self._process is not None:
            stop_qemu(self._process.pid, self.qmp_socket, grace, self.clock, self._process)
            self._process = None
        self._follower.close()
        (self.state_dir / "state.json").unlink(missing_ok=True)
        if self._owned_dir and not self.keep:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def check_kernel(data: bytes, source: str) -> None:
    """Refuse what is not an x86 bzImage before qemu starts: given garbage, qemu
    does not fail, it boots nothing and the console stays silent until the timeout."""
    if len(data) < 0x206 or data[0x202:0x206] != b"HdrS":
        raise AtollError(
            f"{source}: not a Linux kernel (no bzImage 'HdrS' header at 0x202)",
            hint="the disk's kernel is missing or corrupt: rebuild it with atoll disk",
        )


def _append(options: str, extra: tuple[str, ...]) -> str:
    words = options.split()
    if not any(w.startswith("console=") for w in words):
        words.append(SERIAL_CONSOLE)
    words += [w for w in extra if w not in words]
    return " ".join(words)


def stop_qemu(
    pid: int,
    qmp_socket: Path,
    grace: float,
    clock: Clock,
    process: Child | None = None,
) -> str:
    """Stop a qemu: ACPI power-down, up to ``grace`` s, then QMP quit, then SIGKILL.

    ``process`` is the qemu this process started (then the kill reaches its
    whole group); without it, ``pid`` is one a ``--keep`` run left behind.
    Returns how it ended: ``powered off``, ``quit`` or ``killed``.
    """

    def gone() -> bool:
        if process is not None:
            return process.poll() is not None
        return not qemu.process_alive(pid)

    def wait(seconds: float) -> bool:
        deadline = clock.monotonic() + seconds
        while clock.monotonic() < deadline:
            if gone():
                return True
            clock.sleep(0.1)
        return gone()

    if gone():
        return "powered off"
    with contextlib.suppress(AtollError, OSError), qemu.Qmp(qmp_socket, timeout=2.0) as qmp:
        qmp.command("system_powerdown")
    if wait(grace):
        return "powered off"
    with contextlib.suppress(AtollError, OSError), qemu.Qmp(qmp_socket, timeout=2.0) as qmp:
        qmp.command("quit")
    if wait(5.0):
        return "quit"
    if process is not None:
        process.kill()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait(5.0)
    return "killed"


def read_state(state_dir: Path) -> StateFile:
    path = state_dir / "state.json"
    try:
        raw: StateFile = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no running VM recorded here") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable VM state ({e})") from e
    return raw

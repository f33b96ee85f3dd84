"""A thin typed wrapper around ``qemu-system-x86_64`` and ``qemu-img``.

This module knows qemu's command line and its QMP protocol, nothing about
atoll images: :mod:`atoll.boot.runner` decides *what* to boot and watches the
console. The pieces:

* :class:`MachineSpec` (frozen) describes one VM; :func:`machine_argv` turns it
  into an argv. Pure, so unit tests check the command line without qemu.
* :func:`choose_accel` picks ``kvm`` only when it is known to work. ``/dev/kvm``
  existing is not enough: under nested virtualisation the device opens and
  answers ioctls, and the guest then hangs (measured on the atoll CI machines).
  So ``auto`` means KVM only on a host that is not itself a guest
  (no ``hypervisor`` CPU flag) with a usable ``/dev/kvm``; ``ATOLL_ACCEL=kvm``
  or ``--accel kvm`` forces it where nested KVM is known to be good.
* :func:`spawn` starts qemu through :func:`atoll.process.start` in its own
  session (so a terminal's Ctrl-C reaches atoll, which then shuts the VM down
  in order, and a kill reaches the relays qemu started), with qemu's output
  going to a file of the caller's.
* :class:`Qmp` speaks the QMP socket: ``system_powerdown`` for an orderly stop,
  ``quit`` to end the process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from atoll.errors import AtollError, InputError
from atoll.process import Child, run, start

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"

# Debian's ovmf package: 4 MiB flash images (code read-only, vars per VM).
OVMF_CODE_CANDIDATES = (
    Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
    Path("/usr/share/OVMF/OVMF_CODE.fd"),
)
OVMF_VARS_CANDIDATES = (
    Path("/usr/share/OVMF/OVMF_VARS_4M.fd"),
    Path("/usr/share/OVMF/OVMF_VARS.fd"),
)

_KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
_KVM_API_VERSION = 12


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


class AccelChoice(StrEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class Forward:
    """A TCP port forward: 127.0.0.1:host on the host to guest in the VM."""

    host: int
    guest: int


# The address on the guest's user network where host services appear
# (qemu's own services are 10.0.2.2 and .3; .100 is free).
HOST_SERVICES_ADDRESS = "10.0.2.100"


@dataclass(frozen=True)
class HostService:
    """Guest connections to HOST_SERVICES_ADDRESS:guest reach 127.0.0.1:host on the host."""

    guest: int
    host: int


@dataclass(frozen=True)
class DirectKernel:
    """``-kernel``/``-append`` boot: the firmware's job done by qemu itself."""

    kernel: Path
    append: str
    initrd: Path | None = None


@dataclass(frozen=True)
class Uefi:
    """Boot through OVMF: read-only code flash plus this VM's own copy of the vars."""

    code: Path
    vars: Path


@dataclass(frozen=True)
class MachineSpec:
    disk: Path
    disk_format: str  # "raw" or "qcow2"
    boot: DirectKernel | Uefi
    console_log: Path
    qmp_socket: Path
    accel: Accel = Accel.TCG
    memory_mib: int = 1024
    cpus: int = 1
    forwards: tuple[Forward, ...] = ()
    host_services: tuple[HostService, ...] = ()
    # fw_cfg blobs: name (e.g. "opt/atoll/user-data") -> file on the host.
    fw_cfg_files: tuple[tuple[str, Path], ...] = ()
    fw_cfg_strings: tuple[tuple[str, str], ...] = ()
    # Writes go to a throw-away overlay: the image stays as it was (tests).
    snapshot: bool = False
    # A guest reboot ends qemu instead of resetting the machine; the caller
    # starts it again (a cold reset: OVMF hangs on a warm reset under TCG here).
    no_reboot: bool = False
    extra: tuple[str, ...] = field(default=())


def machine_argv(spec: MachineSpec, qemu: str = QEMU) -> list[str]:
    """The qemu command line for ``spec``; no side effects."""
    argv = [
        qemu,
        "-machine",
        "q35",
        "-accel",
        str(spec.accel),
        "-cpu",
        "host" if spec.accel is Accel.KVM else "max",
        "-m",
        str(spec.memory_mib),
        "-smp",
        str(spec.cpus),
        "-nodefaults",
        "-display",
        "none",
        "-no-user-config",
        "-chardev",
        # append: a restarted VM (cold reboot) continues the same console log.
        f"file,id=serial0,path={spec.console_log},append=on",
        "-serial",
        "chardev:serial0",
        "-qmp",
        f"unix:{spec.qmp_socket},server=on,wait=off",
    ]
    drive = f"if=none,id=root,file={spec.disk},format={spec.disk_format},cache=unsafe"
    if spec.snapshot:
        drive += ",snapshot=on"
    # NVMe: built into Debian's cloud kernel, so the root needs no initramfs
    # (virtio-blk is a module there).
    argv += ["-drive", drive, "-device", "nvme,drive=root,serial=atoll"]
    if isinstance(spec.boot, DirectKernel):
        argv += ["-kernel", os.fspath(spec.boot.kernel), "-append", spec.boot.append]
        if spec.boot.initrd is not None:
            argv += ["-initrd", os.fspath(spec.boot.initrd)]
    else:
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={spec.boot.code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={spec.boot.vars}",
        ]
    # restrict=on: the guest reaches nothing outside; forwards bind 127.0.0.1 only.
    nic = "user,model=virtio-net-pci,restrict=on"
    for fwd in spec.forwards:
        nic += f",hostfwd=tcp:127.0.0.1:{fwd.host}-:{fwd.guest}"
    for service in spec.host_services:
        # One relay process per guest connection (atoll.tools.relay), to
        # 127.0.0.1 only; restrict=on still blocks everything else.
        relay = f"{sys.executable} -m atoll.tools.relay {service.host}"
        nic += f",guestfwd=tcp:{HOST_SERVICES_ADDRESS}:{service.guest}-cmd:{relay}"
    argv += ["-nic", nic]
    for name, path in spec.fw_cfg_files:
        argv += ["-fw_cfg", f"name={name},file={path}"]
    for name, value in spec.fw_cfg_strings:
        argv += ["-fw_cfg", f"name={name},string={value}"]
    if spec.no_reboot:
        argv.append("-no-reboot")
    argv += list(spec.extra)
    return argv


def choose_accel(choice: AccelChoice | None = None) -> Accel:
    """KVM when asked for, or (``auto``) when /dev/kvm works on a non-nested host."""
    if choice is None:
        raw = os.environ.get("ATOLL_ACCEL", AccelChoice.AUTO.value)
        try:
            choice = AccelChoice(raw)
        except ValueError as e:
            raise InputError(f"ATOLL_ACCEL: unknown accelerator {raw!r} (auto, kvm, tcg)") from e
    if choice is AccelChoice.KVM:
        return Accel.KVM
    if choice is AccelChoice.TCG:
        return Accel.TCG
    if _running_nested() or not _kvm_device_answers():
        return Accel.TCG
    return Accel.KVM


def _running_nested(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return True
    for line in text.splitlines():
        if line.startswith("flags"):
            return "hypervisor" in line.split()
    return True


def _kvm_device_answers(device: Path = Path("/dev/kvm")) -> bool:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == _KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def find_ovmf() -> tuple[Path, Path]:
    """Debian's OVMF code and vars templates (package ``ovmf``)."""
    for code, vars_ in zip(OVMF_CODE_CANDIDATES, OVMF_VARS_CANDIDATES, strict=True):
        if code.is_file() and vars_.is_file():
            return code, vars_
    raise AtollError(
        "OVMF firmware not found in /usr/share/OVMF (needed for --firmware uefi)",
        hint="apt-get install ovmf, or boot with --firmware direct",
    )


def image_format(path: Path) -> str:
    """``raw`` or ``qcow2``, from the file's first bytes (never guessed by qemu)."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise InputError(f"{path}: cannot read disk image ({e.strerror})") from e
    return "qcow2" if magic == b"QFI\xfb" else "raw"


def convert(source: Path, target: Path, *, source_format: str, target_format: str) -> None:
    """``qemu-img convert``: ``source`` (raw or qcow2) written whole as ``target``."""
    run([QEMU_IMG, "convert", "-f", source_format, "-O", target_format, source, target])


def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 file that records writes on top of ``base`` (left unchanged)."""
    run(
        [
            QEMU_IMG,
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            os.fspath(base.resolve()),
            "-F",
            image_format(base),
            os.fspath(overlay),
        ]
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(argv: list[str], stderr: IO[bytes]) -> Child:
    """Start qemu detached from our terminal's process group; its output to ``stderr``."""
    return start(argv, stdout=stderr, stderr=stderr, session=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Qmp:
    """A minimal QMP client: connect, negotiate capabilities, run commands."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> Qmp:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            try:
                sock.connect(os.fspath(self._path))
                break
            except OSError as e:
                sock.close()
                retry = e.errno in (errno.ENOENT, errno.ECONNREFUSED)
                if not retry or time.monotonic() > deadline:
                    raise AtollError(f"QMP {self._path}: cannot connect ({e.strerror})") from e
                time.sleep(0.05)
        self._sock = sock
        try:
            self._read_message()  # greeting
            self.command("qmp_capabilities")
        except BaseException:
            # __exit__ does not run when __enter__ fails (a qemu that ends during the
            # handshake): the socket is closed here, not left to the garbage collector.
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def command(self, name: str, **arguments: Any) -> Any:
        if self._sock is None:
            raise AtollError(f"QMP {self._path}: not connected")
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        self._sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            reply = self._read_message()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise AtollError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
            # Anything else is an asynchronous event; skip it.

    def _read_message(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except OSError as e:
                raise AtollError(f"QMP {self._path}: connection lost ({e})") from e
            if not chunk:
                raise AtollError(f"QMP {self._path}: connection closed by qemu")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

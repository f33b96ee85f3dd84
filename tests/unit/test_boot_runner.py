"""The runner's pure parts: console following, kernel command line, stop escalation."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from atoll.boot.runner import (
    BootSpec,
    Firmware,
    Machine,
    SystemClock,
    _append,
    _Follower,
    check_kernel,
    read_state,
    stop_qemu,
)
from atoll.errors import AtollError, InputError


def test_follower_yields_whole_lines_as_they_are_written(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    follower = _Follower(log)
    assert follower.new_lines() == []  # qemu has not created it yet
    log.write_bytes(b"first\nsec")
    assert follower.new_lines() == ["first"]
    with log.open("ab") as f:
        f.write(b"ond\n\xffthird")
    assert follower.new_lines() == ["second"]
    assert follower.rest() == ["\ufffdthird"]
    follower.close()


@pytest.mark.parametrize(
    ("options", "extra", "expected"),
    [
        ("root=PARTUUID=x rw", (), "root=PARTUUID=x rw console=ttyS0,115200"),
        ("root=x console=ttyS0", ("quiet",), "root=x console=ttyS0 quiet"),
        ("root=x quiet", ("quiet",), "root=x quiet console=ttyS0,115200"),
    ],
)
def test_kernel_command_line(options: str, extra: tuple[str, ...], expected: str) -> None:
    assert _append(options, extra) == expected


def test_missing_image_and_user_data_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such disk image"):
        Machine(BootSpec(tmp_path / "none.img", state_dir=tmp_path / "vm")).plan()
    image = tmp_path / "d.img"
    image.write_bytes(b"\0" * 512)
    spec = BootSpec(image, firmware=Firmware.DIRECT, user_data=tmp_path / "node.toml")
    with pytest.raises(InputError, match="--user-data"):
        Machine(spec).plan()


def test_stop_escalates_to_kill_when_there_is_no_qmp(tmp_path: Path) -> None:
    process = subprocess.Popen(["sleep", "60"])
    started = time.monotonic()
    how = stop_qemu(process.pid, tmp_path / "qmp.sock", 0.2, SystemClock(), process)
    assert how == "killed"
    assert process.poll() is not None
    assert time.monotonic() - started < 10


def test_stop_of_an_exited_process(tmp_path: Path) -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    assert stop_qemu(process.pid, tmp_path / "q", 5.0, SystemClock(), process) == "powered off"


def test_read_state_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no running VM"):
        read_state(tmp_path)
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(InputError, match="unreadable VM state"):
        read_state(tmp_path)


def test_check_kernel_refuses_non_bzimage() -> None:
    header = bytearray(1024)
    header[0x202:0x206] = b"HdrS"
    check_kernel(bytes(header), "k")
    with pytest.raises(AtollError, match=r"x\.img: entry: not a Linux kernel"):
        check_kernel(b"\0" * 1024, "x.img: entry")
    with pytest.raises(AtollError, match="not a Linux kernel"):
        check_kernel(b"", "empty")


def test_a_guest_reboot_powers_the_machine_on_again(tmp_path: Path) -> None:
    """qemu runs with -no-reboot: it ends when the guest restarts, and poll() starts it again."""
    image = tmp_path / "d.img"
    image.write_bytes(b"\0" * 512)
    machine = Machine(BootSpec(image, state_dir=tmp_path / "vm"))
    machine.state_dir.mkdir()
    log, marker = machine.console_log, tmp_path / "booted-once"
    # A stand-in for qemu: the first "boot" reboots (and exits 0), the second stays up.
    script = (
        f"if [ -e {marker} ]; then echo 'second boot' >> {log}; exec sleep 30; fi; "
        f"touch {marker}; printf 'first boot\\n[ 9.1] reboot: Restarting system\\n' >> {log}"
    )
    machine._argv = ["sh", "-c", script]
    with (tmp_path / "stderr").open("wb") as stderr:
        machine._process = subprocess.Popen(machine._argv, stderr=stderr)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while "second boot" not in seen and time.monotonic() < deadline:
            assert machine.running
            seen += machine.poll()
            time.sleep(0.05)
        assert seen == ["first boot", "[ 9.1] reboot: Restarting system", "second boot"]
        assert machine.reboots == 1 and machine.running
    finally:
        machine.stop(grace=0.0)
    assert not machine.running

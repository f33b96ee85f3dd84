"""The boot runner with real processes standing in for qemu: stopping, restarting.

No VM: ``sleep`` and a shell script play qemu (its pid, its exit, its console
file); the pure parts are in tests/unit/test_boot_runner.py.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import warnings
from pathlib import Path

import pytest

from atoll.boot.runner import BootSpec, Machine, SystemClock, stop_qemu
from atoll.errors import AtollError
from atoll.process import start
from atoll.tools.qemu import Qmp


def test_stop_escalates_to_kill_when_there_is_no_qmp(tmp_path: Path) -> None:
    process = start(["sleep", "60"])
    started = time.monotonic()
    how = stop_qemu(process.pid, tmp_path / "qmp.sock", 0.2, SystemClock(), process)
    assert how == "killed"
    assert process.poll() is not None
    # Killed, not waited for: far less than the 60 s the program would run
    # (the bound is loose on purpose: QMP connection retries take seconds here).
    assert time.monotonic() - started < 45


def test_a_qemu_that_ends_during_the_qmp_handshake_leaves_no_socket_open(
    tmp_path: Path,
) -> None:
    """Found by the vm test of a kernel that panics: qemu ended between the poll and the
    QMP greeting, and the connected socket was left to the garbage collector."""
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(os.fspath(path))
        server.listen(1)

        def hang_up() -> None:
            conn, _ = server.accept()
            conn.close()  # no greeting: the qemu is gone

        thread = threading.Thread(target=hang_up)
        thread.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(AtollError, match=r"QMP .*qmp\.sock"), Qmp(path, timeout=2.0):
                pass
            gc.collect()
        thread.join(5)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught


def test_stop_of_an_exited_process(tmp_path: Path) -> None:
    process = start(["true"])
    process.wait()
    assert stop_qemu(process.pid, tmp_path / "q", 5.0, SystemClock(), process) == "powered off"


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
        machine._process = start(machine._argv, stderr=stderr)
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

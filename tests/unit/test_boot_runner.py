"""The runner's pure parts: console following, kernel command line, state, kernel check.

Stopping and restarting real processes: tests/integration/test_boot_runner.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.boot.runner import (
    BootSpec,
    Firmware,
    Machine,
    _append,
    _Follower,
    check_kernel,
    read_state,
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

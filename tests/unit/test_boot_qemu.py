"""qemu's command line from a MachineSpec (pure; no qemu started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import InputError
from atoll.tools.qemu import (
    Accel,
    AccelChoice,
    DirectKernel,
    Forward,
    MachineSpec,
    Uefi,
    choose_accel,
    image_format,
    machine_argv,
)


def _spec(tmp_path: Path, **kwargs: object) -> MachineSpec:
    base: dict[str, object] = {
        "disk": tmp_path / "d.img",
        "disk_format": "raw",
        "boot": DirectKernel(tmp_path / "vmlinuz", "root=PARTUUID=x console=ttyS0"),
        "console_log": tmp_path / "console.log",
        "qmp_socket": tmp_path / "qmp.sock",
    }
    base.update(kwargs)
    return MachineSpec(**base)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_direct_boot_argv(tmp_path: Path) -> None:
    argv = machine_argv(_spec(tmp_path))
    assert _after(argv, "-accel") == ["tcg"]
    assert _after(argv, "-kernel") == [str(tmp_path / "vmlinuz")]
    assert _after(argv, "-append") == ["root=PARTUUID=x console=ttyS0"]
    assert "-initrd" not in argv
    # The root disk is NVMe: built into the kernel, no initramfs needed.
    assert _after(argv, "-device") == ["nvme,drive=root,serial=atoll"]
    assert not any("pflash" in a for a in argv)
    assert _after(argv, "-serial") == ["chardev:serial0"]


def test_uefi_argv_has_readonly_code_and_private_vars(tmp_path: Path) -> None:
    spec = _spec(tmp_path, boot=Uefi(Path("/fw/code.fd"), tmp_path / "vars.fd"))
    drives = _after(machine_argv(spec), "-drive")
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/code.fd" in drives
    assert f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}" in drives
    assert "-kernel" not in machine_argv(spec)


def test_network_is_restricted_and_forwards_bind_loopback(tmp_path: Path) -> None:
    spec = _spec(tmp_path, forwards=(Forward(40001, 8443), Forward(40002, 80)))
    (nic,) = _after(machine_argv(spec), "-nic")
    assert "restrict=on" in nic
    assert "hostfwd=tcp:127.0.0.1:40001-:8443" in nic
    assert "hostfwd=tcp:127.0.0.1:40002-:80" in nic
    assert "hostfwd=tcp::" not in nic


def test_fw_cfg_snapshot_and_initrd(tmp_path: Path) -> None:
    spec = _spec(
        tmp_path,
        boot=DirectKernel(tmp_path / "k", "quiet", initrd=tmp_path / "initrd"),
        fw_cfg_files=(("opt/atoll/user-data", tmp_path / "node.toml"),),
        fw_cfg_strings=(("opt/atoll/selftest", "1"),),
        snapshot=True,
        accel=Accel.KVM,
    )
    argv = machine_argv(spec)
    assert _after(argv, "-fw_cfg") == [
        f"name=opt/atoll/user-data,file={tmp_path / 'node.toml'}",
        "name=opt/atoll/selftest,string=1",
    ]
    assert _after(argv, "-initrd") == [str(tmp_path / "initrd")]
    assert _after(argv, "-cpu") == ["host"]
    assert any(d.endswith("snapshot=on") for d in _after(argv, "-drive"))


def test_accel_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_accel(AccelChoice.TCG) is Accel.TCG
    assert choose_accel(AccelChoice.KVM) is Accel.KVM
    monkeypatch.setenv("ATOLL_ACCEL", "tcg")
    assert choose_accel() is Accel.TCG
    monkeypatch.setenv("ATOLL_ACCEL", "hvf")
    with pytest.raises(InputError, match="ATOLL_ACCEL"):
        choose_accel()


def test_image_format_from_magic(tmp_path: Path) -> None:
    (tmp_path / "a.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 60)
    (tmp_path / "b.img").write_bytes(b"\0" * 64)
    assert image_format(tmp_path / "a.qcow2") == "qcow2"
    assert image_format(tmp_path / "b.img") == "raw"
    with pytest.raises(InputError, match="cannot read disk image"):
        image_format(tmp_path / "missing.img")

"""Boot the default image under qemu and check what a user of the node would notice."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.boot.runner import BootFailed, BootSpec, Firmware, KernelOverride, Machine
from atoll.cli import main
from atoll.disk import read_default_entry
from atoll.errors import AtollError
from atoll.manifest import load_manifest
from tests.conftest import DEFAULT_MANIFEST
from tests.vm.conftest import DefaultDisk, SelftestBoot, boot_with_selftest


def test_direct_boot_is_ready_with_phases(direct_boot: SelftestBoot) -> None:
    report = direct_boot.report
    assert report.ready
    assert report.ready_seconds is not None and report.ready_seconds > 0
    phases = {p.name: p for p in report.phases}
    for name in ("firmware", "kernel", "PID 1 to systemd", "systemd to basic.target"):
        assert phases[name].seconds is not None, name
    assert phases["to agent ready"].end == pytest.approx(report.ready_seconds)


def test_systemd_reports_kernel_userspace_and_critical_chain(direct_boot: SelftestBoot) -> None:
    analysis = direct_boot.console.analysis
    assert analysis is not None, "no ATOLL-ANALYZE block on the console"
    assert analysis.kernel_seconds is not None and analysis.kernel_seconds > 0
    assert analysis.userspace_seconds is not None and analysis.userspace_seconds > 0
    assert analysis.slowest_on_chain(), analysis.raw


# What a clean boot log means (issue 20): no failed unit, no generator that
# failed, nothing at warning or worse from systemd-tmpfiles in the journal.
CLEAN_LOG_CHECKS = ("no-failed-units", "generators", "tmpfiles")


@pytest.mark.parametrize(
    "check",
    ["usr-readonly", "etc-writable", "var-writable", "no-port-22", "container", *CLEAN_LOG_CHECKS],
)
def test_selftest_check(direct_boot: SelftestBoot, check: str) -> None:
    status, detail = direct_boot.console.selftest.get(check, ("missing", ""))
    assert status == "ok", f"{check}: {status} {detail}"


def test_boot_logged_no_error(direct_boot: SelftestBoot) -> None:
    status, detail = direct_boot.console.selftest.get("journal-errors", ("missing", ""))
    assert status == "info" and detail.startswith("0 line(s)"), f"journal-errors: {detail}"


def test_preloaded_image_has_only_its_reference(direct_boot: SelftestBoot) -> None:
    wanted = [image.reference for image in load_manifest(DEFAULT_MANIFEST).containers.preload]
    status, detail = direct_boot.console.selftest.get("preload-names", ("missing", ""))
    assert status == "ok", f"preload-names: {status} {detail}"
    assert detail.split() == wanted


def test_booted_deployment_is_the_composed_commit(
    direct_boot: SelftestBoot, default_disk: DefaultDisk
) -> None:
    status, detail = direct_boot.console.selftest["deployment"]
    assert status == "ok"
    assert detail.startswith(default_disk.composed.commit)
    assert direct_boot.console.selftest["version"][1] == default_disk.composed.version


def test_uefi_boot_passes_the_selftest(default_disk: DefaultDisk) -> None:
    boot = boot_with_selftest(default_disk, Firmware.UEFI)
    assert boot.report.ready
    assert boot.console.selftest_verdict == "pass", boot.console.selftest
    # The ESP's entries name the deployment directory in ostree= (the direct
    # boot uses ostree's bootlink), which ostree-system-generator could not parse.
    for check in CLEAN_LOG_CHECKS:
        assert boot.console.selftest.get(check, ("missing",))[0] == "ok", boot.console.selftest
    phases = {p.name: p.seconds for p in boot.report.phases}
    assert phases["firmware"] is not None and phases["firmware"] > 0


def test_a_corrupt_kernel_fails_fast_with_the_console(
    default_disk: DefaultDisk, tmp_path: Path
) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 4096)
    spec = BootSpec(
        default_disk.image,
        snapshot=True,
        kernel_override=KernelOverride(kernel, "root=/dev/nvme0n1p2"),
    )
    with pytest.raises(AtollError, match="not a Linux kernel") as failed:
        Machine(spec).start()
    assert str(kernel) in str(failed.value)


def test_a_kernel_that_panics_fails_fast_with_the_last_lines(
    default_disk: DefaultDisk, tmp_path: Path
) -> None:
    direct = read_default_entry(default_disk.image)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(direct.kernel)
    # No root disk where the kernel looks: it panics within seconds.
    spec = BootSpec(
        default_disk.image,
        snapshot=True,
        kernel_override=KernelOverride(kernel, "root=/dev/vdz9 panic=-1"),
    )
    with Machine(spec) as vm, pytest.raises(BootFailed) as failed:
        vm.wait_ready(120.0)
    report = failed.value.report
    assert report.ready is False
    assert report.failure is not None and "panic" in report.failure
    assert any("Kernel panic" in line or "VFS" in line for line in report.last_lines)


def test_cli_reports_a_missing_image_as_bad_input(tmp_path: Path) -> None:
    assert main(["boot", str(tmp_path / "absent.img"), "--firmware", "direct"]) == 2

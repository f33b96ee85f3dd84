"""Boot benchmark: the default atoll image vs a conventional Debian host, same run, same way.

* **atoll**: ``examples/minimal.toml`` composed, made a disk by ``atoll disk``
  and booted in direct mode (``-kernel`` with the default entry, no initramfs)
  to ``ATOLL-READY``.
* **baseline**: the conventional host from
  :func:`atoll.bench.baseline.build_baseline_rootfs` (initramfs, full default
  target, sshd, cloud-init) unpacked onto a plain ext4 disk and booted with its
  own kernel and initramfs (``-kernel``/``-initrd``) to the same marker, printed
  when its default target's work is done (``multi-user.target``: sshd,
  cloud-init, everything a conventional host starts before it is usable), and
  the same ``systemd-analyze`` report, so its kernel, initrd and userspace
  times are visible beside atoll's.

Both boot with the same qemu settings (TCG, 1 vCPU, 1 GiB, NVMe, restricted
network), alternately, ``BOOTS`` times each; the medians are compared. Under
TCG everything is ~10x slower than hardware, so the ratio is the figure.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from atoll.bench.baseline import build_baseline_rootfs, tree_disk
from atoll.boot.report import BootReport
from atoll.boot.runner import BootSpec, Firmware, KernelOverride, Machine
from atoll.compose.oci import write_busybox_archive
from atoll.compose.pipeline import compose
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.manifest import load_index, load_manifest
from atoll.process import run
from atoll.progress import Reporter

CHECKOUT = Path(__file__).resolve().parents[3]
MANIFEST = CHECKOUT / "examples" / "minimal.toml"
OVERLAY = CHECKOUT / "src/atoll/overlay"
BOOT_REPORT = "usr/lib/atoll/boot-report"
BOOT_REPORT_UNIT = "usr/lib/systemd/system/atoll-boot-report.service"
# The conventional host is ready when its default target is: the marker is
# ordered after multi-user.target and pulled in by graphical.target (Debian's
# default), which is ordered after multi-user.target, so there is no cycle.
BASELINE_READY_UNIT = """\
[Unit]
Description=ready marker on the serial console (conventional host, benchmark)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'read -r up idle < /proc/uptime; echo "ATOLL-READY uptime=$up" > /dev/console'
"""
BOOTS = 3
TIMEOUT = 300.0
TARGET_RATIO = 0.25


def _baseline_disk(tarball: Path, work: Path) -> tuple[Path, KernelOverride]:
    """An ext4 disk of the baseline tree (plus the ready unit) and its kernel/initrd."""
    tree = work / "baseline-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    run(["tar", "-xf", tarball, "-C", tree, "--numeric-owner"])
    units = tree / "etc/systemd/system"
    (units / "atoll-ready.service").write_text(BASELINE_READY_UNIT)
    shutil.copyfile(OVERLAY / BOOT_REPORT_UNIT, units / "atoll-boot-report.service")
    report = tree / BOOT_REPORT
    report.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(OVERLAY / BOOT_REPORT, report)
    report.chmod(0o755)
    default = units / "default.target"
    default.unlink(missing_ok=True)
    default.symlink_to("/lib/systemd/system/graphical.target")
    wants = units / "graphical.target.wants"
    wants.mkdir(exist_ok=True)
    for unit in ("atoll-ready.service", "atoll-boot-report.service"):
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    disk, kernel, initrd = tree_disk(tree, tarball, work, "baseline", "4G")
    shutil.rmtree(tree, ignore_errors=True)
    return disk, KernelOverride(kernel, "root=LABEL=baseline rw console=ttyS0,115200", initrd)


def _boot(spec: BootSpec) -> BootReport:
    with Machine(spec) as vm:
        return vm.wait_ready(TIMEOUT, then_analysis=30.0)


def run_benchmark(workdir: Path, reporter: Reporter) -> dict[str, object]:
    workdir.mkdir(parents=True, exist_ok=True)
    write_busybox_archive(
        CHECKOUT / "build/images/busybox.oci.tar", "docker.io/library/busybox:atoll"
    )
    cache = workdir / "compose-cache"
    epoch = int(time.time())
    composed = compose(MANIFEST, workdir / "repo", reporter, cache=cache, source_date_epoch=epoch)
    image = workdir / "atoll.img"
    build_disk(plan_disk(workdir / "repo", composed.ref, image, size=2048 * MIB), reporter)
    manifest = load_manifest(MANIFEST)
    index = load_index(manifest.distribution, cache, reporter)
    baseline = build_baseline_rootfs(
        manifest.distribution,
        manifest.kernel.package,
        index.fingerprint,
        cache,
        reporter,
        source_date_epoch=epoch,
    )
    base_disk, base_kernel = _baseline_disk(baseline.tarball, workdir)

    atoll_runs: list[BootReport] = []
    base_runs: list[BootReport] = []
    for i in range(BOOTS):
        with reporter.stage("boot atoll", f"{i + 1}/{BOOTS}"):
            atoll_runs.append(_boot(BootSpec(image, Firmware.DIRECT, snapshot=True)))
        with reporter.stage("boot baseline", f"{i + 1}/{BOOTS}"):
            base_runs.append(
                _boot(
                    BootSpec(base_disk, Firmware.DIRECT, snapshot=True, kernel_override=base_kernel)
                )
            )

    def median(runs: list[BootReport], pick: str) -> float | None:
        values: list[float] = []
        for r in runs:
            if pick == "ready":
                value = r.ready_seconds
            elif r.analysis is None:
                value = None
            else:
                value = r.analysis.startup.get(pick)
            if value is not None:
                values.append(value)
        return round(statistics.median(values), 2) if values else None

    atoll_s, base_s = median(atoll_runs, "ready"), median(base_runs, "ready")
    assert atoll_s is not None and base_s is not None  # wait_ready raised otherwise
    ratio = round(atoll_s / base_s, 3)
    slowest = atoll_runs[-1].analysis.slowest_on_chain() if atoll_runs[-1].analysis else []
    return {
        "figures": {
            "atoll boot to ready, median (s)": atoll_s,
            "baseline boot to ready, median (s)": base_s,
            "atoll kernel (systemd-analyze, s)": median(atoll_runs, "kernel"),
            "atoll userspace (systemd-analyze, s)": median(atoll_runs, "userspace"),
            "baseline kernel (systemd-analyze, s)": median(base_runs, "kernel"),
            "baseline initrd (systemd-analyze, s)": median(base_runs, "initrd"),
            "baseline userspace (systemd-analyze, s)": median(base_runs, "userspace"),
            "boots per image": BOOTS,
            "atoll slowest on critical chain": ", ".join(
                f"{link.unit} +{link.took:.1f}s" for link in slowest
            ),
        },
        "targets": [
            {
                "name": "atoll boot time / baseline boot time (TCG)",
                "value": ratio,
                "target": f"<= {TARGET_RATIO}",
                "met": ratio <= TARGET_RATIO,
            }
        ],
    }

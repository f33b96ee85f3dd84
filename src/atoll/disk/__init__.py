"""The disk stage: a composed commit becomes a bootable GPT disk image.

``atoll disk REPO REF -o IMG`` (:mod:`atoll.disk.cli`) plans, then builds
(:mod:`atoll.disk.build`) a disk with two partitions (:mod:`atoll.disk.layout`):
an ESP with systemd-boot, the deployments' boot entries and kernels, and an
ext4 root (``atoll-root``) holding the ostree sysroot with the commit deployed.
There is no initramfs: the kernel mounts ``root=PARTUUID=...`` itself and
starts atoll's static prepare-root as PID 1, so the commit's kernel config is
checked first (:mod:`atoll.disk.kernelcheck`). Nothing is mounted on the host.

For the boot stage (``atoll boot``) and tests, reading a disk without
mounting it (:mod:`atoll.disk.image`):

* ``read_default_entry(image) -> DirectBoot(entry, kernel: bytes)``: the
  default deployment's kernel and command line (``.options``) for qemu
  ``-kernel``/``-append`` (direct mode); call it before every boot;
* ``boot_entries(image)``: every deployment's entry, default first;
* ``select_entry(image, "ostree-1-atoll")``: make systemd-boot boot that
  entry under UEFI (rollback tests);
* ``partitions(image)``, ``esp_files(image)``, ``read_esp_file(image, path)``;
* ``write_config_drive(user_data, output)`` (``atoll config-drive``): user data
  on an ext4 disk labelled ``ATOLL-CONFIG``, for hypervisors without fw_cfg.

The ESP is kept in step with ostree by :mod:`atoll.wire.bootentry`, which
the agent also runs on the node after each upgrade.
"""

from atoll.disk.build import DiskFormat, DiskPlan, DiskResult, build_disk, plan_disk
from atoll.disk.configdrive import write_config_drive
from atoll.disk.image import (
    DirectBoot,
    boot_entries,
    esp_files,
    partitions,
    read_default_entry,
    read_esp_file,
    select_entry,
)

__all__ = [
    "DirectBoot",
    "DiskFormat",
    "DiskPlan",
    "DiskResult",
    "boot_entries",
    "build_disk",
    "esp_files",
    "partitions",
    "plan_disk",
    "read_default_entry",
    "read_esp_file",
    "select_entry",
    "write_config_drive",
]

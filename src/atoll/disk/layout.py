"""The GPT layout of an atoll disk, computed before anything is written.

Two partitions, 1 MiB aligned, as a cloud image needs them:

1. ``ESP``: FAT32, systemd-boot as the removable-media loader
   (``EFI/BOOT/BOOTX64.EFI``), its entries and the deployments' kernels;
2. ``atoll-root``: ext4 labelled ``atoll-root``, the ostree sysroot
   (deployments, the stateroot's ``/var``, the repo), typed as the
   discoverable "Linux root (x86-64)" partition and filling the rest of the disk.

The kernel finds the root by ``root=PARTUUID=<uuid>`` (no initramfs, no udev):
the partition UUIDs are chosen here, so the command line is known before the
disk exists. Everything in this module is pure; :mod:`atoll.disk.build` applies it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from atoll.errors import InputError

SECTOR = 512
MIB = 1024 * 1024
ALIGN = MIB
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ROOT_LABEL = "atoll-root"
ESP_LABEL = "ESP"
DEFAULT_ESP_MIB = 128  # room for the kernels of a few deployments (~15 MB each)
# The backup GPT occupies the last 33 sectors; keep the last MiB free.
TAIL = MIB

_SIZE = re.compile(r"^(?P<n>\d+(\.\d+)?)\s*(?P<unit>[KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}


def parse_size(text: str, what: str = "--size") -> int:
    """``4G``, ``512M``, ``4GiB`` or a byte count -> bytes (binary units)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise InputError(f"{what}: {text!r} is not a size (e.g. 4G, 512M)")
    return int(float(match.group("n")) * _UNITS[match.group("unit").upper()])


@dataclass(frozen=True)
class Partition:
    number: int
    name: str
    type_uuid: str
    uuid: str
    start: int  # bytes
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class DiskLayout:
    size: int
    disk_uuid: str
    esp: Partition
    root: Partition

    @property
    def partitions(self) -> tuple[Partition, Partition]:
        return (self.esp, self.root)

    def sfdisk_script(self) -> str:
        """The layout as sfdisk input (sectors)."""
        lines = [
            "label: gpt",
            f"label-id: {self.disk_uuid}",
            "unit: sectors",
            f"first-lba: {ALIGN // SECTOR}",
            f"sector-size: {SECTOR}",
            "",
        ]
        for part in self.partitions:
            lines.append(
                f"start={part.start // SECTOR}, size={part.size // SECTOR}, "
                f'type={part.type_uuid}, uuid={part.uuid}, name="{part.name}"'
            )
        return "\n".join(lines) + "\n"


def plan_layout(
    size: int,
    *,
    esp_size: int = DEFAULT_ESP_MIB * MIB,
    min_root: int = 256 * MIB,
    seed: str | None = None,
) -> DiskLayout:
    """Place the ESP and the root partition on a disk of ``size`` bytes.

    ``seed`` makes the UUIDs deterministic (tests, reproducible images); by
    default every disk gets fresh ones, as two disks with the same PARTUUID on
    one machine would make ``root=PARTUUID=`` ambiguous.
    """
    if size % ALIGN:
        raise InputError(f"--size: {size} bytes is not a whole number of MiB")
    if esp_size % ALIGN or esp_size < 64 * MIB:
        raise InputError(f"ESP size {esp_size} must be whole MiB and at least 64 MiB")
    root_start = ALIGN + esp_size
    root_size = size - TAIL - root_start
    if root_size < min_root:
        need = (root_start + min_root + TAIL + MIB - 1) // MIB
        raise InputError(
            f"--size: {size // MIB} MiB is too small: the root needs {min_root // MIB} MiB, "
            f"the disk at least {need} MiB"
        )

    def make_uuid(name: str) -> str:
        if seed is None:
            return str(uuid.uuid4())
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"atoll-disk:{seed}:{name}"))

    return DiskLayout(
        size=size,
        disk_uuid=make_uuid("disk"),
        esp=Partition(1, ESP_LABEL, ESP_TYPE, make_uuid("esp"), ALIGN, esp_size),
        root=Partition(2, ROOT_LABEL, ROOT_TYPE_X86_64, make_uuid("root"), root_start, root_size),
    )


def root_kernel_arguments(layout: DiskLayout) -> list[str]:
    """How the kernel mounts the root without an initramfs."""
    return [f"root=PARTUUID={layout.root.uuid}", "rootfstype=ext4", "rootwait"]


def merge_kernel_arguments(image_kargs: str, root_args: list[str]) -> tuple[list[str], list[str]]:
    """The image's arguments plus the root ones; returns (arguments, dropped).

    The disk owns ``root=``/``rootfstype=``: a manifest's own value is dropped
    (and reported), since it cannot know the partition's UUID.
    """
    owned = {arg.split("=", 1)[0] for arg in root_args}
    kept: list[str] = []
    dropped: list[str] = []
    for arg in image_kargs.split():
        (dropped if arg.split("=", 1)[0] in owned else kept).append(arg)
    return kept + root_args, dropped

"""Refuse a kernel that cannot mount atoll's root without an initramfs.

atoll boots with no initramfs: the kernel itself must find the NVMe disk,
read the GPT (for ``root=PARTUUID=``), mount ext4 and, under UEFI, be started
by systemd-boot as an EFI program. A module cannot help before the root is
mounted, so these options must be built in (``=y``). The check reads the
kernel's own config (``/usr/lib/modules/<kver>/config`` in the commit, where
compose keeps it) and fails with the option, what it is for, and the file.
"""

from __future__ import annotations

from dataclasses import dataclass

# (option, what atoll needs it for); all must be "y".
REQUIRED_BUILTIN: tuple[tuple[str, str], ...] = (
    ("CONFIG_PCI", "the NVMe controller is a PCI device"),
    ("CONFIG_BLK_DEV_NVME", "the root disk is NVMe"),
    ("CONFIG_EXT4_FS", "the root filesystem is ext4"),
    ("CONFIG_EFI_PARTITION", "root=PARTUUID= needs the GPT partition table"),
    ("CONFIG_DEVTMPFS", "PID 1 needs /dev without udev"),
    ("CONFIG_EFI_STUB", "systemd-boot starts the kernel as an EFI program"),
)
# Wanted but not fatal: "y" or "m".
RECOMMENDED: tuple[tuple[str, str], ...] = (
    ("CONFIG_FW_CFG_SYSFS", "first-boot user data from qemu fw_cfg"),
    ("CONFIG_VFAT_FS", "the agent updates boot entries on the ESP"),
)


@dataclass(frozen=True)
class KernelVerdict:
    problems: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` lines -> {name: value}; ``# CONFIG_X is not set`` -> "n"."""
    values: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("# CONFIG_") and line.endswith(" is not set"):
            values[line[2:].split()[0]] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            values[name] = value.strip('"')
    return values


def check_config(text: str, source: str) -> KernelVerdict:
    """Every problem names the option, its value, why it is needed, and ``source``."""
    values = parse_config(text)
    problems = [
        f"{source}: {name}={values.get(name, 'n')}, needs =y ({why}; there is no initramfs)"
        for name, why in REQUIRED_BUILTIN
        if values.get(name) != "y"
    ]
    warnings = [
        f"{source}: {name} is not enabled ({why})"
        for name, why in RECOMMENDED
        if values.get(name) not in {"y", "m"}
    ]
    return KernelVerdict(tuple(problems), tuple(warnings))


def config_candidates(kver: str) -> list[str]:
    """Where a commit may keep its kernel's config, in order."""
    return [
        f"/usr/lib/modules/{kver}/config",
        f"/usr/lib/modules/{kver}/config-{kver}",
        f"/boot/config-{kver}",
    ]

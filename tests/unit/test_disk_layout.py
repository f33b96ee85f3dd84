"""GPT layout plan, sizes, kernel arguments and the kernel config check."""

from __future__ import annotations

import pytest

from atoll.disk.kernelcheck import check_config
from atoll.disk.layout import (
    ESP_TYPE,
    MIB,
    ROOT_TYPE_X86_64,
    merge_kernel_arguments,
    parse_size,
    plan_layout,
    root_kernel_arguments,
)
from atoll.errors import InputError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4G", 4096 * MIB), ("512M", 512 * MIB), ("2GiB", 2048 * MIB), ("1048576", MIB)],
)
def test_sizes_use_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "four", "4X", "-1G"])
def test_bad_sizes_name_the_flag(text: str) -> None:
    with pytest.raises(InputError, match="--size"):
        parse_size(text)


def test_layout_is_aligned_and_fills_the_disk() -> None:
    layout = plan_layout(4096 * MIB, seed="t")
    esp, root = layout.partitions
    assert (esp.start, esp.size, esp.type_uuid) == (MIB, 128 * MIB, ESP_TYPE)
    assert root.start == esp.end and root.start % MIB == 0
    assert root.type_uuid == ROOT_TYPE_X86_64 and root.name == "atoll-root"
    # The last MiB stays free for the backup GPT.
    assert root.end == 4095 * MIB
    script = layout.sfdisk_script()
    assert "label: gpt" in script
    assert f"start=2048, size={128 * 2048}, type={ESP_TYPE}" in script
    assert f"uuid={root.uuid}" in script


def test_seeded_uuids_are_stable_and_distinct() -> None:
    a, b = plan_layout(1024 * MIB, seed="x"), plan_layout(1024 * MIB, seed="x")
    assert a == b
    assert len({a.disk_uuid, a.esp.uuid, a.root.uuid}) == 3
    assert plan_layout(1024 * MIB).root.uuid != plan_layout(1024 * MIB).root.uuid


def test_too_small_disk_says_how_big_it_must_be() -> None:
    with pytest.raises(InputError, match="at least 386 MiB"):
        plan_layout(300 * MIB)


def test_disk_owns_root_argument() -> None:
    layout = plan_layout(1024 * MIB, seed="k")
    args, dropped = merge_kernel_arguments(
        "console=ttyS0 root=/dev/sda rw", root_kernel_arguments(layout)
    )
    assert dropped == ["root=/dev/sda"]
    assert args[:2] == ["console=ttyS0", "rw"]
    assert f"root=PARTUUID={layout.root.uuid}" in args and "rootwait" in args


GOOD_CONFIG = """
CONFIG_PCI=y
CONFIG_BLK_DEV_NVME=y
CONFIG_EXT4_FS=y
CONFIG_EFI_PARTITION=y
CONFIG_DEVTMPFS=y
CONFIG_EFI_STUB=y
CONFIG_FW_CFG_SYSFS=m
CONFIG_VFAT_FS=m
"""


def test_a_kernel_with_builtin_drivers_passes() -> None:
    verdict = check_config(GOOD_CONFIG, "config")
    assert verdict.ok and verdict.warnings == ()


def test_a_modular_nvme_driver_is_refused_by_name() -> None:
    text = GOOD_CONFIG.replace("CONFIG_BLK_DEV_NVME=y", "CONFIG_BLK_DEV_NVME=m").replace(
        "CONFIG_EXT4_FS=y", "# CONFIG_EXT4_FS is not set"
    )
    verdict = check_config(text, "k/config")
    assert not verdict.ok
    assert verdict.problems[0].startswith("k/config: CONFIG_BLK_DEV_NVME=m, needs =y")
    assert "CONFIG_EXT4_FS=n" in verdict.problems[1]


def test_missing_fw_cfg_is_only_a_warning() -> None:
    verdict = check_config(GOOD_CONFIG.replace("CONFIG_FW_CFG_SYSFS=m", ""), "c")
    assert verdict.ok and "CONFIG_FW_CFG_SYSFS" in verdict.warnings[0]

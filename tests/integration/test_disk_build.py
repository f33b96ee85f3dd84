"""atoll disk on a tiny hand-made commit: GPT, ESP and sysroot checked without mounting.

The commit is a few files (a fake kernel and its config, os-release), so the
whole disk builds in seconds; the real image is booted by the vm tier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.cli import main
from atoll.disk import (
    DiskFormat,
    boot_entries,
    build_disk,
    esp_files,
    plan_disk,
    read_default_entry,
    read_esp_file,
    select_entry,
)
from atoll.disk import build as disk_build
from atoll.disk.layout import ESP_TYPE, MIB, ROOT_TYPE_X86_64
from atoll.errors import AtollError, InputError
from atoll.process import run
from atoll.progress import PlainReporter
from atoll.tools import ostree

KVER = "6.1.0-test-amd64"
KERNEL = b"MZ fake kernel " * 1000
CONFIG = "\n".join(
    f"CONFIG_{name}=y"
    for name in ("PCI", "BLK_DEV_NVME", "EXT4_FS", "EFI_PARTITION", "DEVTMPFS", "EFI_STUB")
)
REF = "atoll/x86_64/tiny"
KERNEL_2 = b"MZ second kernel " * 1000


@dataclass(frozen=True)
class TinyRepo:
    repo: Path
    commit: str
    second: str


def _commit(
    repo: Path,
    root: Path,
    ref: str,
    config: str,
    kargs: str,
    version: str,
    kernel: bytes = KERNEL,
) -> str:
    modules = root / "usr/lib/modules" / KVER
    modules.mkdir(parents=True)
    (modules / "vmlinuz").write_bytes(kernel)
    (modules / "config").write_text(config + "\n")
    (root / "usr/etc").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text(f'NAME=atoll\nID=atoll\nVERSION_ID="{version}"\n')
    ostree.init_repo(repo)
    return ostree.commit(
        repo,
        root,
        branch=ref,
        subject=f"tiny {version}",
        metadata={"version": version, "atoll.kernel": KVER, "atoll.kargs": kargs},
        owner_root=True,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyRepo:
    base = tmp_path_factory.mktemp("tiny")
    repo = base / "repo"
    commit = _commit(repo, base / "tree", REF, CONFIG, "console=ttyS0 quiet root=/dev/sda", "1.0")
    _commit(
        repo,
        base / "modular",
        "atoll/x86_64/modular",
        CONFIG.replace("CONFIG_BLK_DEV_NVME=y", "CONFIG_BLK_DEV_NVME=m"),
        "",
        "1.0",
    )
    second = _commit(
        repo, base / "v2", "atoll/x86_64/tiny2", CONFIG, "console=ttyS0", "2.0", KERNEL_2
    )
    return TinyRepo(repo, commit, second)


def test_disk_has_gpt_esp_and_a_bootable_default_entry(tiny: TinyRepo, tmp_path: Path) -> None:
    user_data = tmp_path / "node.toml"
    user_data.write_text('[node]\nhostname = "tiny-1"\n')
    image = tmp_path / "tiny.img"
    plan = plan_disk(tiny.repo, REF, image, size=512 * MIB, user_data=user_data, seed="t")
    result = build_disk(plan, PlainReporter())

    assert image.stat().st_size == 512 * MIB
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work dir left
    table = json.loads(run(["sfdisk", "--json", image]).stdout)
    parts = table["partitiontable"]["partitions"]
    assert [(p["name"], p["type"]) for p in parts] == [
        ("ESP", ESP_TYPE),
        ("atoll-root", ROOT_TYPE_X86_64),
    ]
    assert parts[1]["uuid"].lower() == plan.layout.root.uuid

    direct = read_default_entry(image)
    assert direct.kernel == KERNEL
    options = direct.options.split()
    assert f"root=PARTUUID={plan.layout.root.uuid}" in options
    assert "root=/dev/sda" not in options  # the disk owns root=
    assert {"console=ttyS0", "quiet", "rootwait"} <= set(options)
    assert any(o.startswith("init=/ostree/boot.") for o in options)
    assert any(o.startswith("ostree=/ostree/boot.") and o.endswith("/0") for o in options)
    assert result.default_entry.id == direct.entry.id == "ostree-1-atoll"

    files = esp_files(image)
    loader = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").read_bytes()
    assert read_esp_file(image, "/EFI/BOOT/BOOTX64.EFI") == loader
    assert f"/boot{direct.entry.linux}" not in files and direct.entry.linux in files
    assert read_esp_file(image, direct.entry.linux) == KERNEL
    esp_entry = read_esp_file(image, "/loader/entries/ostree-1-atoll.conf").decode()
    # The ESP's copy names the deployment directory instead of ostree's bootlink
    # (which the next deploy deletes); every other argument is ostree's.
    esp_options = next(x for x in esp_entry.splitlines() if x.startswith("options "))
    esp_words = esp_options.removeprefix("options ").split()
    deployment = f"/ostree/deploy/atoll/deploy/{result.commit}.0"
    assert f"ostree={deployment}" in esp_words
    assert f"init={deployment}/usr/lib/ostree/ostree-prepare-root" in esp_words
    pinned = ("ostree=", "init=")
    assert [w for w in esp_words if not w.startswith(pinned)] == [
        w for w in options if not w.startswith(pinned)
    ]

    embedded = run(
        [
            "debugfs",
            "-R",
            "cat /ostree/deploy/atoll/var/lib/atoll/user-data.toml",
            f"{image}?offset={plan.layout.root.start}",
        ]
    ).stdout
    assert embedded == user_data.read_bytes()

    select_entry(image, "ostree-1-atoll")
    assert b"default ostree-1-atoll*" in read_esp_file(image, "/loader/loader.conf")
    with pytest.raises(InputError, match="no boot entry 'ostree-9-atoll'"):
        select_entry(image, "ostree-9-atoll")


def test_qcow2_output_is_readable_for_direct_boot(tiny: TinyRepo, tmp_path: Path) -> None:
    image = tmp_path / "tiny.qcow2"
    code = main(
        ["disk", str(tiny.repo), REF, "-o", str(image), "--size", "1G", "--format", "qcow2"]
    )
    assert code == 0
    info = json.loads(run(["qemu-img", "info", "--output=json", image]).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 1024 * MIB
    assert read_default_entry(image).kernel == KERNEL
    assert [e.id for e in boot_entries(image)] == ["ostree-1-atoll"]


def test_a_kernel_that_needs_an_initramfs_is_refused(
    tiny: TinyRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "m.img"
    assert main(["disk", str(tiny.repo), "atoll/x86_64/modular", "-o", str(image)]) == 2
    err = capsys.readouterr().err
    assert "CONFIG_BLK_DEV_NVME=m, needs =y" in err and "/config" in err
    assert not image.exists()


def test_bad_user_data_fails_before_building(
    tiny: TinyRepo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_data = tmp_path / "node.toml"
    user_data.write_text('[fleet]\ncontroller = "nope"\n')
    image = tmp_path / "u.img"
    argv = ["disk", str(tiny.repo), REF, "-o", str(image), "--user-data", str(user_data)]
    assert main(argv) == 2
    assert f"{user_data}: [fleet].controller" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [user_data]


def test_a_failed_build_keeps_the_previous_image(
    tiny: TinyRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "keep.img"
    image.write_bytes(b"previous image")
    plan = plan_disk(tiny.repo, REF, image, size=512 * MIB, disk_format=DiskFormat.RAW)
    # Fail after the sysroot is deployed (the root partition "too small").
    monkeypatch.setattr(disk_build, "ROOT_SLACK", 1024 * MIB)
    with pytest.raises(InputError, match=r"root partition .* is too small"):
        build_disk(plan, PlainReporter())
    assert image.read_bytes() == b"previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.img"]


def test_previous_commit_stays_selectable_as_rollback(tiny: TinyRepo, tmp_path: Path) -> None:
    image = tmp_path / "two.img"
    plan = plan_disk(tiny.repo, tiny.second, image, size=512 * MIB, previous=REF, boot_tries=3)
    build_disk(plan, PlainReporter())
    entries = boot_entries(image)
    assert [e.id for e in entries] == ["ostree-2-atoll", "ostree-1-atoll"]
    assert entries[0].title.startswith("atoll 2.0") and entries[1].title.startswith("atoll 1.0")
    assert read_default_entry(image).kernel == KERNEL_2
    files = esp_files(image)
    assert "/loader/entries/ostree-2-atoll+3.conf" in files  # boot counting on the new one
    assert "/loader/entries/ostree-1-atoll.conf" in files
    assert read_esp_file(image, entries[1].linux) == KERNEL


def test_an_unreadable_root_file_system_is_an_error_not_an_empty_listing(tmp_path: Path) -> None:
    """debugfs exits 0 when it cannot open a file system: reading a disk whose root
    partition holds no ext4 must fail naming it, never report "no boot entries"."""
    disk = tmp_path / "blank.img"
    with disk.open("wb") as f:
        f.truncate(64 * MIB)
    layout = f"label: gpt\nsize=8MiB, type={ESP_TYPE}\ntype={ROOT_TYPE_X86_64}, name=atoll-root\n"
    run(["sfdisk", "--quiet", disk], input=layout.encode())
    with pytest.raises(AtollError, match="cannot read atoll-root"):
        boot_entries(disk)

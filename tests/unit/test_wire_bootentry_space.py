"""The ESP's free space before a boot entries sync (atoll.wire.bootentry): the decision,
what a sync needs, and the sync that refuses naming the ESP (issue 20)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from atoll.wire import bootentry
from atoll.wire.bootentry import (
    MB,
    Action,
    ActionKind,
    EspFullError,
    checked_sync,
    space_needed,
    space_shortfall,
    sync,
)

ESP = "ESP (/boot/efi)"


@pytest.mark.parametrize(
    ("free", "needed", "kernel", "expected"),
    [
        (0, 14 * MB, True, "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB"),
        # Needs are rounded up (a byte over 13 MB is 14), free space down.
        (0, 13 * MB + 1, True, "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB"),
        (MB - 1, 2 * MB, True, f"{ESP} has {MB - 1} bytes free, the new kernel needs 2 MB"),
        (5 * MB + MB // 2, 6 * MB, True, f"{ESP} has 5 MB free, the new kernel needs 6 MB"),
        (0, 4096, False, f"{ESP} has 0 bytes free, the new boot entries need 1 MB"),
        (14 * MB, 14 * MB, True, None),  # exactly enough
        (100 * MB, 14 * MB, True, None),
        (0, 0, False, None),  # nothing to write: an empty ESP is no failure
    ],
)
def test_the_shortfall_names_the_esp_its_free_space_and_the_need(
    free: int, needed: int, kernel: bool, expected: str | None
) -> None:
    assert space_shortfall(ESP, free, needed, kernel=kernel) == expected


def test_the_need_counts_copies_and_writes_in_whole_clusters_not_removals(
    tmp_path: Path,
) -> None:
    (tmp_path / "ostree/atoll-bb").mkdir(parents=True)
    (tmp_path / "ostree/atoll-bb/vmlinuz").write_bytes(b"k" * 5000)
    (tmp_path / "ostree/atoll-bb/initramfs.img").write_bytes(b"i" * 4096)
    actions = [
        Action(ActionKind.COPY, "ostree/atoll-bb/vmlinuz", source="/ostree/atoll-bb/vmlinuz"),
        Action(ActionKind.COPY, "ostree/atoll-bb/initramfs.img", "/ostree/atoll-bb/initramfs.img"),
        Action(ActionKind.WRITE, "loader/entries/ostree-2-atoll.conf", content="x" * 10),
        Action(ActionKind.REMOVE, "ostree/atoll-aa"),  # comes last: frees nothing in time
    ]
    assert space_needed(actions, tmp_path, 4096) == 8192 + 4096 + 4096
    assert space_needed(actions, tmp_path, 512) == 5120 + 4096 + 512
    assert space_needed(actions[3:], tmp_path, 4096) == 0


class FakeStatvfs:
    """``os.statvfs`` of an ESP with ``free`` bytes in 512-byte clusters."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked: list[Path] = []

    def __call__(self, path: Path) -> os.statvfs_result:
        self.asked.append(path)
        blocks = self.free // 512
        # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree, f_favail, ...
        return os.statvfs_result((512, 512, 65536, blocks, blocks, 0, 0, 0, 0, 255))


def _boot(tmp_path: Path, kernel_bytes: int) -> Path:
    boot = tmp_path / "boot"
    (boot / "loader/entries").mkdir(parents=True)
    (boot / "loader/entries/ostree-1-atoll.conf").write_text(
        "title atoll 1\nversion 1\nlinux /ostree/atoll-aa/vmlinuz\n"
        "options rw ostree=/ostree/deploy/atoll/deploy/aa.0\n"
    )
    (boot / "ostree/atoll-aa").mkdir(parents=True)
    (boot / "ostree/atoll-aa/vmlinuz").write_bytes(b"k" * kernel_bytes)
    return boot


def test_a_full_esp_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    boot, esp = _boot(tmp_path, 13 * MB + 1), tmp_path / "esp"  # and an entry, loader.conf
    esp.mkdir()
    statvfs = FakeStatvfs(0)
    with pytest.raises(EspFullError) as refused:
        checked_sync(boot, esp, ESP, statvfs=statvfs)
    assert str(refused.value) == "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB"
    assert refused.value.resource == ESP
    assert statvfs.asked == [esp]
    assert list(esp.iterdir()) == []


def test_a_kernel_already_on_the_esp_needs_no_room(tmp_path: Path) -> None:
    boot, esp = _boot(tmp_path, 3 * MB), tmp_path / "esp"
    sync(boot, esp)
    assert checked_sync(boot, esp, ESP, statvfs=FakeStatvfs(0)) == []
    # With room, the new kernel is copied as sync would.
    (boot / "ostree/atoll-aa/vmlinuz").write_bytes(b"n" * MB)
    actions = checked_sync(boot, esp, ESP, statvfs=FakeStatvfs(2 * MB))
    assert [a.kind for a in actions] == [ActionKind.COPY]
    assert (esp / "ostree/atoll-aa/vmlinuz").read_bytes() == b"n" * MB


def test_running_out_of_space_while_writing_names_the_esp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    boot, esp = _boot(tmp_path, 100), tmp_path / "esp"

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bootentry, "apply_plan", full)
    with pytest.raises(EspFullError, match=r"^ESP \(/boot/efi\) ran out of space during the boot"):
        checked_sync(boot, esp, ESP, statvfs=FakeStatvfs(MB))

    def broken(*_: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(bootentry, "apply_plan", broken)
    with pytest.raises(OSError, match="Input/output error") as other:
        checked_sync(boot, esp, ESP, statvfs=FakeStatvfs(MB))
    assert not isinstance(other.value, EspFullError)

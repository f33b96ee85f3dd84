"""Boot entry parsing, ordering and the ESP sync plan (atoll.wire.bootentry), and the
node's bless (atoll.agent.bootentries)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from atoll.agent.bootentries import bless
from atoll.wire.bootentry import (
    ActionKind,
    EntryError,
    parse_entry,
    plan_sync,
    read_entries,
    sort_key,
    sync,
)


def _entry(version: int, csum: str, bootn: int = 0) -> str:
    link = f"/ostree/boot.{bootn}/atoll/{csum}/0"
    return (
        f"title atoll {version}\nversion {version}\n"
        f"linux /ostree/atoll-{csum}/vmlinuz-6.1\n"
        f"options rw root=PARTUUID=x init={link}/usr/lib/ostree/ostree-prepare-root "
        f"ostree={link}\n"
    )


def _link(sysroot: Path, csum: str, bootn: int) -> None:
    """The deployment directory and ostree's bootlink to it for boot version ``bootn``."""
    (sysroot / f"ostree/deploy/atoll/deploy/{csum}.0").mkdir(parents=True, exist_ok=True)
    link = sysroot / f"ostree/boot.{bootn}/atoll/{csum}/0"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"../../../deploy/atoll/deploy/{csum}.0")


def _boot_dir(tmp: Path, entries: dict[str, tuple[int, str, int]]) -> Path:
    boot = tmp / "boot"
    (boot / "loader/entries").mkdir(parents=True)
    for name, (version, csum, bootn) in entries.items():
        (boot / "loader/entries" / name).write_text(_entry(version, csum, bootn))
        _link(tmp, csum, bootn)
        kernel = boot / f"ostree/atoll-{csum}/vmlinuz-6.1"
        kernel.parent.mkdir(parents=True, exist_ok=True)
        kernel.write_bytes(csum.encode() * 100)
    return boot


def test_counter_is_split_from_the_id() -> None:
    entry = parse_entry(_entry(2, "aa"), "ostree-2-atoll+2-1.conf")
    assert (entry.id, entry.tries_left, entry.tries_done) == ("ostree-2-atoll", 2, 1)
    assert parse_entry(_entry(1, "aa"), "ostree-1-atoll.conf").tries_left is None


def test_an_entry_without_kernel_is_refused_by_name() -> None:
    with pytest.raises(EntryError, match=r"x\.conf: missing key 'linux'"):
        parse_entry("title t\noptions rw\n", "x.conf")


def test_newest_first_and_exhausted_last() -> None:
    entries = [
        parse_entry(_entry(1, "a"), "ostree-1-atoll.conf"),
        parse_entry(_entry(10, "b"), "ostree-10-atoll+0-3.conf"),
        parse_entry(_entry(2, "c"), "ostree-2-atoll.conf"),
    ]
    ordered = [e.id for e in sorted(entries, key=sort_key)]
    assert ordered == ["ostree-2-atoll", "ostree-1-atoll", "ostree-10-atoll"]


def test_sync_mirrors_entries_and_kernels(tmp_path: Path) -> None:
    boot = _boot_dir(tmp_path, {"ostree-1-atoll.conf": (1, "aa", 0)})
    esp = tmp_path / "esp"
    sync(boot, esp)
    assert read_entries(esp / "loader/entries")[0].id == "ostree-1-atoll"
    assert (esp / "ostree/atoll-aa/vmlinuz-6.1").read_bytes() == b"aa" * 100
    assert (esp / "loader/loader.conf").read_text().startswith("timeout 0")
    assert plan_sync(boot, esp) == []  # idempotent


def test_upgrade_then_sync_makes_the_new_entry_default_with_tries(tmp_path: Path) -> None:
    boot = _boot_dir(tmp_path, {"ostree-1-atoll.conf": (1, "aa", 0)})
    esp = tmp_path / "esp"
    sync(boot, esp)
    # ostree deploys a second commit: entries renumbered, boot.N flipped, the
    # old bootlinks deleted.
    for old in (boot / "loader/entries").iterdir():
        old.unlink()
    shutil.rmtree(tmp_path / "ostree/boot.0")
    _boot_dir_update = {"ostree-2-atoll.conf": (2, "bb", 1), "ostree-1-atoll.conf": (1, "aa", 1)}
    for name, (version, csum, bootn) in _boot_dir_update.items():
        (boot / "loader/entries" / name).write_text(_entry(version, csum, bootn))
        _link(tmp_path, csum, bootn)
    # Before the ESP sync the ESP's entry still boots: it names the deployment.
    (before,) = read_entries(esp / "loader/entries")
    assert "ostree=/ostree/deploy/atoll/deploy/aa.0" in before.options.split()
    prepare_root = "init=/ostree/deploy/atoll/deploy/aa.0/usr/lib/ostree/ostree-prepare-root"
    assert prepare_root in before.options.split()
    assert (tmp_path / "ostree/deploy/atoll/deploy/aa.0").is_dir()
    (boot / "ostree/atoll-bb").mkdir()
    (boot / "ostree/atoll-bb/vmlinuz-6.1").write_bytes(b"bb")
    actions = sync(boot, esp, tries=3)
    names = sorted(p.name for p in (esp / "loader/entries").iterdir())
    assert names == ["ostree-1-atoll.conf", "ostree-2-atoll+3.conf"]
    assert [a.kind for a in actions][:1] == [ActionKind.COPY]  # kernel before entry
    # The old deployment's entry did not change: not rewritten.
    assert "loader/entries/ostree-1-atoll.conf" not in {a.target for a in actions}
    entries = read_entries(esp / "loader/entries")
    assert [e.id for e in entries] == ["ostree-2-atoll", "ostree-1-atoll"]
    assert "ostree=/ostree/deploy/atoll/deploy/bb.0" in entries[0].options.split()
    assert "boot.1" not in entries[0].options


def test_an_entry_whose_bootlink_leads_nowhere_is_refused_before_touching_the_esp(
    tmp_path: Path,
) -> None:
    boot = _boot_dir(tmp_path, {"ostree-1-atoll.conf": (1, "aa", 0)})
    shutil.rmtree(tmp_path / "ostree/deploy")
    with pytest.raises(EntryError, match=r"ostree-1-atoll: ostree=/ostree/boot.0/atoll/aa/0: no"):
        sync(boot, tmp_path / "esp")
    assert not (tmp_path / "esp").exists()


def test_sync_removes_what_ostree_dropped(tmp_path: Path) -> None:
    boot = _boot_dir(
        tmp_path, {"ostree-2-atoll.conf": (2, "bb", 0), "ostree-1-atoll.conf": (1, "aa", 0)}
    )
    esp = tmp_path / "esp"
    sync(boot, esp)
    (boot / "loader/entries/ostree-1-atoll.conf").unlink()
    actions = sync(boot, esp)
    assert {(a.kind, a.target) for a in actions} == {
        (ActionKind.REMOVE, "loader/entries/ostree-1-atoll.conf"),
        (ActionKind.REMOVE, "ostree/atoll-aa"),
    }
    assert not (esp / "ostree/atoll-aa").exists()


def test_the_same_boot_under_another_ostree_s_file_name_is_kept(tmp_path: Path) -> None:
    """The disk's entries came from the build machine's ostree (bookworm's names them
    ostree-1-atoll.conf), the node's from its own (trixie's: ostree-1.conf): on a full
    ESP a rename would fail for nothing."""
    boot = _boot_dir(tmp_path, {"ostree-1-atoll.conf": (1, "aa", 0)})
    esp = tmp_path / "esp"
    sync(boot, esp)
    (boot / "loader/entries/ostree-1-atoll.conf").rename(boot / "loader/entries/ostree-1.conf")
    assert plan_sync(boot, esp) == []
    # A new deployment is still written, and the old name kept for the old one.
    shutil.rmtree(boot / "loader")
    boot = _boot_dir(tmp_path / "next", {"ostree-2.conf": (2, "bb", 0)})
    written = [a.target for a in plan_sync(boot, esp) if a.kind is ActionKind.WRITE]
    assert written == ["loader/entries/ostree-2.conf"]


def test_missing_kernel_fails_before_touching_the_esp(tmp_path: Path) -> None:
    boot = _boot_dir(tmp_path, {"ostree-1-atoll.conf": (1, "aa", 0)})
    (boot / "ostree/atoll-aa/vmlinuz-6.1").unlink()
    with pytest.raises(EntryError, match="no such file"):
        sync(boot, tmp_path / "esp")
    assert not (tmp_path / "esp").exists()


def test_bless_drops_the_counter_of_the_booted_entry_only(tmp_path: Path) -> None:
    boot = _boot_dir(
        tmp_path, {"ostree-2-atoll.conf": (2, "bb", 1), "ostree-1-atoll.conf": (1, "aa", 1)}
    )
    esp = tmp_path / "esp"
    sync(boot, esp, tries=3)
    (esp / "loader/entries/ostree-2-atoll+3.conf").rename(
        esp / "loader/entries/ostree-2-atoll+2-1.conf"
    )
    cmdline = "rw root=PARTUUID=x ostree=/ostree/deploy/atoll/deploy/bb.0\n"
    assert bless(esp, cmdline) == "ostree-2-atoll.conf"
    assert sorted(p.name for p in (esp / "loader/entries").iterdir()) == [
        "ostree-1-atoll.conf",
        "ostree-2-atoll.conf",
    ]
    assert bless(esp, cmdline) is None  # already good
    assert plan_sync(boot, esp) == []  # a later sync keeps the blessed entry
    with pytest.raises(EntryError, match="no entry boots"):
        bless(esp, "ostree=/ostree/boot.0/atoll/zz/0")

"""Build a bootable disk image from a composed commit, without mounting anything.

Plan, then apply. :func:`plan_disk` checks everything a user can get wrong
before any side effect: the ref resolves, the commit's kernel can mount the
root without an initramfs (:mod:`atoll.disk.kernelcheck`), the user data is
valid, the size holds the layout, the tools and systemd-boot are installed.
:func:`build_disk` then applies the plan:

1. an ostree sysroot in a plain directory: ``ostree admin init-fs``,
   ``os-init atoll``, ``pull-local`` from the build repo,
   ``sysroot.bootloader=none``, ``ostree admin deploy`` with the commit's
   ``atoll.kargs`` plus ``root=PARTUUID=...`` (ostree adds ``init=`` to
   atoll's static prepare-root itself, since there is no initramfs);
2. optional user data copied to the stateroot's ``/var/lib/atoll/user-data.toml``;
3. the ESP contents in a staging directory: systemd-boot as
   ``EFI/BOOT/BOOTX64.EFI`` and the deployments' entries and kernels
   (:func:`atoll.wire.bootentry.sync`, the same code the agent runs after
   an upgrade);
4. a sparse file partitioned with ``sfdisk``; ``mkfs.ext4 -d`` and
   ``mkfs.vfat`` write the filesystems straight into it at the partitions'
   offsets, ``mcopy`` fills the ESP; ``qemu-img convert`` for qcow2.

All of it happens in a work directory next to the output, and the finished
image is renamed over the output at the end: an interrupted or failed build
never leaves a half image at the output path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from atoll import durable
from atoll.disk.kernelcheck import KernelVerdict, check_config, config_candidates
from atoll.disk.layout import (
    MIB,
    DiskLayout,
    merge_kernel_arguments,
    plan_layout,
    root_kernel_arguments,
)
from atoll.errors import AtollError, InputError, ToolMissing
from atoll.process import run, which
from atoll.progress import Reporter
from atoll.tools import ostree, qemu
from atoll.wire import bootentry
from atoll.wire.userdata import EMBEDDED_PATH, UserDataError, parse_user_data

OS_NAME = "atoll"
SYSTEMD_BOOT_EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
# ext4 metadata, reserved blocks and room for the first upgrade's new objects.
ROOT_HEADROOM = 1.3
ROOT_SLACK = 128 * MIB
_TOOLS = ("ostree", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "chattr")


class DiskFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class DiskPlan:
    repo: Path
    ref: str
    commit: str
    version: str
    kernel: str
    kernel_arguments: tuple[str, ...]
    layout: DiskLayout
    output: Path
    format: DiskFormat
    user_data: bytes | None
    boot_tries: int | None
    warnings: tuple[str, ...]
    previous: str | None = None  # a commit deployed first, as the rollback entry


@dataclass(frozen=True)
class DiskResult:
    output: Path
    format: DiskFormat
    commit: str
    version: str
    layout: DiskLayout
    default_entry: bootentry.BootEntry
    root_bytes_used: int


def plan_disk(
    repo: Path,
    ref: str,
    output: Path,
    *,
    size: int,
    disk_format: DiskFormat = DiskFormat.RAW,
    user_data: Path | None = None,
    boot_tries: int | None = None,
    seed: str | None = None,
    previous: str | None = None,
) -> DiskPlan:
    """Validate the whole request; raise :class:`InputError` naming what is wrong."""
    for tool in _TOOLS + (("qemu-img",) if disk_format is DiskFormat.QCOW2 else ()):
        which(tool)
    if not SYSTEMD_BOOT_EFI.is_file():
        raise ToolMissing(f"{SYSTEMD_BOOT_EFI}: not installed", hint="apt-get install systemd-boot")
    if not output.parent.is_dir():
        raise InputError(f"-o {output}: directory {output.parent} does not exist")
    if output.is_dir():
        raise InputError(f"-o {output}: is a directory")
    raw_user_data = None
    if user_data is not None:
        try:
            raw_user_data = user_data.read_bytes()
            parse_user_data(raw_user_data, str(user_data))
        except OSError as e:
            raise InputError(f"--user-data {user_data}: {e.strerror}") from e
        except UserDataError as e:
            raise InputError(f"user data rejected:\n{e}") from e
    if boot_tries is not None and not 1 <= boot_tries <= 9:
        raise InputError(f"--boot-tries: {boot_tries} must be between 1 and 9")
    if not (repo / "config").is_file():
        raise InputError(f"{repo}: not an ostree repository")
    commit, meta, kernel, verdict = _check_commit(repo, ref)
    previous_commit = None
    if previous is not None:
        previous_commit, _meta, _kernel, previous_verdict = _check_commit(repo, previous)
        verdict = KernelVerdict(verdict.problems, verdict.warnings + previous_verdict.warnings)
    layout = plan_layout(size, seed=seed)
    kargs, dropped = merge_kernel_arguments(
        str(meta.get("atoll.kargs", "")), root_kernel_arguments(layout)
    )
    warnings = list(verdict.warnings)
    warnings += [f"atoll.kargs: {arg!r} replaced by the disk's own root" for arg in dropped]
    return DiskPlan(
        repo=repo,
        ref=ref,
        commit=commit,
        version=str(meta.get("version", "")),
        kernel=kernel,
        kernel_arguments=tuple(kargs),
        layout=layout,
        output=output,
        format=disk_format,
        user_data=raw_user_data,
        boot_tries=boot_tries,
        warnings=tuple(warnings),
        previous=previous_commit,
    )


def _check_commit(repo: Path, ref: str) -> tuple[str, dict[str, object], str, KernelVerdict]:
    commit = ostree.rev_parse(repo, ref)
    if commit is None:
        known = ", ".join(ostree.refs(repo)) or "none"
        raise InputError(f"{repo}: no ref or commit {ref!r} (refs: {known})")
    meta = ostree.commit_metadata(repo, commit, ["version", "atoll.kernel", "atoll.kargs"])
    kernel = str(meta.get("atoll.kernel") or _find_kernel(repo, commit))
    text, source = _kernel_config(repo, commit, kernel)
    verdict = check_config(text, f"{ref} ({commit[:12]}):{source}")
    if not verdict.ok:
        raise InputError(
            "this kernel cannot mount the root without an initramfs:\n  "
            + "\n  ".join(verdict.problems)
        )
    return commit, meta, kernel, verdict


def _find_kernel(repo: Path, commit: str) -> str:
    entries = ostree.list_tree(repo, commit, "/usr/lib/modules")
    for entry in entries:
        parts = entry.path.strip("/").split("/")
        if len(parts) == 5 and parts[4] == "vmlinuz":
            return parts[3]
    raise InputError(f"{repo}: commit {commit[:12]} has no /usr/lib/modules/<kver>/vmlinuz")


def _kernel_config(repo: Path, commit: str, kernel: str) -> tuple[str, str]:
    candidates = config_candidates(kernel)
    for path in candidates:
        content = ostree.cat_if_present(repo, commit, path)
        if content is not None:
            return content.decode(errors="replace"), path
    raise InputError(
        f"{repo}: commit {commit[:12]} has no kernel config ({', '.join(candidates)}): "
        "cannot verify that it boots without an initramfs"
    )


def build_disk(plan: DiskPlan, reporter: Reporter) -> DiskResult:
    """Apply ``plan``; the output appears only when the image is complete."""
    for warning in plan.warnings:
        reporter.warning(warning)
    work = Path(tempfile.mkdtemp(dir=plan.output.parent, prefix=f".{plan.output.name}."))
    try:
        sysroot = work / "sysroot"
        with reporter.stage("sysroot", f"deploy {plan.ref} ({plan.commit[:12]})"):
            _deploy(plan, sysroot)
        entries = bootentry.read_entries(sysroot / "boot" / bootentry.ENTRIES_DIR)
        if not entries:
            raise AtollError(f"{sysroot}/boot/loader/entries: ostree deploy wrote no boot entry")
        used = _tree_bytes(sysroot)
        needed = int(used * ROOT_HEADROOM) + ROOT_SLACK
        if needed > plan.layout.root.size:
            raise InputError(
                f"--size: the root partition ({plan.layout.root.size // MIB} MiB) is too small "
                f"for {used // MIB} MiB of sysroot; use at least "
                f"{(plan.layout.size - plan.layout.root.size + needed) // MIB + 1} MiB"
            )
        esp = work / "esp"
        with reporter.stage("esp", "systemd-boot, boot entries, kernels"):
            _stage_esp(sysroot, esp, plan.boot_tries)
        image = work / "disk.raw"
        with reporter.stage("image", f"{plan.layout.size // MIB} MiB GPT disk"):
            _write_image(plan.layout, sysroot, esp, image)
        final = image
        if plan.format is DiskFormat.QCOW2:
            with reporter.stage("qcow2", "qemu-img convert"):
                final = work / "disk.qcow2"
                qemu.convert(image, final, source_format="raw", target_format="qcow2")
        durable.replace(final, plan.output)
    finally:
        _remove_work(work)
    return DiskResult(
        output=plan.output,
        format=plan.format,
        commit=plan.commit,
        version=plan.version,
        layout=plan.layout,
        default_entry=entries[0],
        root_bytes_used=used,
    )


def _deploy(plan: DiskPlan, sysroot: Path) -> None:
    sysroot.mkdir()
    ostree.admin_init_fs(sysroot)
    ostree.admin_os_init(sysroot, OS_NAME)
    repo = sysroot / "ostree" / "repo"
    # No grub/syslinux integration on the node: atoll syncs the ESP itself.
    ostree.set_config(repo, "sysroot.bootloader", "none")
    kargs = plan.kernel_arguments
    if plan.previous is not None:
        ostree.pull_local(repo, plan.repo, plan.previous)
        ostree.admin_deploy(sysroot, OS_NAME, plan.previous, kernel_arguments=kargs)
    # Pulled only now: each deploy prunes commits that no ref or deployment holds.
    ostree.pull_local(repo, plan.repo, plan.commit)
    deploy_target = plan.commit
    if plan.ref != plan.commit:
        # The deployment's origin names the ref, so the node can upgrade along it.
        ostree.set_ref(repo, plan.ref, plan.commit)
        deploy_target = plan.ref
    # Offline there is no booted deployment: keep the first one explicitly.
    retain = plan.previous is not None
    ostree.admin_deploy(sysroot, OS_NAME, deploy_target, kernel_arguments=kargs, retain=retain)
    _copy_update_stamps(sysroot)
    if plan.user_data is not None:
        target = sysroot / "ostree" / "deploy" / OS_NAME / EMBEDDED_PATH
        durable.write_atomic(target, plan.user_data, mode=0o600)  # a secret: 0600 throughout


def _copy_update_stamps(sysroot: Path) -> None:
    """Each deployment's ``/etc/.updated``, from the stamp compose left in ``/usr/etc``.

    compose does the first-boot work of systemd's ``ConditionNeedsUpdate=/etc``
    units (linker cache, system users) and stamps ``/usr/etc/.updated``
    (:func:`atoll.compose.slim.settle_first_boot`), but ostree never copies a
    ``.updated`` into a deployment's ``/etc``, so each new deployment runs those
    units once. A fresh disk's deployments are exactly what compose settled.
    """
    deployments = sysroot / "ostree" / "deploy" / OS_NAME / "deploy"
    for deployment in sorted(deployments.glob("*.[0-9]*")):
        stamp, target = deployment / "usr/etc/.updated", deployment / "etc/.updated"
        if stamp.is_file() and (deployment / "etc").is_dir() and not target.exists():
            durable.write_atomic(target, stamp.read_bytes(), mode=0o644)


def _stage_esp(sysroot: Path, esp: Path, tries: int | None) -> None:
    loader = esp / "EFI" / "BOOT" / "BOOTX64.EFI"
    loader.parent.mkdir(parents=True)
    shutil.copyfile(SYSTEMD_BOOT_EFI, loader)
    (esp / "EFI" / "systemd").mkdir()
    bootentry.sync(sysroot / "boot", esp, tries)


def _write_image(layout: DiskLayout, sysroot: Path, esp: Path, image: Path) -> None:
    with open(image, "wb") as f:
        f.truncate(layout.size)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", image], input=_script(layout))
    root = layout.root
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            root.name,
            "-U",
            root.uuid,
            "-d",
            sysroot,
            "-E",
            f"offset={root.start},root_owner=0:0",
            image,
            f"{root.size // 1024}k",
        ]
    )
    # The ESP is built as its own file and copied in: mtools misreads a FAT
    # that mkfs.fat wrote at an offset into a larger file.
    part = layout.esp
    esp_image = image.with_name("esp.img")
    run(
        [
            "mkfs.vfat",
            "-C",
            "-F",
            "32",
            "-n",
            part.name,
            "-i",
            part.uuid.replace("-", "")[:8],
            esp_image,
            str(part.size // 1024),
        ]
    )
    contents = sorted(esp.iterdir())
    run(
        ["mcopy", "-s", "-i", esp_image, *contents, "::/"],
        env={"MTOOLS_SKIP_CHECK": "1"},
    )
    _copy_into(esp_image, image, part.start)
    esp_image.unlink()


def _copy_into(source: Path, image: Path, offset: int) -> None:
    with open(source, "rb") as src, open(image, "r+b") as dst:
        dst.seek(offset)
        shutil.copyfileobj(src, dst, length=4 * MIB)


def _script(layout: DiskLayout) -> bytes:
    return layout.sfdisk_script().encode()


def _tree_bytes(root: Path) -> int:
    """Disk usage of a tree, each hard-linked inode once (ostree links objects)."""
    seen: set[int] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def _remove_work(work: Path) -> None:
    # ostree marks each deployment's root immutable (chattr +i).
    deploy_dirs = list(work.glob("sysroot/ostree/deploy/*/deploy/*.[0-9]*"))
    dirs = [d for d in deploy_dirs if d.is_dir()]
    if dirs:
        run(["chattr", "-i", *dirs], check=False)
    shutil.rmtree(work, ignore_errors=True)

"""Slim an unpacked root: SBOM first, then remove what a container host never runs.

Docs, man pages and locales never reach the disk (dpkg path filters, see
:mod:`atoll.compose.plan`). What is left to do here:

* record the SBOM (every package with its version, from dpkg's database)
  *before* dpkg itself goes, into ``/usr/share/atoll/sbom.json``; packages
  whose files are removed below stay in it, marked ``"removed"``;
* remove the files of ``[strip] remove`` packages and, with
  ``package_manager``, of dpkg, apt and debconf, plus their databases. A file
  that another, kept package also ships stays;
* keep only ``[kernel] modules_keep`` modules (then ``depmod``);
* do at compose time the work systemd would otherwise do at every first boot
  (:func:`settle_first_boot`): the linker cache, system users, the journal
  catalog, kmod's static device nodes, and the ``/etc/.updated`` and
  ``/var/.updated`` stamps that tell ``ConditionNeedsUpdate=`` units it is done
  (``docs/boot.md``, "First boot, unit by unit");
* check the result: every ELF program and library left must still find each
  library it needs (``DT_NEEDED``) and its interpreter, so removing a package
  can never leave a binary that fails at run time. A miss fails the compose,
  naming the binary and the library.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from atoll.durable import write_atomic
from atoll.errors import AtollError
from atoll.manifest.model import Manifest
from atoll.process import run

SBOM_PATH = "usr/share/atoll/sbom.json"
SBOM_FORMAT = "atoll-sbom/1"
PACKAGE_MANAGER = ("dpkg", "apt", "debconf")
# Merged /usr: dpkg's file lists may name either spelling of the same file.
_USR_ALIASES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_PACKAGE_MANAGER_STATE = (
    "var/lib/dpkg",
    "var/lib/apt",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log/apt",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "etc/apt",
    "etc/dpkg",
    "etc/debconf.conf",
)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    source: str
    installed_size_kib: int


def read_packages(root: Path) -> list[Package]:
    """Installed packages from the image's dpkg database, sorted by name."""
    status = root / "var/lib/dpkg/status"
    if not status.exists():
        raise AtollError(f"{status}: no dpkg database; was this tree built by mmdebstrap?")
    packages = []
    for stanza in status.read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in {" ", "\t"} or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key] = value.strip()
        if "Package" not in fields or not fields.get("Status", "").endswith(" installed"):
            continue
        packages.append(
            Package(
                name=fields["Package"],
                version=fields.get("Version", ""),
                architecture=fields.get("Architecture", ""),
                source=fields.get("Source", fields["Package"]).split(" ")[0],
                installed_size_kib=int(fields.get("Installed-Size", "0") or 0),
            )
        )
    return sorted(packages, key=lambda p: p.name)


def slim(root: Path, manifest: Manifest) -> dict[str, object]:
    """Slim ``root`` in place; return the SBOM (also written into the image)."""
    packages = read_packages(root)
    names = {p.name for p in packages}
    remove = {name for name in manifest.strip.remove if name in names}
    if manifest.strip.package_manager:
        remove.update(name for name in PACKAGE_MANAGER if name in names)
    libraries_before = library_names(root)
    owned = {p.name: _package_files(root, p) for p in packages}
    keep_files = {path for name, files in owned.items() if name not in remove for path in files}
    for name in sorted(remove):
        _remove_files(root, owned[name] - keep_files)
    if manifest.strip.package_manager:
        for relative in _PACKAGE_MANAGER_STATE:
            _remove_path(root / relative)
    for pattern in manifest.strip.paths:
        for match in sorted(root.glob(pattern.lstrip("/"))):
            _remove_path(match)
    if manifest.kernel.modules_keep:
        keep_modules(root, manifest.kernel.modules_keep)
    check_libraries(root, libraries_before)
    settle_first_boot(root)
    sbom: dict[str, object] = {
        "format": SBOM_FORMAT,
        "image": {"name": manifest.image.name, "version": manifest.image.version},
        "distribution": {
            "suite": manifest.distribution.suite,
            "architecture": manifest.distribution.architecture,
        },
        "packages": [
            {
                "name": p.name,
                "version": p.version,
                "architecture": p.architecture,
                "source": p.source,
                "state": "removed" if p.name in remove else "installed",
            }
            for p in packages
        ],
    }
    target = root / SBOM_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(sbom, indent=1, sort_keys=True) + "\n")
    target.chmod(0o644)
    return sbom


def _canonical(path: str) -> str:
    parts = PurePosixPath(path).parts
    if len(parts) > 1 and parts[1] in _USR_ALIASES:
        return str(PurePosixPath("/usr", *parts[1:]))
    return path


def _package_files(root: Path, package: Package) -> set[str]:
    info = root / "var/lib/dpkg/info"
    for candidate in (f"{package.name}:{package.architecture}.list", f"{package.name}.list"):
        listing = info / candidate
        if listing.exists():
            return {_canonical(line) for line in listing.read_text().splitlines() if line}
    return set()


def _remove_files(root: Path, paths: set[str]) -> None:
    directories = []
    for path in sorted(paths):
        target = root / path.lstrip("/")
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            directories.append(target)
    # Deepest first; only directories the removed packages leave empty.
    for directory in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        if directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir()):
            directory.rmdir()


def _remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def keep_modules(root: Path, patterns: tuple[str, ...]) -> None:
    """Delete kernel modules outside ``patterns`` and their dependencies; rebuild the index.

    A kept module's dependencies (from the kernel's own ``modules.dep``) are
    kept too, so ``modprobe`` of anything kept always works.
    """
    for moddir in sorted((root / "usr/lib/modules").iterdir()):
        depfile = moddir / "modules.dep"
        deps: dict[str, list[str]] = {}
        if depfile.exists():
            for line in depfile.read_text().splitlines():
                module, _, needs = line.partition(":")
                deps[module] = needs.split()
        modules = [m.relative_to(moddir).as_posix() for m in moddir.rglob("*.ko*")]
        keep = {m for m in modules if _module_matches(m, patterns)}
        pending = list(keep)
        while pending:
            for dependency in deps.get(pending.pop(), []):
                if dependency not in keep:
                    keep.add(dependency)
                    pending.append(dependency)
        for module in modules:
            if module not in keep:
                (moddir / module).unlink()
        run(["depmod", "-b", root, moddir.name])


# How Debian's kernels ship a module: plain (bookworm) or compressed (trixie's .ko.xz).
_MODULE_SUFFIXES = (".xz", ".zst", ".gz")


def _module_matches(module: str, patterns: tuple[str, ...]) -> bool:
    """``module`` (a path below the modules directory) is kept by a pattern: a directory,
    a glob, or a ``.ko`` file that also names its compressed form (``veth.ko`` keeps
    ``veth.ko.xz``), so one manifest serves kernels that compress modules and those that
    do not."""
    plain = module
    for suffix in _MODULE_SUFFIXES:
        plain = plain.removesuffix(suffix)
    return any(
        fnmatch.fnmatch(module, p)
        or fnmatch.fnmatch(plain, p)
        or module.startswith(p.rstrip("/") + "/")
        for p in patterns
    )


# --- first-boot work done at compose time ---------------------------------

# kmod-static-nodes.service writes /run/tmpfiles.d/static-nodes.conf at every
# boot; the same file under /usr/lib is what it would write (a file of the same
# name in /run takes precedence, so the unit, if left enabled, changes nothing).
STATIC_NODES = "usr/lib/tmpfiles.d/static-nodes.conf"
# What systemd-update-done writes: ConditionNeedsUpdate=/etc and =/var are
# false while the stamp is not older than /usr. ostree gives /usr the mtime 0,
# so any stamp will do. ostree carries /var's copy (shape's factory) but never
# a .updated into a deployment's /etc: atoll disk copies that one.
UPDATED_STAMP = """\
# Written by atoll compose: what ConditionNeedsUpdate= units do at first boot
# (linker cache, system users, journal catalog, hardware database) was done
# when the image was composed. See man:systemd-update-done.service(8).
TIMESTAMP_NSEC=000000000
"""
# systemd-update-done must see /var/.updated, which systemd-tmpfiles-setup
# copies into a fresh /var (compose's factory copy of /var, atoll.compose.shape).
UPDATE_DONE_DROPIN = "usr/lib/systemd/system/systemd-update-done.service.d/50-atoll.conf"
UPDATE_DONE_ORDER = """\
# Written by atoll compose: /var/.updated is copied into a fresh /var by
# systemd-tmpfiles-setup; decide whether /var needs an update after that.
[Unit]
After=systemd-tmpfiles-setup.service
"""
# systemd-tmpfiles-setup-dev-early creates /dev's static nodes, skipping lines
# whose user or group does not exist yet (--graceful); systemd-tmpfiles-setup-dev
# runs the same lines again after systemd-sysusers. When sysusers does not run
# (its conditions, copied here) no account can have appeared in between: the
# second pass would repeat the first. Only with an -early unit (systemd >= 254):
# bookworm's systemd-tmpfiles-setup-dev is the one and only pass.
DEV_NODES_EARLY = "usr/lib/systemd/system/systemd-tmpfiles-setup-dev-early.service"
DEV_NODES_DROPIN = "usr/lib/systemd/system/systemd-tmpfiles-setup-dev.service.d/50-atoll.conf"
DEV_NODES_CONDITION = """\
# Written by atoll compose: a second pass over /dev only when systemd-sysusers
# runs (the same conditions), i.e. when an account may have appeared since
# systemd-tmpfiles-setup-dev-early.service.
[Unit]
ConditionNeedsUpdate=|/etc
ConditionCredential=|sysusers.extra
"""
_DROP_INS = ((UPDATE_DONE_DROPIN, UPDATE_DONE_ORDER), (DEV_NODES_DROPIN, DEV_NODES_CONDITION))
LDCONFIG_AUX_CACHE = "var/cache/ldconfig/aux-cache"
# Programs of the image run in it (chroot) when it has them: (program, argv).
_FIRST_BOOT_TOOLS = (
    ("usr/sbin/ldconfig", ["/usr/sbin/ldconfig", "-X"]),  # ldconfig.service
    ("usr/bin/systemd-sysusers", ["/usr/bin/systemd-sysusers"]),  # systemd-sysusers.service
    ("usr/bin/journalctl", ["/usr/bin/journalctl", "--update-catalog"]),  # ...-catalog-update
)


def static_nodes_tmpfiles(devname: str) -> str:
    """``kmod static-nodes --format=tmpfiles`` of a ``modules.devname`` text.

    Each ``module devname cMAJ:MIN`` line becomes ``c! /dev/devname 0600 - - - MAJ:MIN``,
    preceded by a ``d`` line for a devname in a subdirectory (``net/tun``).
    """
    lines: list[str] = []
    for line in devname.splitlines():
        fields = line.split()
        if len(fields) != 3 or line.startswith("#"):
            continue
        _module, name, number = fields
        kind, numbers = number[:1], number[1:]
        if kind not in {"c", "b"} or ":" not in numbers:
            continue
        if "/" in name:
            lines.append(f"d /dev/{name.rsplit('/', 1)[0]} 0755 - - -")
        lines.append(f"{kind}! /dev/{name} 0600 - - - {numbers}")
    return "".join(f"{line}\n" for line in lines)


def settle_first_boot(root: Path) -> None:
    """Do in the tree what systemd's first-boot units would do on the node, and say so.

    The linker cache (after the removals above), system users from
    ``sysusers.d``, the journal catalog (into ``/var``, which shape turns into a
    factory copy), kmod's static device nodes, then the ``.updated`` stamps
    that make ``ldconfig``, ``systemd-sysusers``, ``systemd-hwdb-update`` (its
    sources are stripped), ``systemd-journal-catalog-update`` and
    ``systemd-update-done`` skip themselves on the node, and the second pass of
    ``systemd-tmpfiles-setup-dev`` with them (:data:`DEV_NODES_CONDITION`).
    """
    for program, argv in _FIRST_BOOT_TOOLS:
        if (root / program).exists():
            run(["chroot", root, *argv])
    # ldconfig's own speed-up cache records inodes and ctimes: a different file at
    # every compose, so it goes (ldconfig makes a new one whenever it runs).
    _remove_path(root / LDCONFIG_AUX_CACHE)
    devnames = sorted((root / "usr/lib/modules").glob("*/modules.devname"))
    if devnames:
        lines = [static_nodes_tmpfiles(path.read_text()) for path in devnames]
        # One line per node even with two kernels in the tree (tmpfiles warns on duplicates).
        _write(root / STATIC_NODES, "".join(dict.fromkeys("".join(lines).splitlines(True))))
    for directory in ("etc", "var"):
        if (root / directory).is_dir():
            _write(root / directory / ".updated", UPDATED_STAMP)
    for dropin, text in _DROP_INS:
        if dropin == DEV_NODES_DROPIN and not (root / DEV_NODES_EARLY).exists():
            continue
        if (root / dropin).parent.with_suffix("").exists():  # the unit it changes
            _write(root / dropin, text)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, mode=0o644)


# --- ELF dependency check -------------------------------------------------

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NEEDED, _DT_STRTAB, _DT_RPATH, _DT_RUNPATH = 1, 5, 15, 29
_ET_EXEC, _ET_DYN = 2, 3


@dataclass(frozen=True)
class ElfLinks:
    interpreter: str | None
    needed: tuple[str, ...]
    search: tuple[str, ...]  # RPATH/RUNPATH entries


def read_elf_links(data: bytes) -> ElfLinks | None:
    """Interpreter, DT_NEEDED and run paths of a 64-bit little-endian ELF (else None)."""
    headers = _program_headers(data) if _is_program_or_library(data) else None
    if headers is None:
        return None
    if headers.dynamic is None:
        return ElfLinks(headers.interpreter, (), ())
    entries = _dynamic_entries(data, headers.dynamic)
    strtab_addr = next((v for t, v in entries if t == _DT_STRTAB), None)
    if strtab_addr is None:
        return ElfLinks(headers.interpreter, (), ())
    strtab = headers.file_offset(strtab_addr)
    if strtab is None:
        return None

    def string(at: int) -> str:
        end = data.index(b"\0", strtab + at)
        return data[strtab + at : end].decode(errors="replace")

    needed = tuple(string(v) for t, v in entries if t == _DT_NEEDED)
    search = tuple(
        part for t, v in entries if t in {_DT_RPATH, _DT_RUNPATH} for part in string(v).split(":")
    )
    return ElfLinks(headers.interpreter, needed, search)


def _is_program_or_library(data: bytes) -> bool:
    """A 64-bit little-endian ELF executable or shared object."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    return struct.unpack_from("<H", data, 16)[0] in {_ET_EXEC, _ET_DYN}


@dataclass(frozen=True)
class _ProgramHeaders:
    """What read_elf_links needs from an ELF file's program headers."""

    loads: tuple[tuple[int, int, int], ...]  # (virtual address, file offset, size) per PT_LOAD
    dynamic: tuple[int, int] | None  # (file offset, size) of PT_DYNAMIC
    interpreter: str | None  # PT_INTERP

    def file_offset(self, address: int) -> int | None:
        """Where the virtual ``address`` is in the file, if a loaded segment holds it."""
        return next(
            (
                offset + address - vaddr
                for vaddr, offset, size in self.loads
                if vaddr <= address < vaddr + size
            ),
            None,
        )


def _program_headers(data: bytes) -> _ProgramHeaders | None:
    """The loaded segments, the dynamic section and the interpreter; None if truncated."""
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    interpreter = None
    for i in range(phnum):
        offset = phoff + i * phentsize
        if offset + 56 > len(data):
            return None
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, offset
        )
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == _PT_INTERP:
            interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    return _ProgramHeaders(tuple(loads), dynamic, interpreter)


def _dynamic_entries(data: bytes, dynamic: tuple[int, int]) -> list[tuple[int, int]]:
    """(tag, value) of each dynamic section entry, up to DT_NULL."""
    entries: list[tuple[int, int]] = []
    start, size = dynamic
    for offset in range(start, min(start + size, len(data) - 15), 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == 0:
            break
        entries.append((tag, value))
    return entries


def library_names(root: Path) -> set[str]:
    """Names of every shared object (file or link) under the image's library trees."""
    names: set[str] = set()
    for top in ("usr/lib", "usr/lib64", "usr/lib32"):
        for _directory, _subdirs, files in os.walk(root / top):
            names.update(name for name in files if ".so" in name)
    return names


def check_libraries(root: Path, available_before: set[str] | None = None) -> None:
    """Fail if any ELF file left in ``root`` lost a library or its interpreter.

    Only losses count: a library that was already absent before slimming (an
    optional plugin's dependency that Debian merely recommends) is not ours
    to report. A library counts as present anywhere under ``/usr/lib``, which
    also covers private directories reached through a run path.
    """
    available = library_names(root)
    before = available if available_before is None else available_before
    problems: list[str] = []
    for directory, _subdirs, files in os.walk(root / "usr"):
        for name in files:
            path = Path(directory, name)
            if path.is_symlink() or name.endswith((".ko", ".ko.xz", ".ko.zst")):
                continue
            try:
                with path.open("rb") as f:
                    if f.read(4) != b"\x7fELF":
                        continue
                links = read_elf_links(path.read_bytes())
            except OSError:
                continue
            if links is None:
                continue
            shown = "/" + path.relative_to(root).as_posix()
            if links.interpreter and not _exists(root, links.interpreter):
                problems.append(f"{shown}: interpreter {links.interpreter} is missing")
            for library in links.needed:
                if library not in available and (library in before or available_before is None):
                    problems.append(f"{shown}: needs {library}, which is not in the image")
    if problems:
        shown_problems = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise AtollError(
            "slim: removing packages broke binaries ([strip] remove):\n  " + shown_problems + more
        )


def _exists(root: Path, path: str) -> bool:
    """Whether ``path`` exists inside ``root``, following symlinks within ``root``."""
    current = root
    parts = [p for p in PurePosixPath(path).parts if p != "/"]
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return False
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
                parts = [p for p in PurePosixPath(target).parts if p != "/"] + parts
            else:
                parts = [p for p in PurePosixPath(target).parts] + parts
            continue
        if part == "..":
            current = current.parent if current != root else root
            continue
        if not candidate.exists():
            return False
        current = candidate
    return True

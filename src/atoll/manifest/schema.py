"""The manifest schema: one table that drives parsing, validation, defaults and docs.

Every key a manifest may contain is declared here once, with its kind, its
default and a one-line description (after mkosi's ``SETTINGS`` list). The
loader checks structure against this table and fills absent keys from it; the
model's dataclasses take their defaults from it (:data:`DEFAULTS`); and unit
tests check that ``docs/manifest.md`` documents every key with the same
default, and that the model's fields and defaults are the table's, so neither
the reference nor the model can drift from it.

Defaults are written as a user would write them in TOML (lists as tuples, so
the table stays immutable); :func:`model_value` turns a value of a key into
what the model holds (file modes as integers, paths as :class:`Path`, choices
of an enum as its member). Arrays of tables and tables of strings default to
empty.

Merge rules for ``extends`` are declared per kind (see ``Kind``): tables merge
key by key, scalars are replaced by the child, lists of names are unions
(parent first), lists of tables are concatenated with the child's entry
replacing the parent's entry of the same identity (``identity``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class InitStrategy(StrEnum):
    """How the kernel gets from the physical root to systemd in the deployment."""

    # atoll's static PID-1 step: no initramfs; root driver and fs built into the kernel.
    PREPARE_ROOT = "atoll-prepare-root"
    # A conventional initramfs (initramfs-tools); for baselines and odd kernels.
    INITRAMFS = "initramfs"


class Kind(StrEnum):
    STR = "string"
    INT = "integer"
    BOOL = "boolean"
    PATH = "path"  # a string naming a file on the build machine, relative to its manifest
    MODE = "file mode"  # "0644" or 0o644
    ENUM = "one of"
    STR_LIST = "list of strings"
    STR_MAP = "table of strings"
    TABLE = "table"
    TABLE_LIST = "array of tables"


@dataclass(frozen=True)
class Key:
    kind: Kind
    doc: str
    default: object = None  # None: no default (required, or absent means None)
    required: bool = False
    choices: tuple[str, ...] = ()
    keys: Mapping[str, Key] = field(default_factory=dict)  # TABLE, TABLE_LIST items
    identity: str = ""  # TABLE_LIST: the key that identifies an entry across extends
    # STR: free text written as is into a file of its own (control characters and a
    # length up to the manifest's size allowed); every other string is one line.
    multiline: bool = False


# The ops shell's toolbox (``atoll node shell``): what atoll builds unless a site
# names its own archive. The host's ostree and ctr are reached through wrappers
# (:mod:`atoll.compose.toolbox`), so they are not among these packages.
TOOLBOX_REFERENCE = "localhost/atoll/toolbox:1"
TOOLBOX_PACKAGES = (
    "bash",
    "procps",
    "psmisc",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "strace",
    "lsof",
    "less",
)


def _table(doc: str, keys: Mapping[str, Key], *, required: bool = False) -> Key:
    return Key(Kind.TABLE, doc, keys=keys, required=required)


SCHEMA: Mapping[str, Key] = {
    "extends": Key(Kind.PATH, "Another manifest this one builds on, relative to this file."),
    "image": _table(
        "What the image is called and which version it is.",
        {
            "name": Key(
                Kind.STR, "Image name; the ostree ref is atoll/<arch>/<name>.", required=True
            ),
            "version": Key(Kind.STR, "Image version, recorded in the commit.", required=True),
            "description": Key(Kind.STR, "Free text.", default=""),
        },
        required=True,
    ),
    "distribution": _table(
        "Which Debian release and mirrors packages come from.",
        {
            "suite": Key(Kind.STR, "Debian suite (codename).", default="trixie"),
            "architecture": Key(
                Kind.ENUM, "Debian architecture.", default="amd64", choices=("amd64", "arm64")
            ),
            "mirror": Key(Kind.STR, "Debian mirror URL.", default="http://deb.debian.org/debian"),
            "security_mirror": Key(
                Kind.STR,
                "Security mirror URL.",
                default="http://deb.debian.org/debian-security",
            ),
            "components": Key(Kind.STR_LIST, "Archive components.", default=("main",)),
            "updates": Key(
                Kind.BOOL, "Also use <suite>-updates and <suite>-security.", default=True
            ),
        },
    ),
    "packages": _table(
        "Packages to install and packages that must never be installed.",
        {
            "include": Key(
                Kind.STR_LIST, "Packages to install (with their dependencies).", default=()
            ),
            "exclude": Key(
                Kind.STR_LIST,
                "Packages that must never be installed; a dependency on one fails the build.",
                default=(),
            ),
        },
    ),
    "kernel": _table(
        "The kernel and its command line.",
        {
            "package": Key(Kind.STR, "Kernel package.", default="linux-image-cloud-amd64"),
            "arguments": Key(Kind.STR_LIST, "Kernel command-line arguments.", default=()),
            "modules_keep": Key(
                Kind.STR_LIST,
                "Module paths to keep (globs under /usr/lib/modules/<kver>/); empty keeps all.",
                default=(),
            ),
        },
    ),
    "init": _table(
        "How the kernel reaches systemd.",
        {
            "strategy": Key(
                Kind.ENUM,
                "atoll-prepare-root (no initramfs) or initramfs.",
                default=InitStrategy.PREPARE_ROOT,
                choices=tuple(str(s) for s in InitStrategy),
            ),
        },
    ),
    "containers": _table(
        "The container runtime and images preloaded into it.",
        {
            "runtime": Key(Kind.BOOL, "Install containerd with crun.", default=True),
            "preload": Key(
                Kind.TABLE_LIST,
                "Container images imported for containerd, from local OCI archives.",
                default=(),
                identity="reference",
                keys={
                    "archive": Key(Kind.PATH, "OCI image archive (tar).", required=True),
                    "reference": Key(
                        Kind.STR,
                        "Image reference, e.g. docker.io/library/busybox:1.36.",
                        required=True,
                    ),
                },
            ),
        },
    ),
    "files": Key(
        Kind.TABLE_LIST,
        "Files added to the image.",
        default=(),
        identity="path",
        keys={
            "path": Key(Kind.STR, "Absolute path inside the image.", required=True),
            "source": Key(Kind.PATH, "File on the build machine (or use content)."),
            "content": Key(Kind.STR, "Inline content (or use source).", multiline=True),
            "mode": Key(Kind.MODE, 'Permission bits, e.g. "0644".', default="0644"),
            "owner": Key(Kind.STR, "Owning user.", default="root"),
            "group": Key(Kind.STR, "Owning group.", default="root"),
        },
    ),
    "units": _table(
        "systemd units to enable, disable and mask.",
        {
            "enable": Key(Kind.STR_LIST, "Units to enable.", default=()),
            "disable": Key(Kind.STR_LIST, "Units to disable.", default=()),
            "mask": Key(Kind.STR_LIST, "Units to mask.", default=()),
        },
    ),
    "users": Key(
        Kind.TABLE_LIST,
        "System users to create.",
        default=(),
        identity="name",
        keys={
            "name": Key(Kind.STR, "User name.", required=True),
            "uid": Key(Kind.INT, "User id; allocated when absent."),
            "group": Key(Kind.STR, "Primary group; a group of the user's name when absent."),
            "groups": Key(Kind.STR_LIST, "Supplementary groups.", default=()),
            "shell": Key(Kind.STR, "Login shell.", default="/usr/sbin/nologin"),
            "home": Key(Kind.STR, "Home directory."),
            "system": Key(Kind.BOOL, "A system account.", default=True),
        },
    ),
    "groups": Key(
        Kind.TABLE_LIST,
        "Groups to create.",
        default=(),
        identity="name",
        keys={
            "name": Key(Kind.STR, "Group name.", required=True),
            "gid": Key(Kind.INT, "Group id; allocated when absent."),
            "system": Key(Kind.BOOL, "A system group.", default=True),
        },
    ),
    "sysctl": Key(
        Kind.STR_MAP, "Kernel parameters, written to /usr/lib/sysctl.d/60-atoll.conf.", default=()
    ),
    "strip": _table(
        "What is removed from the image after installation.",
        {
            "docs": Key(
                Kind.BOOL, "Remove /usr/share/doc (copyright files are kept).", default=True
            ),
            "man": Key(Kind.BOOL, "Remove manual pages and info files.", default=True),
            "locales": Key(Kind.BOOL, "Remove locales not in keep_locales.", default=True),
            "keep_locales": Key(Kind.STR_LIST, "Locales to keep.", default=("C.UTF-8",)),
            "package_manager": Key(Kind.BOOL, "Remove apt and dpkg.", default=True),
            "remove": Key(
                Kind.STR_LIST,
                "Installed packages not needed at run time whose files are removed.",
                default=(),
            ),
            "paths": Key(
                Kind.STR_LIST,
                "Absolute paths or globs inside the image removed after installation.",
                default=(),
            ),
        },
    ),
    "kubernetes": _table(
        "The Kubernetes node components: the kubelet atoll builds (atoll cluster build).",
        {
            # No default: an image without the table has no kubelet; a table
            # without a version is refused (the loader says so).
            "version": Key(
                Kind.STR, "The Kubernetes release; must be the one kubernetes/go.mod pins."
            ),
        },
    ),
    "agent": _table(
        "The atoll agent (the node's API).",
        {
            "include": Key(Kind.BOOL, "Install the atoll agent.", default=True),
            "toolbox": Key(
                Kind.STR,
                "Image reference of the ops shell's toolbox; empty: no ops shell.",
                default=TOOLBOX_REFERENCE,
            ),
            "toolbox_packages": Key(
                Kind.STR_LIST,
                "Debian packages atoll builds the toolbox from (the suite of [distribution]).",
                default=TOOLBOX_PACKAGES,
            ),
            "toolbox_archive": Key(
                Kind.PATH,
                "A site's own toolbox: an OCI image archive used instead of building one.",
            ),
        },
    ),
}


def all_key_paths(schema: Mapping[str, Key] = SCHEMA, prefix: str = "") -> list[str]:
    """Every key as a dotted path (``packages.include``), for docs and tests."""
    return [path for path, _ in walk(schema, prefix)]


def walk(schema: Mapping[str, Key] = SCHEMA, prefix: str = "") -> Iterator[tuple[str, Key]]:
    """Every key with its dotted path, tables before the keys they hold."""
    for name, key in schema.items():
        path = f"{prefix}{name}"
        yield path, key
        if key.keys:
            yield from walk(key.keys, f"{path}.")


def parse_mode(value: object) -> int | None:
    """A file mode as a manifest may write it (``"0644"`` or ``0o644``); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0o7777 else None
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    return None


def model_value(key: Key, value: Any) -> Any:
    """A checked value of ``key`` as the model holds it (None stays None).

    Lists become tuples, file modes integers, paths :class:`Path`, and a choice
    of a key whose default is an enum member becomes that enum's member.
    """
    if value is None:
        return None
    match key.kind:
        case Kind.STR_LIST:
            return tuple(value)
        case Kind.MODE:
            return parse_mode(value)
        case Kind.PATH:
            return Path(value)
        case Kind.ENUM if isinstance(key.default, StrEnum):
            return type(key.default)(value)
    return value


# The default of every key as the model holds it, by dotted path ("distribution.suite").
# The model's dataclasses take their defaults from here and the loader fills absent keys
# from it; tables have none (their dataclass is the default).
DEFAULTS: Mapping[str, Any] = {
    path: model_value(key, key.default) for path, key in walk() if key.kind is not Kind.TABLE
}

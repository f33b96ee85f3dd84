"""Node settings: one typed model, validated as a whole, rendered into /etc atomically.

The model is a flat table of dotted keys (``FIELDS``) so the API, the CLI
(``settings set network.ntp.servers='["a","b"]'``) and the docs share one list.
A change is a mapping of keys to new values; it is merged onto the current
settings and the *whole* result is validated before anything is written, so a
bad value costs nothing (the error names the key).

Applying is plan-then-apply: :func:`render` is pure (settings -> file contents
relative to the root, plus the units to restart); :meth:`SettingsStore.set`
writes only the files whose content changed (:func:`atoll.durable.write_atomic`:
temporary file, fsync, rename, fsync of the directory), removes files the old
settings rendered and the new ones do not, then restarts the dependent units
through an injected command runner. If a write or a restart fails, every file
is put back to its previous content and the units are restarted again, so the
node never keeps half a change. ``/etc/atoll/settings.json`` is the source of
truth; since ``/etc`` is three-way merged by ostree, settings survive upgrades.

Values end up in line-oriented files (``/etc/hostname``, ``sysctl.d``, systemd
drop-ins, containerd's TOML), so every string is printable ASCII and every
pattern must match the *whole* value: no newline, quote or control character
can add a line or a key of its own.

Standard library only (runs on the node). ``root`` is ``/`` on a node and a
temporary directory in tests.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.durable import sync_directory, write_atomic

Runner = Callable[[Sequence[str]], None]
"""Runs one command (argv); raises on failure. The daemon passes a subprocess runner."""

# Every pattern is matched against the whole value (fullmatch) and in ASCII only:
# `$` let a trailing newline through and `\d` took any script's digits, and these
# values end up in line-oriented files (/etc/hostname, sysctl.d, drop-ins, TOML).
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*", re.ASCII)
_SYSCTL = re.compile(r"[a-z0-9_]+(\.[a-z0-9_-]+)+", re.ASCII)
_SYSCTL_VALUE = re.compile(r"[ -~]{0,4096}", re.ASCII)  # printable ASCII, spaces included
_KARG = re.compile(r"[A-Za-z0-9_.,:/=+-]+", re.ASCII)
_CHANNEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
_DAY = r"(mon|tue|wed|thu|fri|sat|sun)"
_WINDOW = re.compile(
    rf"(?P<days>{_DAY}(,{_DAY})*|daily) "
    r"(?P<start>[01][0-9]|2[0-3]):[0-5][0-9]-(?P<end>[01][0-9]|2[0-3]):[0-5][0-9]",
    re.ASCII,
)
_REGISTRY = re.compile(rf"{_LABEL}(\.{_LABEL})*(:[0-9]{{1,5}})?", re.ASCII)
_SCOPED_IP = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]{1,15})?", re.ASCII)
# RFC 3986's characters only: no space, quote, backslash or control character.
_URL = re.compile(
    r"https?://(?P<host>[^/:]+|\[[0-9a-f:]+\])(:[0-9]{1,5})?"
    r"(/[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*)?",
    re.ASCII,
)
_PRINTABLE = re.compile(r"[ -~]*", re.ASCII)
MAX_HOSTNAME = 64  # the kernel's HOST_NAME_MAX
MAX_FQDN = 253
MAX_URL = 2048
_SHOWN = 80  # characters of a refused value quoted in a message


class SettingsError(ValueError):
    """Invalid settings; ``problems`` are ``key: message`` lines (the first names the field)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ApplyError(RuntimeError):
    """Writing or restarting failed; the previous settings were restored."""


def _quoted(text: str) -> str:
    """``text`` quoted for a message: escaped (a newline shows as ``\\n``), clipped."""
    return repr(text[:_SHOWN]) + ("..." if len(text) > _SHOWN else "")


def _shown(text: str) -> str:
    """A name for a message: as it is when printable and short, else quoted."""
    return text if len(text) <= _SHOWN and _PRINTABLE.fullmatch(text) else _quoted(text)


def _ip(value: str) -> bool:
    if not _SCOPED_IP.fullmatch(value):
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _host_or_ip(value: str) -> bool:
    return _ip(value) or (bool(_HOSTNAME.fullmatch(value)) and len(value) <= MAX_FQDN)


def _hostname(value: str) -> bool:
    return bool(_HOSTNAME.fullmatch(value)) and len(value) <= MAX_HOSTNAME


def _url(value: str) -> bool:
    m = _URL.fullmatch(value)
    return m is not None and len(value) <= MAX_URL and _host_or_ip(m.group("host").strip("[]"))


def _check_str(key: str, value: Any, ok: Callable[[str], bool], what: str) -> list[str]:
    if not isinstance(value, str):
        return [f"{key}: expected a string, got {type(value).__name__}"]
    if _PRINTABLE.fullmatch(value) and ok(value):
        return []
    return [f"{key}: {_quoted(value)} is not {what}"]


def _check_list(key: str, value: Any, ok: Callable[[str], bool], what: str, most: int) -> list[str]:
    if not isinstance(value, list):
        return [f"{key}: expected a list of strings, got {type(value).__name__}"]
    if len(value) > most:
        return [f"{key}: at most {most} entries, got {len(value)}"]
    problems = []
    for i, item in enumerate(value):
        problems += _check_str(f"{key}[{i}]", item, ok, what)
    if not problems and len(set(value)) != len(value):
        problems.append(f"{key}: duplicate entries")
    return problems


def _sysctl_value(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    return isinstance(value, str) and bool(_SYSCTL_VALUE.fullmatch(value))


# Operators (below admin) change settings; the root shell is admin-only. So no setting
# may make the kernel run a program of the operator's choosing, or change who may run or
# load code: each of these is root code execution by another path (docs/agent.md).
_ROOT_SYSCTLS = frozenset(
    {
        "kernel.core_pattern",  # "|/bin/sh ..." runs a program as root on every crash
        "kernel.modprobe",  # the program the kernel runs to load a module
        "kernel.hotplug",  # the uevent helper, run by the kernel on every device event
        "kernel.poweroff_cmd",  # run by the kernel on an orderly power-off
        "kernel.usermodehelper",  # .bset/.inheritable: the capabilities helpers run with
        "fs.binfmt_misc",  # registers interpreters the kernel runs for matching files
    }
)
# Kernel arguments (their name, before "=", with "-" read as "_" as systemd reads them)
# that choose the program PID 1 or the initramfs runs, a shell, the root file system, or
# switch off the security modules.
_ROOT_KARGS = frozenset(
    {
        "init", "rdinit", "root", "rootflags", "rootfstype", "ostree",
        "single", "emergency", "rescue", "s", "1", "_b", "_s", "__",
        "security", "lsm", "selinux", "enforcing", "apparmor", "lockdown",
        "module.sig_enforce",
    }
)  # fmt: skip
_ROOT_KARG_PREFIXES = (
    "rd.",  # everything the initramfs reads, rd.break and rd.shell included
    "systemd.",  # debug_shell, unit, run, setenv, confirm_spawn, crash_shell, mask, wants...
    "mount.usr",
)


def root_sysctl(name: str) -> bool:
    """Whether setting sysctl ``name`` makes the kernel run a program (or says who may)."""
    normal = name.replace("/", ".")
    return any(normal == n or normal.startswith(n + ".") for n in _ROOT_SYSCTLS)


def root_karg(arg: str) -> bool:
    """Whether kernel argument ``arg`` picks what runs as root at boot, or disarms a guard.

    A name with a capital letter is refused too: the kernel hands arguments it does not
    know to init as environment variables (``LD_PRELOAD=...``).
    """
    name = arg.split("=", 1)[0]
    normal = name.replace("-", "_")
    return normal in _ROOT_KARGS or normal.startswith(_ROOT_KARG_PREFIXES) or name != name.lower()


def _check_kargs(key: str, value: Any) -> list[str]:
    problems = _check_list(key, value, lambda s: bool(_KARG.fullmatch(s)), "a kernel argument", 32)
    if problems:
        return problems
    return [
        f"{key}[{i}]: {_quoted(arg)} is refused: it chooses what runs as root "
        "(operators cannot gain root through settings)"
        for i, arg in enumerate(value)
        if root_karg(arg)
    ]


def _check_sysctls(key: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f"{key}: expected an object of name -> value, got {type(value).__name__}"]
    problems = []
    for name, v in value.items():
        if not _SYSCTL.fullmatch(name):
            problems.append(f"{key}.{_shown(name)}: not a sysctl name")
        elif root_sysctl(name):
            problems.append(
                f"{key}.{name}: refused: it makes the kernel run a program or says who may "
                "(operators cannot gain root through settings)"
            )
        elif not _sysctl_value(v):
            problems.append(
                f"{key}.{name}: expected a 64-bit integer or up to 4096 printable ASCII characters"
            )
    return problems


def _check_mirrors(key: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f"{key}: expected an object of registry -> [mirror URLs]"]
    problems = []
    for registry, mirrors in value.items():
        if not _REGISTRY.fullmatch(registry) or len(registry) > MAX_FQDN:
            problems.append(f"{key}.{_shown(registry)}: not a registry host name")
        else:
            problems += _check_list(f"{key}.{registry}", mirrors, _url, "an http(s) URL", 8)
    return problems


@dataclass(frozen=True)
class Field:
    key: str
    default: Any
    check: Callable[[str, Any], list[str]]
    doc: str


FIELDS: tuple[Field, ...] = (
    Field(
        "hostname",
        "atoll",
        lambda k, v: _check_str(k, v, _hostname, "a host name"),
        "the node's host name (lower case, at most 64 characters)",
    ),
    Field(
        "network.ntp.servers",
        [],
        lambda k, v: _check_list(k, v, _host_or_ip, "a host name or IP", 8),
        "NTP servers for systemd-timesyncd (empty: the distribution's defaults)",
    ),
    Field(
        "network.dns.servers",
        [],
        lambda k, v: _check_list(k, v, _ip, "an IP address", 8),
        "DNS resolvers for systemd-resolved (IP addresses)",
    ),
    Field("kernel.sysctls", {}, _check_sysctls, "sysctl name -> value, applied at once"),
    Field(
        "kernel.args",
        [],
        _check_kargs,
        "extra kernel arguments, taken into account by the next upgrade or deploy",
    ),
    Field(
        "containers.registry_mirrors",
        {},
        _check_mirrors,
        "registry -> mirror URLs (containerd hosts.toml)",
    ),
    Field(
        "updates.server",
        "",
        lambda k, v: _check_str(k, v, lambda s: s == "" or _url(s), "an http(s) URL"),
        "the update server's URL (atoll serve or any static web server; empty: none)",
    ),
    Field(
        "updates.channel",
        "stable",
        lambda k, v: _check_str(k, v, lambda s: bool(_CHANNEL.fullmatch(s)), "a channel name"),
        "the update channel followed",
    ),
    Field(
        "updates.maintenance_window",
        "",
        lambda k, v: _check_str(
            k,
            v,
            lambda s: s == "" or bool(_WINDOW.fullmatch(s)),
            "'daily HH:MM-HH:MM' or 'sat,sun …'",
        ),
        "when reboots are allowed, e.g. 'sat,sun 02:00-04:00' (empty: any time)",
    ),
    Field(
        "fleet.controller",
        "",
        lambda k, v: _check_str(
            k, v, lambda s: s == "" or all(_url(u) for u in s.split(",")), "an http(s) URL"
        ),
        "the fleet controller's URL, or its replicas' separated by commas "
        "(empty: not managed by a fleet)",
    ),
)
_BY_KEY = {f.key: f for f in FIELDS}


def defaults() -> dict[str, Any]:
    return {f.key: json.loads(json.dumps(f.default)) for f in FIELDS}


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a complete settings mapping; returns a normalised copy or raises."""
    problems = [f"{k}: unknown setting" for k in values if k not in _BY_KEY]
    problems += [f"{k}: missing" for k in _BY_KEY if k not in values]
    for key, value in values.items():
        if key in _BY_KEY:
            problems += _BY_KEY[key].check(key, value)
    if problems:
        raise SettingsError(problems)
    out = dict(values)
    out["kernel.sysctls"] = {k: str(v) for k, v in values["kernel.sysctls"].items()}
    return out


def merge(current: Mapping[str, Any], change: Mapping[str, Any]) -> dict[str, Any]:
    """The settings after ``change`` (validated as a whole)."""
    if not isinstance(change, Mapping) or not change:
        raise SettingsError(["settings: expected a non-empty object of key -> value"])
    unknown = [f"{k}: unknown setting" for k in change if k not in _BY_KEY]
    if unknown:
        raise SettingsError(unknown)
    return validate({**current, **change})


@dataclass(frozen=True)
class Rendering:
    files: dict[str, str]  # path relative to root -> content
    units: dict[str, tuple[str, ...]]  # path -> units to restart when it changes


def render(values: Mapping[str, Any]) -> Rendering:
    """Pure: the /etc files for these settings and which units depend on each."""
    files: dict[str, str] = {
        "etc/atoll/settings.json": json.dumps(values, indent=2, sort_keys=True) + "\n",
        "etc/hostname": values["hostname"] + "\n",
        "etc/atoll/kernel-args": " ".join(values["kernel.args"]) + "\n",
    }
    units: dict[str, tuple[str, ...]] = {"etc/hostname": ("systemd-hostnamed.service",)}
    if values["network.ntp.servers"]:
        path = "etc/systemd/timesyncd.conf.d/50-atoll.conf"
        files[path] = "[Time]\nNTP=" + " ".join(values["network.ntp.servers"]) + "\n"
        units[path] = ("systemd-timesyncd.service",)
    if values["network.dns.servers"]:
        path = "etc/systemd/resolved.conf.d/50-atoll.conf"
        files[path] = "[Resolve]\nDNS=" + " ".join(values["network.dns.servers"]) + "\n"
        units[path] = ("systemd-resolved.service",)
    if values["kernel.sysctls"]:
        path = "etc/sysctl.d/90-atoll.conf"
        files[path] = "".join(f"{k} = {v}\n" for k, v in sorted(values["kernel.sysctls"].items()))
        units[path] = ("systemd-sysctl.service",)
    for registry, mirrors in sorted(values["containers.registry_mirrors"].items()):
        path = f"etc/containerd/certs.d/{registry}/hosts.toml"
        # containerd re-reads hosts.toml on every pull: no restart needed.
        files[path] = f'server = "https://{registry}"\n' + "".join(
            f'\n[host."{m}"]\n  capabilities = ["pull", "resolve"]\n' for m in mirrors
        )
    return Rendering(files, units)


def _put(path: Path, content: bytes | None) -> None:
    """Write ``content`` to ``path`` atomically and durably, or remove it when None."""
    if content is not None:
        write_atomic(path, content, mode=0o644)
    elif path.exists():
        path.unlink()
        sync_directory(path.parent)


class SettingsStore:
    """The settings of one root: read, change (validated), apply (atomic, rolled back)."""

    def __init__(self, root: Path, runner: Runner) -> None:
        self.root = root
        self.runner = runner
        self.path = root / "etc/atoll/settings.json"
        # The API serves requests in threads: one change at a time, so two
        # changes neither lose each other's values nor share a temporary file.
        self._lock = threading.Lock()

    def _raw(self) -> dict[str, Any] | None:
        """settings.json as stored; None before the first change."""
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise SettingsError([f"{self.path}: unreadable ({e})"]) from e
        if not isinstance(raw, dict):
            raise SettingsError([f"{self.path}: expected a JSON object"])
        return raw

    def _stored(self) -> dict[str, Any] | None:
        """settings.json's known keys over the defaults, not validated; None before the first
        change. Keys this agent does not know (another agent version stored them) are left
        out: they are ignored, and the next change drops them from the file."""
        raw = self._raw()
        if raw is None:
            return None
        return {**defaults(), **{k: v for k, v in raw.items() if k in _BY_KEY}}

    def ignored(self) -> list[str]:
        """The keys in settings.json this agent does not know (and ignores)."""
        try:
            raw = self._raw()
        except SettingsError:
            return []
        # ASCII only, no control character: the list also goes into an answer's header.
        return sorted(
            k if len(k) <= _SHOWN and _PRINTABLE.fullmatch(k) else ascii(k[:_SHOWN])
            for k in (raw or {})
            if k not in _BY_KEY
        )

    def current(self) -> dict[str, Any]:
        """The settings in force; a :class:`SettingsError` naming settings.json if unusable."""
        stored = self._stored()
        if stored is None:
            return self._as_provisioned()
        try:
            return validate(stored)
        except SettingsError as e:
            raise SettingsError([f"{self.path}: {p}" for p in e.problems]) from e

    def _as_provisioned(self) -> dict[str, Any]:
        """The defaults, but with the host name first boot gave the node.

        Before the first change there is no settings.json; a change renders
        /etc/hostname from these values, and must not rename the node (its name
        is how the fleet controller knows it).
        """
        values = defaults()
        try:
            hostname = (self.root / "etc/hostname").read_text().strip()
            return validate({**values, "hostname": hostname})
        except (OSError, UnicodeDecodeError, SettingsError):
            return values

    def set(self, change: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, write and restart; on any failure restore the old files. Returns new values."""
        with self._lock:
            return self._set(change)

    def _set(self, change: Mapping[str, Any]) -> dict[str, Any]:
        stored = self._stored()
        old = self._as_provisioned() if stored is None else stored
        # The whole result is validated: a stored value an earlier agent let in and
        # this one refuses is named, and a change that replaces it goes through.
        new = merge(old, change)
        after = render(new)
        try:
            before = render(validate(old))
        except SettingsError:  # then files only the old values rendered are left in place
            before = Rendering({}, {})
        # Encoded before anything is written: a value that cannot be written fails here.
        contents = {rel: text.encode() for rel, text in after.files.items()}
        paths = sorted(set(before.files) | set(after.files))
        saved: dict[str, bytes | None] = {}
        for rel in paths:
            target = self.root / rel
            saved[rel] = target.read_bytes() if target.exists() else None
        changed = [rel for rel in paths if saved[rel] != contents.get(rel)]
        units = sorted(
            {u for rel in changed for u in {*before.units.get(rel, ()), *after.units.get(rel, ())}}
        )
        try:
            for rel in changed:
                _put(self.root / rel, contents.get(rel))
            for unit in units:
                self.runner(["systemctl", "try-restart", unit])
        except Exception as e:
            for rel in changed:
                _put(self.root / rel, saved[rel])
            for unit in units:
                # Best effort: the files are already restored; the first error is the one to report.
                with contextlib.suppress(Exception):
                    self.runner(["systemctl", "try-restart", unit])
            raise ApplyError(f"applying settings failed ({e}); previous settings restored") from e
        return new

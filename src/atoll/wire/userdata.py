"""First-boot user data: the TOML a node applies once, and what it may say.

Written by whoever creates the node (a file given to ``atoll disk
--user-data``, a config drive, qemu's fw_cfg); validated on the host before
any image is built (:mod:`atoll.disk.build`, :mod:`atoll.disk.configdrive`),
so a typo costs a second, not a build; applied on the node at first boot by
:mod:`atoll.agent.provision`. Both sides parse it here, into a frozen
:class:`UserData`; standard library only. Documented in ``docs/boot.md``::

    [node]
    hostname = "edge-1"
    [time]
    ntp = ["192.168.1.1", "pool.ntp.org"]
    [fleet]
    controller = "https://10.0.2.2:8443"  # several replicas: comma-separated
    labels = { zone = "a" }
    interval = 10
    [updates]
    server = "http://10.0.2.2:8080"
    channel = "stable"
    [credentials]                   # -> /etc/atoll/credentials/<name>, mode 0600
    "node.key" = "-----BEGIN PRIVATE KEY-----..."
    [[files]]                       # only under /etc or /var (/usr is read-only)
    path = "/etc/motd"
    content = "hello"
    mode = "0644"                   # optional, default 0644
    encoding = "utf-8"              # or "base64"
    [kubernetes]                    # join a cluster (needs [node].hostname: the Node's name)
    server = "https://10.0.2.100:6443"   # atoll cluster up: its join.json
    ca = "-----BEGIN CERTIFICATE-----..."
    token = "abcdef.0123456789abcdef"   # a bootstrap token, or a pre-issued client
    # certificate = "-----BEGIN CERTIFICATE-----..."   certificate and its key
    # key = "-----BEGIN EC PRIVATE KEY-----..."

Where a node finds it (the places are part of the format, first found wins):
qemu fw_cfg ``opt/atoll/user-data`` (:data:`FW_CFG_NAME`), a filesystem
labelled ``ATOLL-CONFIG`` holding ``user-data.toml``, or
``/var/lib/atoll/user-data.toml`` written into the disk by ``atoll disk``.
Every problem is reported at once, each naming the source and the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FW_CFG_NAME = "opt/atoll/user-data"
CONFIG_DRIVE_LABEL = "ATOLL-CONFIG"
CONFIG_DRIVE_FILE = "user-data.toml"
EMBEDDED_PATH = "var/lib/atoll/user-data.toml"

_HOSTNAME_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NTP_SERVER = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252})$")
_CONTROLLER = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(:\d+)?(/\S*)?$")
_WRITABLE_PREFIXES = ("/etc/", "/var/")
_SECTIONS = {"node", "time", "fleet", "updates", "credentials", "files", "kubernetes"}
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
_CHANNEL = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class UserDataError(ValueError):
    """User data that cannot be applied; every problem names the file and key."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = [f"{source}: {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ExtraFile:
    path: str  # absolute, under /etc or /var
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class KubernetesJoin:
    """How the node's kubelet joins a cluster: the API server, its CA, and either a
    bootstrap token (TLS bootstrapping: the kubelet asks for its certificate with a
    CSR) or a pre-issued client certificate and key. All of it already validated."""

    server: str  # https URL of the API server
    ca: str  # PEM: the cluster CA certificate(s), "\n" line ends
    token: str | None = None  # "<id>.<secret>", a bootstrap token
    certificate: str | None = None  # PEM: a client certificate (CN system:node:<host name>)
    key: str | None = None  # PEM: its private key


@dataclass(frozen=True)
class UserData:
    hostname: str | None = None
    ntp: tuple[str, ...] = ()
    controller: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    interval: float | None = None  # seconds between the agent's reports to the controller
    update_server: str | None = None
    channel: str | None = None
    credentials: tuple[tuple[str, bytes], ...] = ()
    files: tuple[ExtraFile, ...] = ()
    kubernetes: KubernetesJoin | None = None
    digest: str = ""  # sha256 of the raw TOML, for the record


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{key}: {message}")


def parse_user_data(raw: bytes, source: str) -> UserData:
    """Parse and validate user data; raise :class:`UserDataError` listing every problem."""
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserDataError(source, [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from e
    except tomllib.TOMLDecodeError as e:
        raise UserDataError(source, [f"not valid TOML: {e}"]) from e
    problems = _Problems()
    for key in sorted(set(doc) - _SECTIONS):
        problems.add(key, f"unknown key (known: {', '.join(sorted(_SECTIONS))})")
    hostname = _hostname(_table(doc, "node", problems, {"hostname"}), problems)
    ntp = _ntp(_table(doc, "time", problems, {"ntp"}), problems)
    fleet = _table(doc, "fleet", problems, {"controller", "labels", "interval"})
    controller = _controller(fleet, problems)
    labels, interval = _fleet_extras(fleet, problems)
    update_server, channel = _updates(
        _table(doc, "updates", problems, {"server", "channel"}), problems
    )
    credentials = _credentials(_table(doc, "credentials", problems, None), problems)
    files = _files(doc.get("files", []), problems)
    kubernetes = _kubernetes(
        _table(doc, "kubernetes", problems, _KUBERNETES_KEYS), "kubernetes" in doc, problems
    )
    if "kubernetes" in doc and hostname is None:
        problems.add(
            "[kubernetes]",
            "needs [node].hostname: it is the Node's name, the same across reboots and upgrades",
        )
    if problems.items:
        raise UserDataError(source, problems.items)
    return UserData(
        hostname=hostname,
        ntp=ntp,
        controller=controller,
        labels=labels,
        interval=interval,
        update_server=update_server,
        channel=channel,
        credentials=credentials,
        files=files,
        kubernetes=kubernetes,
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _table(
    doc: dict[str, Any], name: str, problems: _Problems, known: set[str] | None
) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, f"must be a table, not {type(value).__name__}")
        return {}
    if known is not None:
        for key in sorted(set(value) - known):
            problems.add(f"[{name}].{key}", f"unknown key (known: {', '.join(sorted(known))})")
    return value


def _hostname(node: dict[str, Any], problems: _Problems) -> str | None:
    value = node.get("hostname")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 253 or not value:
        problems.add("[node].hostname", f"{value!r} must be a string of 1-253 characters")
        return None
    for label in value.split("."):
        if not _HOSTNAME_LABEL.match(label):
            problems.add(
                "[node].hostname",
                f"{value!r} is not a valid hostname (lowercase letters, digits, '-', '.')",
            )
            return None
    return value


def _ntp(section: dict[str, Any], problems: _Problems) -> tuple[str, ...]:
    value = section.get("ntp", [])
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        problems.add("[time].ntp", f"{value!r} must be a list of server names")
        return ()
    for server in value:
        if not _NTP_SERVER.match(server):
            problems.add("[time].ntp", f"{server!r} is not a host name or address")
    return tuple(value)


def _fleet_extras(
    section: dict[str, Any], problems: _Problems
) -> tuple[tuple[tuple[str, str], ...], float | None]:
    labels = section.get("labels", {})
    found: list[tuple[str, str]] = []
    if not isinstance(labels, dict):
        problems.add("[fleet].labels", 'must be a table of name = "value"')
    else:
        for name, value in sorted(labels.items()):
            if not _LABEL.match(name) or not isinstance(value, str) or not _LABEL.match(value):
                problems.add(
                    f"[fleet].labels.{name}",
                    f"{value!r}: names and values are 1-63 of A-Z a-z 0-9 . _ / -",
                )
            else:
                found.append((name, value))
    interval = section.get("interval")
    if interval is not None and (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not 0.1 <= interval <= 3600
    ):
        problems.add("[fleet].interval", f"{interval!r} must be a number of seconds, 0.1-3600")
        interval = None
    return tuple(found), None if interval is None else float(interval)


def _updates(section: dict[str, Any], problems: _Problems) -> tuple[str | None, str | None]:
    server, channel = section.get("server"), section.get("channel")
    if server is not None and (not isinstance(server, str) or not _CONTROLLER.match(server)):
        problems.add("[updates].server", f"{server!r} must be an http:// or https:// URL")
        server = None
    if channel is not None and (not isinstance(channel, str) or not _CHANNEL.match(channel)):
        problems.add("[updates].channel", f"{channel!r} must be a channel name (a-z 0-9 . _ -)")
        channel = None
    return server, channel


def _controller(section: dict[str, Any], problems: _Problems) -> str | None:
    value = section.get("controller")
    if value is None:
        return None
    # Several controller replicas, comma-separated: the agent's client tries the
    # next one when one does not answer (atoll.wire.fleet.FleetClient).
    if not isinstance(value, str) or not all(_CONTROLLER.match(u) for u in value.split(",")):
        problems.add(
            "[fleet].controller",
            f"{value!r} must be an http:// or https:// URL, or several separated by commas",
        )
        return None
    return value


def _credentials(section: dict[str, Any], problems: _Problems) -> tuple[tuple[str, bytes], ...]:
    found: list[tuple[str, bytes]] = []
    for name, content in sorted(section.items()):
        key = f"[credentials].{name}"
        if not _CREDENTIAL_NAME.match(name):
            problems.add(key, "name must be letters, digits, '.', '_' or '-'")
        elif not isinstance(content, str):
            problems.add(
                key, f"must be a string (the file's content), not {type(content).__name__}"
            )
        else:
            found.append((name, content.encode()))
    return tuple(found)


def _files(value: object, problems: _Problems) -> tuple[ExtraFile, ...]:
    if not isinstance(value, list):
        problems.add("files", "must be an array of tables ([[files]])")
        return ()
    found: list[ExtraFile] = []
    for index, entry in enumerate(value):
        key = f"[[files]][{index}]"
        if not isinstance(entry, dict):
            problems.add(key, "must be a table")
            continue
        for unknown in sorted(set(entry) - {"path", "content", "mode", "encoding"}):
            problems.add(f"{key}.{unknown}", "unknown key (known: content, encoding, mode, path)")
        path = entry.get("path")
        if not isinstance(path, str) or not path.startswith(_WRITABLE_PREFIXES):
            problems.add(f"{key}.path", f"{path!r} must be an absolute path under /etc or /var")
            continue
        if ".." in Path(path).parts or path.endswith("/"):
            problems.add(f"{key}.path", f"{path!r} must name a file, without '..'")
            continue
        content = entry.get("content")
        if not isinstance(content, str):
            problems.add(f"{key}.content", "must be a string")
            continue
        encoding = entry.get("encoding", "utf-8")
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except binascii.Error as e:
                problems.add(f"{key}.content", f"not valid base64 ({e})")
                continue
        elif encoding == "utf-8":
            data = content.encode()
        else:
            problems.add(f"{key}.encoding", f"{encoding!r} must be 'utf-8' or 'base64'")
            continue
        mode_text = entry.get("mode", "0644")
        if not isinstance(mode_text, str) or not re.fullmatch(r"0?[0-7]{3,4}", mode_text):
            problems.add(f"{key}.mode", f"{mode_text!r} must be an octal string like '0644'")
            continue
        found.append(ExtraFile(path=path, content=data, mode=int(mode_text, 8)))
    return tuple(found)


# --- [kubernetes]: joining a cluster ---------------------------------------------------

_KUBERNETES_KEYS = {"server", "ca", "token", "certificate", "key"}
# https://host[:port][/path]: a DNS name, an IPv4 address or a bracketed IPv6 address.
_API_SERVER = re.compile(
    r"https://(?P<host>\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252})"
    r"(:(?P<port>\d{1,5}))?(/[\x21-\x7e]*)?"
)
_BOOTSTRAP_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
MAX_SERVER = 2048  # characters of [kubernetes].server
MAX_PEM = 65536  # characters of each PEM value (a CA bundle, a certificate, a key)
_PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<label>[A-Z ]{1,40})-----\n(?P<body>[A-Za-z0-9+/=\n]+?)\n"
    r"-----END (?P=label)-----\n"
)
_CERTIFICATE_LABELS = frozenset({"CERTIFICATE"})
_KEY_LABELS = frozenset({"PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"})


def _kubernetes(
    section: dict[str, Any], present: bool, problems: _Problems
) -> KubernetesJoin | None:
    """The join data, or None when the section is absent (or wrong: problems say why;
    an empty ``[kubernetes]`` is wrong, not absent)."""
    if not present:
        return None
    before = len(problems.items)
    server = _api_server(section.get("server"), problems)
    ca = _pem("[kubernetes].ca", section.get("ca"), _CERTIFICATE_LABELS, problems, many=True)
    token, certificate, key = _kubernetes_credentials(section, problems)
    if len(problems.items) > before or server is None or ca is None:
        return None
    return KubernetesJoin(server=server, ca=ca, token=token, certificate=certificate, key=key)


def _api_server(value: object, problems: _Problems) -> str | None:
    key = "[kubernetes].server"
    if value is None:
        problems.add(key, "required: the API server's https:// URL")
        return None
    found = (
        _API_SERVER.fullmatch(value)
        if isinstance(value, str) and len(value) <= MAX_SERVER
        else None
    )
    if found is None:
        problems.add(
            key, f"{_clip(value)} must be an https:// URL (host or [IPv6], optional port and path)"
        )
        return None
    if found["port"] is not None and not 1 <= int(found["port"]) <= 65535:
        problems.add(key, f"{_clip(value)}: port {found['port']} is not 1-65535")
        return None
    return str(value)


def _kubernetes_credentials(
    section: dict[str, Any], problems: _Problems
) -> tuple[str | None, str | None, str | None]:
    """A bootstrap token, or a client certificate and its key: exactly one of the two."""
    has_token = "token" in section
    if has_token == ("certificate" in section or "key" in section):
        problems.add(
            "[kubernetes]",
            "give either token (a bootstrap token) or certificate and key (a pre-issued "
            "client certificate), not both or neither",
        )
        return None, None, None
    if has_token:
        token = section["token"]
        if not isinstance(token, str) or not _BOOTSTRAP_TOKEN.fullmatch(token):
            # Never echo a secret back: say what is wrong with it, not what it is.
            problems.add(
                "[kubernetes].token", "must be a bootstrap token, [a-z0-9]{6}.[a-z0-9]{16}"
            )
            return None, None, None
        return token, None, None
    certificate = _pem(
        "[kubernetes].certificate", section.get("certificate"), _CERTIFICATE_LABELS, problems
    )
    key = _pem("[kubernetes].key", section.get("key"), _KEY_LABELS, problems, secret=True)
    return None, certificate, key


def _pem(
    key: str,
    value: object,
    labels: frozenset[str],
    problems: _Problems,
    *,
    many: bool = False,
    secret: bool = False,
) -> str | None:
    """A PEM text of ``labels`` blocks (one; with ``many`` one or more), with ``\n`` line
    ends; each block's body must be base64 of a DER structure. A ``secret`` is never
    quoted in a message."""
    wanted = " or ".join(sorted(labels))
    if value is None:
        problems.add(key, f"required: a PEM {wanted}")
        return None
    if not isinstance(value, str) or len(value) > MAX_PEM:
        problems.add(key, f"must be a PEM {wanted} of at most {MAX_PEM} characters")
        return None
    text = value.replace("\r\n", "\n").strip("\n") + "\n"
    problem = _pem_problem(text, labels, many=many)
    if problem is not None:
        quoted = "" if secret else f" {_clip(value)}"
        problems.add(key, f"not a PEM {wanted}{quoted}: {problem}")
        return None
    return text


def _pem_problem(text: str, labels: frozenset[str], *, many: bool) -> str | None:
    if any((ord(c) < 0x20 and c != "\n") or ord(c) >= 0x7F for c in text):
        return "it holds a control or non-ASCII character"
    blocks = list(_PEM_BLOCK.finditer(text))
    if not blocks or "".join(b.group(0) for b in blocks) != text:
        return "expected -----BEGIN ...----- base64 -----END ...----- blocks and nothing else"
    if len(blocks) > 1 and not many:
        return f"{len(blocks)} blocks, expected one"
    return next(filter(None, (_block_problem(b, labels) for b in blocks)), None)


def _block_problem(block: re.Match[str], labels: frozenset[str]) -> str | None:
    if block["label"] not in labels:
        return f"a {block['label']} block"
    try:
        der = base64.b64decode(block["body"].replace("\n", ""), validate=True)
    except binascii.Error as e:
        return f"bad base64 ({e})"
    return None if der.startswith(b"\x30") else "its base64 is not a DER structure"


def _clip(value: object) -> str:
    """A value for a message: its repr, at most 60 characters of it."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(text)} characters)"

"""The agent's audit log: append-only JSON lines, each record hash-chained to the previous one.

Every API request (allowed or refused) and every shell session becomes one
record: who (certificate name or ``unix:uid``), role, what (method + path),
parameters with secrets masked, and the result. The log lives on ``/var`` so it
survives reboots and upgrades.

Tamper evidence: a record carries ``seq`` (0, 1, 2...), ``prev`` (the previous
record's ``hash``; 64 zeros for the first) and its own ``hash``, the SHA-256 of
its canonical JSON without the ``hash`` key. Editing a record breaks its hash;
deleting or reordering records breaks ``seq``/``prev``. Cutting records off the
end leaves a valid chain, so every append also rewrites a small *head* file
(``<log>.head``: last seq and hash, written atomically); :func:`verify` checks
the log ends where the head says. An attacker able to rewrite both the log and
the head consistently defeats this; shipping the head to the fleet controller is
how that is closed (the fleet client reports it).

Appends are serialised by a thread lock plus ``flock`` (the Unix socket and the
TLS listener may live in different processes) and fsynced before the request is
answered. Standard library only: this runs on the node.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
# Words of a field name (split at "_", "-", " " and lower-to-upper case changes) that name
# a secret; "key" only after "api", "private", "access" or "secret" ("apiKey", "private_key").
_SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "secrets", "token", "tokens", "credential",
     "credentials", "apikey", "privatekey"}
)  # fmt: skip
_KEY_OWNERS = frozenset({"api", "private", "access", "secret"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
MASK = "***"
MAX_DEPTH = 64  # nesting kept in a record; deeper values are cut (a body nests at most 32)
_INT_LIMIT = 2**64  # larger integers are recorded by their size (printing them can fail)
_TAIL_STEP = 8192


def _text(value: str) -> str:
    """``value`` as text that UTF-8 can encode: a lone surrogate becomes ``\\udXXX``."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _secret(key: str) -> bool:
    """Whether a field named ``key`` holds a secret: one of its whole words names one.

    A dotted name (a setting's key, a sysctl, a registry host) is never a secret's
    field: settings hold no secret (any viewer reads them with ``GET /v1/settings``),
    so ``kernel.keys.maxkeys`` is recorded as it is.
    """
    if "." in key:
        return False
    words = [w.lower() for w in _WORD.findall(key)]
    return any(w in _SECRET_WORDS for w in words) or any(
        a in _KEY_OWNERS and b == "key" for a, b in itertools.pairwise(words)
    )


def _scalar(value: Any) -> Any:
    """A JSON scalar for ``value``: text, a finite number, a boolean or null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return (
            value if -_INT_LIMIT < value < _INT_LIMIT else f"<integer of {value.bit_length()} bits>"
        )
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(value)
    try:
        return _text(str(value))
    except Exception:  # a value whose str() fails is still recorded, by its type
        return f"<{type(value).__name__}>"


def mask_secrets(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` fit for a record: every mapping entry whose key names a secret
    replaced, only JSON types and UTF-8-encodable text, cut below :data:`MAX_DEPTH` levels.

    Recursion is bounded by ``MAX_DEPTH`` whatever ``value`` is, so no request can
    make recording it fail (a record that cannot be written is a request that
    escaped the audit).
    """
    if not isinstance(value, Mapping | list | tuple):
        return _scalar(value)
    if depth >= MAX_DEPTH:
        return f"<nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _text(k) if isinstance(k, str) else str(_scalar(k))
            out[key] = MASK if _secret(key) else mask_secrets(v, depth + 1)
        return out
    return [mask_secrets(v, depth + 1) for v in value]


def _canonical(record: Mapping[str, Any]) -> bytes:
    text = json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode()


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The result of :func:`verify`: ``problems`` name the line and what is wrong."""

    records: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """One append-only, hash-chained log file (and its head file)."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime.datetime] = _utc_now) -> None:
        self.path = path
        self.head_path = path.with_name(path.name + ".head")
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def _tail(self, fd: int) -> tuple[int, str]:
        """The next seq and the last hash, read from the file itself (not a cache).

        A last line cut short (a power cut or a full disk mid-write) is ended with a
        newline and the chain goes on from the last record that reads as one: the torn
        line stays in the file, where :func:`verify` names it.
        """
        if _torn(self.path):
            os.write(fd, b"\n")
        for line in _lines_backwards(self.path):
            link = _link(line)
            if link is not None:
                return link
        return 0, GENESIS

    def append(self, **fields: Any) -> dict[str, Any]:
        """Add one record (secrets masked); returns it with seq, prev and hash filled in."""
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = self._tail(fd)
                record: dict[str, Any] = {
                    "seq": seq,
                    "time": self._clock().isoformat(timespec="milliseconds"),
                    "prev": prev,
                    **mask_secrets(fields),
                }
                record["hash"] = record_hash(record)
                os.write(fd, _canonical(record) + b"\n")
                os.fsync(fd)
                self._write_head(seq, record["hash"])
            finally:
                os.close(fd)  # closing releases the flock
            return record

    def _write_head(self, seq: int, digest: str) -> None:
        # Not atoll.durable.write_atomic: its fsync of the directory would add about
        # 0.2 ms to every request, `GET /v1/status` included. A rename lost to a power
        # cut leaves the previous head, which verify() reports; the log itself is fsynced.
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        with tmp.open("w") as f:
            json.dump({"seq": seq, "hash": digest}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.head_path)

    def records(self, *, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The records from seq ``since`` on, the last ``limit`` of them (streamed: only
        those are held, however long the log)."""
        out: deque[dict[str, Any]] = deque(maxlen=limit or None)
        for _, record in _read(self.path):
            if isinstance(record, dict) and _seq(record) >= since:
                out.append(record)
        return list(out)

    def verify(self) -> Verdict:
        return verify(self.path)


def _seq(record: Mapping[str, Any]) -> int:
    seq = record.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


def _link(line: bytes) -> tuple[int, str] | None:
    """(next seq, hash) of the record on ``line``; None when it does not read as one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or _seq(record) < 0 or not isinstance(record.get("hash"), str):
        return None
    return _seq(record) + 1, record["hash"]


def _torn(path: Path) -> bool:
    """Whether the log's last byte is not a newline (a write cut short)."""
    try:
        with path.open("rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _lines_backwards(path: Path) -> Iterator[bytes]:
    """The log's non-empty lines, last first, however long (read backwards in steps)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        tail = b""  # the part of the file after `end` not yet yielded (no complete line)
        while end > 0:
            step = min(end, max(_TAIL_STEP, len(tail)))
            end -= step
            f.seek(end)
            tail = f.read(step) + tail
            *complete, tail = _split_last(tail)
            yield from complete
        if tail.strip():
            yield tail.strip()


def _split_last(data: bytes) -> list[bytes]:
    """``data``'s lines after its first newline, last first, then what precedes that newline."""
    first = data.find(b"\n")
    if first < 0:
        return [data]
    lines = [line.strip() for line in reversed(data[first + 1 :].split(b"\n"))]
    return [*(line for line in lines if line), data[:first]]


def _read(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except ValueError:
                    yield number, None
    except FileNotFoundError:
        return


def verify(path: Path) -> Verdict:
    """Check every hash, the seq order, the prev links and the head; list every problem.

    Holds a shared ``flock`` on the log so an append (log line + head) in flight
    is never seen half done.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return _verify(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return _verify(path)
    finally:
        os.close(fd)


def _verify(path: Path) -> Verdict:
    problems: list[str] = []
    expected_seq, prev, count = 0, GENESIS, 0
    for number, record in _read(path):
        count += 1
        where = f"{path}:{number}"
        if not isinstance(record, dict) or not {"seq", "prev", "hash"} <= record.keys():
            problems.append(f"{where}: not an audit record")
            continue
        if record["hash"] != record_hash(record):
            problems.append(f"{where}: seq {record['seq']}: hash mismatch (record edited)")
        if record["seq"] != expected_seq:
            problems.append(
                f"{where}: seq {record['seq']} where {expected_seq} was expected "
                "(record removed or reordered)"
            )
        if record["prev"] != prev:
            problems.append(f"{where}: seq {record['seq']}: prev does not match the record before")
        expected_seq = int(record["seq"]) + 1 if isinstance(record["seq"], int) else expected_seq
        prev = str(record["hash"])
    head_path = path.with_name(path.name + ".head")
    try:
        head = json.loads(head_path.read_text())
    except FileNotFoundError:
        if count:
            problems.append(f"{head_path}: missing (the log has {count} records)")
    except ValueError:
        problems.append(f"{head_path}: not JSON")
    else:
        if head.get("seq") != expected_seq - 1 or head.get("hash") != prev:
            problems.append(
                f"{head_path}: head is seq {head.get('seq')} but the log ends at seq "
                f"{expected_seq - 1} (records cut off the end)"
            )
    return Verdict(count, tuple(problems))

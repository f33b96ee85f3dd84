"""``GET /v1/logs?unit=U&lines=N``: the node's journal, bounded, through ``journalctl -o json``.

The query is validated before anything runs: ``unit`` is a systemd unit name
(letters, digits and ``@:._-``, no glob characters, not starting with ``-``, so it
can never be read as an option or match several units), ``lines`` is 1..10000
(default 100); any other parameter is refused. ``journalctl`` runs through the
agent's command runner (argv only) and its JSON export is reduced to what an
operator reads (:class:`atoll.wire.logentry.Entry`, the answer's format): time
(UTC, ISO 8601), unit, identifier, pid, priority, message.
A message journald stored as bytes (not UTF-8) is decoded with replacement.
Role: operator (logs may carry addresses, paths and command lines an observer
with the viewer role is not meant to see). Standard library only.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atoll.wire.logentry import Entry

DEFAULT_LINES = 100
MAX_LINES = 10_000
UNIT = re.compile(r"[A-Za-z0-9@:_.\\][A-Za-z0-9@:_.\\-]{0,254}")


class LogsInputError(ValueError):
    """A bad query; the message names the parameter."""


@dataclass(frozen=True)
class LogsQuery:
    unit: str | None = None
    lines: int = DEFAULT_LINES

    def argv(self) -> list[str]:
        unit = ["--unit", self.unit] if self.unit else []
        return ["journalctl", "--no-pager", "--quiet", "--output=json",
                f"--lines={self.lines}", *unit]  # fmt: skip


def parse_query(query: Mapping[str, Sequence[str]]) -> LogsQuery:
    for key, values in query.items():
        if key not in ("unit", "lines"):
            raise LogsInputError(f"{key}: unknown parameter (expected unit, lines)")
        if len(values) != 1:
            raise LogsInputError(f"{key}: given {len(values)} times")
    unit = query.get("unit", [None])[0]
    if unit is not None and not UNIT.fullmatch(unit):
        raise LogsInputError(f"unit: {unit!r} is not a systemd unit name")
    raw = query.get("lines", [str(DEFAULT_LINES)])[0]
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LINES:
        raise LogsInputError(f"lines: {raw!r} is not an integer in 1..{MAX_LINES}")
    return LogsQuery(unit or None, int(raw))


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", errors="replace")
    return None


def _int(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text is not None and text.isdigit() else None


def parse_export(text: str) -> list[Entry]:
    """``journalctl -o json`` lines -> entries (lines that are not JSON objects are skipped)."""
    out: list[Entry] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        micros = _int(record.get("__REALTIME_TIMESTAMP"))
        when = ""
        if micros is not None:  # integer arithmetic: no float rounding of the microseconds
            moment = datetime.datetime.fromtimestamp(micros // 10**6, datetime.UTC)
            moment += datetime.timedelta(microseconds=micros % 10**6)
            when = moment.isoformat(timespec="milliseconds")
        out.append(
            Entry(
                time=when,
                unit=_text(record.get("_SYSTEMD_UNIT")),
                identifier=_text(record.get("SYSLOG_IDENTIFIER")),
                pid=_int(record.get("_PID")),
                priority=_int(record.get("PRIORITY")),
                message=_text(record.get("MESSAGE")) or "",
            )
        )
    return out

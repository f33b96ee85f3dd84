"""One journal entry as ``GET /v1/logs`` answers it, and how an operator reads it.

The agent (:mod:`atoll.agent.logs`) reduces ``journalctl -o json`` to these
fields and answers ``{"entries": [Entry, ...]}``; ``atoll node logs``
(:mod:`atoll.ops.cli`) prints each with :func:`format_entry` unless asked for
JSON. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class Entry(TypedDict):
    time: str  # UTC, ISO 8601 with milliseconds; "" when journald gave no time
    unit: str | None
    identifier: str | None
    pid: int | None
    priority: int | None
    message: str


def format_entry(entry: Mapping[str, Any]) -> str:
    """One line in journalctl's short-iso style: ``TIME IDENT[PID]: MESSAGE``."""
    ident = entry.get("identifier") or entry.get("unit") or "?"
    pid = f"[{entry['pid']}]" if entry.get("pid") is not None else ""
    return f"{entry.get('time', '')} {ident}{pid}: {entry.get('message', '')}"

"""Reading manifest files within limits, and quoting what they hold in messages.

Every file of an ``extends`` chain is read the same way: a regular file (a
FIFO or a device is refused without being opened for a blocking read) of at
most :data:`MAX_MANIFEST_BYTES`, UTF-8 TOML whose arrays and tables nest at
most :data:`MAX_DEPTH` levels (checked without recursion; ``tomllib`` itself
recurses on nested inline values, and its :class:`RecursionError` is reported
as the same problem). One-line strings are bounded by :data:`MAX_STRING` and
hold no control character (:data:`CONTROL`). An error message repeats at most
:data:`SHOWN` characters of a value (:func:`shown`), so a 10 MB value costs
a line, not a screen.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Limits (docs/manifest.md, "Limits"): every file of an extends chain, every string, nesting.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_STRING = 4096
MAX_DEPTH = 32
MAX_EXTENDS = 16  # files in one extends chain

# What no one-line value may hold: C0 and C1 controls, DEL, line and paragraph separators.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

Raw = dict[str, Any]


def read_chain(path: Path, problems: list[str]) -> list[tuple[Path, Raw]]:
    """The manifest and everything it extends, child first."""
    chain: list[tuple[Path, Raw]] = []
    seen: list[Path] = []
    current: Path | None = path
    referrer: Path | None = None
    while current is not None:
        if current in seen:
            cycle = " -> ".join(_tail(display(p)) for p in [*seen, current])
            problems.append(f"{display(seen[-1])}: extends: cycle: {cycle}")
            return chain
        if len(seen) == MAX_EXTENDS:
            problems.append(f"{display(referrer)}: extends: more than {MAX_EXTENDS} files deep")
            return chain
        seen.append(current)
        raw = _read_toml(current)
        if isinstance(raw, str):
            where = f"{display(referrer)}: extends: " if referrer else ""
            problems.append(f"{where}{_tail(display(current))}: {raw}")
            return chain
        chain.append((current, raw))
        referrer = current
        current = _parent_of(current, raw, problems)
    return chain


def _parent_of(path: Path, raw: Raw, problems: list[str]) -> Path | None:
    """The file ``raw`` (read from ``path``) extends, if it names one that can be a path."""
    parent = raw.get("extends")
    if not isinstance(parent, str):
        return None  # absent, or of the wrong type: reported with the other values
    if len(parent) > MAX_STRING or CONTROL.search(parent):
        problems.append(f"{display(path)}: extends: {shown(parent)} is not a file name")
        return None
    return (path.parent / parent).resolve()


def _tail(path: str) -> str:
    """A path as long as a user may write one (:data:`MAX_STRING`), shortened to its end."""
    limit = 4 * SHOWN
    return path if len(path) <= limit else f"...{path[-limit:]} ({len(path)} characters)"


def _read_toml(path: Path) -> Raw | str:
    """The parsed file, or what is wrong with it: a bounded regular file of bounded depth."""
    text = _read_text(path)
    if not isinstance(text, bytes):
        return text
    try:
        raw = tomllib.loads(text.decode())
    except UnicodeDecodeError as e:
        return f"cannot read: not UTF-8 ({e.reason} at byte {e.start})"
    except RecursionError:
        # tomllib recurses on nested inline arrays and tables.
        return f"values nested more than {MAX_DEPTH} levels deep"
    except ValueError as e:  # TOMLDecodeError, and integers too long to convert
        return f"invalid TOML: {clip(str(e), 4 * SHOWN)}"
    if _deeper_than(raw, MAX_DEPTH):
        return f"values nested more than {MAX_DEPTH} levels deep"
    return raw


def _read_text(path: Path) -> bytes | str:
    """The bytes of a regular file of at most :data:`MAX_MANIFEST_BYTES`, or the problem.

    Opened without blocking (a FIFO would never answer) and checked on the open
    descriptor, so what is checked is what is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot read: {e.strerror}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        return f"cannot read: {e.strerror}"
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        return f"larger than {MAX_MANIFEST_BYTES} bytes"
    return data


def _deeper_than(value: object, limit: int) -> bool:
    """Whether arrays and tables nest more than ``limit`` levels (walked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[object]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def display(path: Path | None) -> str:
    if path is None:
        return "<manifest>"
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def describe(value: object) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}.get(
        type(value), "table" if isinstance(value, dict) else type(value).__name__
    )
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"


SHOWN = 60  # characters of a value an error message repeats


def shown(value: object) -> str:
    """A value quoted for an error message: at most :data:`SHOWN` characters of it.

    A longer one ends in an ellipsis and says how long it is, so a 10 MB value
    costs a line, not a screen; control characters are escaped (``repr``).
    """
    if not isinstance(value, str):
        return describe(value)
    if len(value) <= SHOWN:
        return repr(value)
    return f"{value[:SHOWN]!r}... ({len(value)} characters)"


def clip(text: str, limit: int = SHOWN) -> str:
    """A name (a key of a table, a parser's message) cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"

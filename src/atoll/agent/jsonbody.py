"""Request bodies: one JSON object, decoded strictly, with bounded nesting.

RFC 8259 leaves room that :func:`json.loads` fills generously; an API that
writes what it is given into files and an audit log must not. A body is
refused (:class:`BodyError`, answered 400 naming why) unless it is:

* UTF-8 (strictly: no byte sequence that decodes to a lone surrogate);
* nested at most :data:`MAX_DEPTH` arrays and objects deep, counted *before*
  parsing, so a body of ten thousand ``[`` costs a scan, never a recursion;
* free of duplicate keys in any object (which one would win is a guess);
* free of ``NaN``, ``Infinity`` and numbers too large for a float;
* free of escaped lone surrogates (``"\\ud800"``): every string can be
  written as UTF-8 (RFC 7493, I-JSON);
* an object at the top.

Standard library only (runs on the node).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32  # nested arrays and objects in a body

_SIGNIFICANT = re.compile(r'[\[\]{}"\\]')
_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyError(ValueError):
    """The body is not an acceptable JSON object; the message says why."""


def nesting_depth(text: str, *, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and objects nest in the JSON text ``text``, strings skipped.

    Stops counting once past ``limit``. Linear in the text (only brackets, quotes
    and backslashes are looked at), and agrees with the parser up to the first
    syntax error: a ``"`` outside a string always starts one, a backslash inside
    one always escapes the next character. So a text that parses nests exactly
    this deep, and one that does not cannot make the parser go deeper first.
    """
    depth = deepest = 0
    in_string = False
    skip = -1  # the character after a backslash, inside a string
    for m in _SIGNIFICANT.finditer(text):
        at, char = m.start(), m.group()
        if at == skip:
            continue
        if in_string:
            if char == "\\":
                skip = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif char in "]}":
            depth -= 1
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError(f"body: key {json.dumps(key)} appears twice in one object")
        out[key] = value
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"body: {text[:40]} is out of range")
    return value


def _no_constant(text: str) -> Any:
    raise BodyError(f"body: {text} is not JSON")


def _check_strings(value: Any) -> None:
    """Refuse a lone surrogate in any key or string (iterative: depth is already bounded)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            if _SURROGATE.search(text):
                raise BodyError("body: a string holds a lone UTF-16 surrogate (not Unicode text)")


def decode_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in ``raw``, or :class:`BodyError` naming what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(f"body: not UTF-8 (byte {e.start})") from e
    if nesting_depth(text) > MAX_DEPTH:
        raise BodyError(f"body: arrays and objects nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_float=_finite,
            parse_constant=_no_constant,
        )
    except BodyError:
        raise
    except (ValueError, RecursionError) as e:
        raise BodyError(f"body: not JSON ({e})") from e
    if not isinstance(value, dict):
        raise BodyError("body: expected a JSON object")
    _check_strings(value)
    return value

"""Request bodies: one JSON object, strictly decoded, nesting bounded before parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoll.agent.jsonbody import MAX_DEPTH, BodyError, decode_object, nesting_depth


def nested(depth: int, inner: str = "1") -> bytes:
    return ('{"a":' + "[" * (depth - 1) + inner + "]" * (depth - 1) + "}").encode()


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (b'{"a": 1, "a": 2}', 'key "a" appears twice'),
        (b'{"a": {"b": 1, "b": 1}}', 'key "b" appears twice'),
        (b'{"a": [{"k": 1, "k": 1}]}', "appears twice"),
        (b'{"hostname": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (b'{"a": ["x", ["\\udc00"]]}', "lone UTF-16 surrogate"),
        (b'{"a": "\xed\xa0\x80"}', "not UTF-8"),  # a surrogate encoded as if it were a character
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'\xef\xbb\xbf{"a": 1}', "not JSON"),  # a byte order mark
        (b'{"a": NaN}', "NaN is not JSON"),
        (b'{"a": -Infinity}', "-Infinity is not JSON"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'"text"', "expected a JSON object"),
        (b"", "not JSON"),
        (b'{"a": 1} {"b": 2}', "not JSON"),
        (nested(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH} levels"),
        (b"[" * 10_000, f"deeper than {MAX_DEPTH} levels"),
        (b'{"a":' * 10_000, f"deeper than {MAX_DEPTH} levels"),
        (b'"\\\\"' + b"[" * 10_000, "deeper than"),  # an escaped backslash, then the quote
        (b'"\\"' + b"[" * 10_000, "not JSON"),  # an escaped quote: all inside one string
    ],
)
def test_refused_bodies(raw: bytes, names: str) -> None:
    with pytest.raises(BodyError, match=r"^body: ") as caught:
        decode_object(raw)
    assert names in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"hostname": "n1"}', {"hostname": "n1"}),
        (b'{"emoji": "\\ud83d\\ude00"}', {"emoji": "\U0001f600"}),  # a surrogate pair is fine
        (nested(MAX_DEPTH), None),
        (b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', None),
        (b'{"a": "\\\\", "b": [[["\\"]]]"]]]}', {"a": "\\", "b": [[['"]]]']]]}),
        (b'{"n": 1.5e300, "i": -7}', {"n": 1.5e300, "i": -7}),
    ],
)
def test_accepted_bodies(raw: bytes, expected: dict[str, Any] | None) -> None:
    got = decode_object(raw)
    assert got == (expected if expected is not None else json.loads(raw))


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('"[[[["', 0),
        ('"\\\\" [[', 2),  # an escaped backslash, then the string ends
        ('["\\"[[", []]', 2),
        ("[" * 100, MAX_DEPTH + 1),  # counting stops past the limit
    ],
)
def test_nesting_depth_skips_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


TEXT = st.text(st.characters(exclude_categories=[]), max_size=20)  # surrogates included
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=512))
def test_any_bytes_decode_to_an_object_or_a_body_error(raw: bytes) -> None:
    try:
        assert isinstance(decode_object(raw), dict)
    except BodyError as e:
        assert str(e).startswith("body: ")


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(TEXT, JSON, max_size=4))
def test_json_objects_decode_to_themselves_unless_they_hold_a_surrogate(
    value: dict[str, Any],
) -> None:
    raw = json.dumps(value).encode()  # ASCII: surrogates appear as \\uXXXX escapes
    try:
        got = decode_object(raw)
    except BodyError as e:
        assert "surrogate" in str(e)
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False))
        return
    assert got == value

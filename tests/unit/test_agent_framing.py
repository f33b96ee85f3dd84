"""HTTP/1.1 request framing (RFC 9112): what a smuggler tries is refused, with a 4xx naming it."""

from __future__ import annotations

import string
from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atoll.agent.framing import (
    MAX_BODY,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_TARGET,
    RequestError,
    is_json,
    parse_head,
    request_line,
)


def head(*lines: str, start: str = "GET /v1/status HTTP/1.1", host: bool = True) -> bytes:
    fields = ["Host: node1", *lines] if host else list(lines)
    return "\r\n".join([start, *fields, "", ""]).encode()


def test_a_plain_request() -> None:
    got = parse_head(head("Content-Length: 12", "Content-Type: application/json",
                          start="PATCH /v1/settings?x=1 HTTP/1.1"))  # fmt: skip
    assert (got.method, got.path, got.query, got.version) == ("PATCH", "/v1/settings", "x=1",
                                                              "HTTP/1.1")  # fmt: skip
    assert got.content_length == 12 and got.keep_alive and not got.expect_continue
    assert got.field("CONTENT-TYPE") == "application/json" and got.field("nope", "-") == "-"


@pytest.mark.parametrize(
    ("raw", "length", "keep_alive"),
    [
        (head("Content-Length:28"), 28, True),
        (head("Content-Length: 28 "), 28, True),
        (head("Content-Length: 28, 28"), 28, True),  # RFC 9110 8.6: identical values
        (head("Content-Length: 28", "Content-Length: 028"), 28, True),
        (head("Content-Length: 0"), 0, True),
        (head("Connection: close"), 0, False),
        (head("Connection: keep-alive, Close"), 0, False),
        (head(start="GET /v1/status HTTP/1.0", host=False), 0, False),
        (head(start="GET https://node1:7443/v1/status HTTP/1.1"), 0, True),
    ],
)
def test_accepted_framing(raw: bytes, length: int, keep_alive: bool) -> None:
    got = parse_head(raw)
    assert (got.content_length, got.keep_alive, got.path) == (length, keep_alive, "/v1/status")


@pytest.mark.parametrize(
    ("raw", "status", "names"),
    [
        # ambiguous or unsupported framing
        (head("Content-Length: 3", "Transfer-Encoding: chunked"), 400, "ambiguous framing"),
        (head("Transfer-Encoding: chunked", "Content-Length: 3"), 400, "ambiguous framing"),
        (head("Transfer-Encoding: chunked"), 411, "Content-Length"),
        (
            head("Transfer-Encoding: chunked", start="POST /v1/reboot HTTP/1.0", host=False),
            400,
            "Transfer-Encoding",
        ),
        # strict Content-Length
        (head("Content-Length: +28"), 400, "'+28': expected digits only"),
        (head("Content-Length: 2_8"), 400, "'2_8': expected digits only"),
        (head("Content-Length: -1"), 400, "digits only"),
        (head("Content-Length: 0x1c"), 400, "digits only"),
        (head("Content-Length: \u0662\u0668"), 400, "outside ASCII"),
        (head("Content-Length: "), 400, "digits only"),
        (head("Content-Length: 28", "Content-Length: 29"), 400, "differing values"),
        (head("Content-Length: 28, 29"), 400, "differing values"),
        (head(f"Content-Length: {MAX_BODY + 1}"), 413, f"at most {MAX_BODY}"),
        (head("Content-Length: " + "9" * 5000), 413, "Content-Length"),
        # the request line
        (b"GET /v1/status\r\n\r\n", 400, "request line"),
        (head(start="GET  /v1/status HTTP/1.1"), 400, "single spaces"),
        (head(start="GET /v1/status HTTP/1.1 "), 400, "request line"),
        (head(start="GET /v1/status HTTP/2.0"), 400, "HTTP/2.0: unsupported"),
        (head(start="GET /v1/status HTTP/1.2"), 400, "unsupported"),
        (head(start="GET /v1/status http/1.1"), 400, "request line"),
        (head(start="G(T /v1/status HTTP/1.1"), 400, "request line"),
        (head(start="GET * HTTP/1.1"), 400, "expected a path"),
        (head(start="CONNECT node1:7443 HTTP/1.1"), 400, "expected a path"),
        (head(start="GET /v1/status#x HTTP/1.1"), 400, "fragment"),
        (head(start="GET /" + "a" * MAX_TARGET + " HTTP/1.1"), 414, "target"),
        (head(start="GET /v1/st\u00e4tus HTTP/1.1"), 400, "outside ASCII"),
        (head(start="G" * 40 + " / HTTP/1.1"), 400, "method"),
        # line endings and control characters
        (b"GET /v1/status HTTP/1.1\nHost: node1\r\n\r\n", 400, "bare CR, LF"),
        (b"GET /v1/status HTTP/1.1\r\nHost: node1\rX: y\r\n\r\n", 400, "bare CR, LF"),
        (head("X-A: a\x00b"), 400, "bare CR, LF or NUL"),
        (head("X-A: a\x01b"), 400, "control character"),
        (head("X-A: a\x7fb"), 400, "control character"),
        (b"GET /v1/status HTTP/1.1\r\nHost: node1\r\n", 400, "empty line"),
        # header fields
        (head("Content-Length : 3"), 400, "expected 'Name: value'"),
        (head("X-A: a", " folded"), 400, "folded"),
        (head("no colon"), 400, "expected 'Name: value'"),
        (head(": empty name"), 400, "expected 'Name: value'"),
        (head(host=False), 400, "Host"),
        (head("Host: other"), 400, "Host"),
        (head(*[f"X-{i}: {i}" for i in range(MAX_FIELDS)]), 431, f"over {MAX_FIELDS} fields"),
        (head("X-A: " + "a" * MAX_HEAD), 431, f"over {MAX_HEAD} bytes"),
        (head("Expect: something-else"), 417, "100-continue"),
    ],
)
def test_refused_framing(raw: bytes, status: int, names: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_head(raw)
    assert caught.value.status == status and names in str(caught.value), str(caught.value)


def test_expect_continue_is_http_1_1_only() -> None:
    assert parse_head(head("Expect: 100-continue")).expect_continue
    assert not parse_head(head("Expect: 100-continue", start="GET / HTTP/1.0")).expect_continue


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        ('application/json;charset="utf-8"', True),
        ("application/json; charset=latin-1", False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonx", False),
        ("", False),
    ],
)
def test_only_json_bodies(value: str, ok: bool) -> None:
    assert is_json(value) is ok


def test_a_refused_line_is_quoted_printable_and_short() -> None:
    assert request_line(b"\x16\x03\x01\x02\x00\x01\r\n") == "\\x16\\x03\\x01\\x02\\x00\\x01"
    assert request_line(b"GET /\xff HTTP/1.1\r\nHost: x") == "GET /\\xff HTTP/1.1"
    assert len(request_line(b"A" * 10_000)) < 200


# --- properties -------------------------------------------------------------

METHODS = st.sampled_from(["GET", "PATCH", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "X-Y"])
VISIBLE = "".join(chr(c) for c in range(0x21, 0x7F))
PATHS = st.text(VISIBLE.replace("#", ""), max_size=60).map(lambda p: "/" + p)
NAMES = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=20).map(
    lambda n: "X-" + n
)
VALUES = st.text(VISIBLE + " \t", max_size=40).map(lambda v: v.strip(" \t"))


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=2048))
def test_any_bytes_are_parsed_or_refused_with_a_4xx(raw: bytes) -> None:
    for candidate in (raw, raw + b"\r\n\r\n", b"GET / HTTP/1.1\r\n" + raw + b"\r\n\r\n"):
        try:
            parse_head(candidate)
        except RequestError as e:
            assert 400 <= e.status < 500
            assert str(e).isascii() and str(e).isprintable()


@settings(max_examples=300, deadline=None)
@given(
    method=METHODS,
    path=PATHS,
    fields=st.lists(st.tuples(NAMES, VALUES), max_size=10),
    length=st.integers(min_value=0, max_value=MAX_BODY),
)
def test_well_formed_requests_parse_to_what_was_sent(
    method: str, path: str, fields: list[tuple[str, str]], length: int
) -> None:
    lines = [f"{n}: {v}" for n, v in fields] + [f"Content-Length: {length}"]
    got = parse_head(head(*lines, start=f"{method} {path} HTTP/1.1"))
    assert (got.method, got.target, got.content_length) == (method, path, length)
    assert got.fields[1:-1] == tuple((n.lower(), v) for n, v in fields)


@settings(max_examples=300, deadline=None)
@given(
    raw=st.builds(
        lambda start, lines: head(*lines, start=start),
        st.sampled_from(["GET /v1/status HTTP/1.1", "PATCH /v1/settings HTTP/1.1"]),
        st.lists(
            st.sampled_from(
                [
                    "Content-Length: 5",
                    "Content-Length: 6",
                    "Content-Length: +5",
                    "Transfer-Encoding: chunked",
                    "Transfer-Encoding: identity",
                    "Host: b",
                    "Content-Length: 5, 6",
                    "Expect: 100-continue",
                    "Connection: close",
                    "X: \x0b",
                    " x",
                    "Content-Length:\t5",
                ]
            ),
            max_size=4,
        ),
    )
)
def test_a_framed_length_is_never_ambiguous(raw: bytes) -> None:
    """Whatever mix of framing fields: the agent knows the body's length or refuses."""
    text = raw.decode()
    try:
        got = parse_head(raw)
    except RequestError as e:
        assert e.status in (HTTPStatus.BAD_REQUEST, HTTPStatus.LENGTH_REQUIRED,
                            HTTPStatus.EXPECTATION_FAILED)  # fmt: skip
        return
    assert "Transfer-Encoding" not in text
    assert got.content_length in (0, 5, 6)
    assert ("Content-Length: 5" in text or "Content-Length:\t5" in text) == (
        got.content_length == 5
    )

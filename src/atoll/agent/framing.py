"""HTTP/1.1 request framing for the agent (RFC 9112), strict and pure.

The agent reads a request's head itself (the request line and the header
fields, up to the empty line), within :data:`MAX_HEAD` bytes and a deadline
(:mod:`atoll.agent.server`), and hands the bytes to :func:`parse_head`, which
either returns a :class:`RequestHead` or raises :class:`RequestError` with the
4xx status to answer. Nothing here reads a socket, so every rule is tested with
tables and generated input (``tests/unit/test_agent_framing.py``).

The rules are those a request smuggler probes, each answered by refusing (and
closing the connection, since the next request's start is no longer known):

* lines end with CRLF; a bare CR or LF, a NUL, any other control character or
  a byte outside ASCII anywhere in the head is refused;
* the request line is ``METHOD SP TARGET SP HTTP/1.x`` with single spaces; the
  target is a path (origin form, or the absolute form ``http(s)://host/path``);
* a field is ``name: value`` with a token name and no space before the colon;
  folded lines (obs-fold) are refused; HTTP/1.1 needs exactly one ``Host``;
* the body's length is ``Content-Length`` only: digits and nothing else;
  repeated values must agree; ``Transfer-Encoding`` is refused, with 400 beside a
  ``Content-Length`` (ambiguous framing) and 411 alone (the agent's bodies are
  small JSON documents: send their length);
* ``Expect`` may only be ``100-continue``.

Standard library only (runs on the node).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus

MAX_HEAD = 16 * 1024  # request line and header fields, bytes, CRLFs included
MAX_TARGET = 4096  # the request target
MAX_FIELDS = 64  # header field lines
MAX_BODY = 64 * 1024  # a request body
MAX_METHOD = 32

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # noqa: S105 - RFC 9110's token, not a secret
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([!-~]+) (HTTP/[0-9]\.[0-9])", re.ASCII)
_FIELD_NAME = re.compile(_TOKEN, re.ASCII)
_FIELD_VALUE = re.compile(r"[\t -~]*", re.ASCII)  # visible ASCII, spaces and tabs
_ABSOLUTE = re.compile(r"https?://[^/?#]*(?P<rest>[/?].*)?", re.ASCII | re.IGNORECASE)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
_SHOWN = 120  # characters of a refused line kept in a message


class RequestError(Exception):
    """The request is refused with ``status`` (always 4xx); the connection is then closed."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]  # (lower-case name, value) in arrival order
    content_length: int  # 0 when the request has no body
    keep_alive: bool
    expect_continue: bool

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def field(self, name: str, default: str = "") -> str:
        """The field's value; repeated lines joined with ", " (RFC 9110 section 5.3)."""
        values = [v for n, v in self.fields if n == name.lower()]
        return ", ".join(values) if values else default


def shown(line: bytes | str) -> str:
    """A refused line as a message may quote it: escaped, printable ASCII, clipped."""
    text = line.decode("latin-1") if isinstance(line, bytes) else line
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in escaped)
    return escaped if len(escaped) <= _SHOWN else escaped[:_SHOWN] + "..."


def request_line(raw: bytes) -> str:
    """The first line of a head, for an audit record of a refusal (see :func:`shown`)."""
    return shown(raw.split(b"\n", 1)[0].removesuffix(b"\r"))


def parse_head(raw: bytes) -> RequestHead:
    """The request head ``raw`` (up to and including the empty line), checked strictly."""
    if len(raw) > MAX_HEAD:
        raise RequestError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head: over {MAX_HEAD} bytes"
        )
    if not raw.endswith(b"\r\n\r\n"):
        raise RequestError(HTTPStatus.BAD_REQUEST, "request head: must end with an empty line")
    if not raw.isascii():
        raise RequestError(HTTPStatus.BAD_REQUEST, "request head: bytes outside ASCII")
    lines = raw[:-4].decode("ascii").split("\r\n")
    for line in lines:
        if "\r" in line or "\n" in line or "\0" in line:
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"request head: a bare CR, LF or NUL in '{shown(line)}'"
            )
    method, target, version = _request_line(lines[0])
    fields = _fields(lines[1:])
    _host(fields, version)
    keep_alive = version == "HTTP/1.1" and "close" not in _tokens(fields, "connection")
    return RequestHead(
        method=method,
        target=target,
        version=version,
        fields=fields,
        content_length=_content_length(fields, version),
        keep_alive=keep_alive,
        expect_continue=_expect(fields) and version == "HTTP/1.1",
    )


def _request_line(line: str) -> tuple[str, str, str]:
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"request line '{shown(line)}': expected 'METHOD /path HTTP/1.1' (single spaces)",
        )
    method, target, version = m.groups()
    if len(method) > MAX_METHOD:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"method: over {MAX_METHOD} characters")
    if version not in _VERSIONS:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{version}: unsupported (HTTP/1.1 only)")
    if len(target) > MAX_TARGET:
        raise RequestError(HTTPStatus.REQUEST_URI_TOO_LONG, f"target: over {MAX_TARGET} bytes")
    return method, _origin_form(target), version


def _origin_form(target: str) -> str:
    """The path and query of an origin-form or absolute-form target (RFC 9112 section 3.2)."""
    if "#" in target:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"target '{shown(target)}': has a fragment")
    if target.startswith("/"):
        return target
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is None:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"target '{shown(target)}': expected a path such as /v1/status"
        )
    rest = absolute.group("rest") or "/"
    return rest if rest.startswith("/") else "/" + rest


def _fields(lines: list[str]) -> tuple[tuple[str, str], ...]:
    if len(lines) > MAX_FIELDS:
        raise RequestError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"header: over {MAX_FIELDS} fields"
        )
    fields: list[tuple[str, str]] = []
    for line in lines:
        name, colon, value = line.partition(":")
        if line[:1] in (" ", "\t"):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"header '{shown(line)}': folded lines are not accepted"
            )
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"header '{shown(line)}': expected 'Name: value'"
            )
        if not _FIELD_VALUE.fullmatch(value):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"header {name}: a control character in its value"
            )
        fields.append((name.lower(), value.strip(" \t")))
    return tuple(fields)


def _tokens(fields: tuple[tuple[str, str], ...], name: str) -> set[str]:
    return {t.strip(" \t").lower() for n, v in fields if n == name for t in v.split(",")}


def _host(fields: tuple[tuple[str, str], ...], version: str) -> None:
    hosts = [v for n, v in fields if n == "host"]
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise RequestError(HTTPStatus.BAD_REQUEST, "Host: exactly one is required")


def _content_length(fields: tuple[tuple[str, str], ...], version: str) -> int:
    lengths = [i.strip(" \t") for n, v in fields if n == "content-length" for i in v.split(",")]
    if any(n == "transfer-encoding" for n, _ in fields):
        if lengths:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "Transfer-Encoding and Content-Length together: ambiguous framing",
            )
        if version != "HTTP/1.1":
            raise RequestError(HTTPStatus.BAD_REQUEST, f"Transfer-Encoding: not in {version}")
        raise RequestError(
            HTTPStatus.LENGTH_REQUIRED,
            "Transfer-Encoding: not accepted; send the body with a Content-Length",
        )
    if not lengths:
        return 0
    for item in lengths:
        if not _DIGITS.fullmatch(item):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"Content-Length '{shown(item)}': expected digits only"
            )
    if any(len(item.lstrip("0")) > len(str(MAX_BODY)) for item in lengths):
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body: over {MAX_BODY} bytes (Content-Length)"
        )
    if len({int(item) for item in lengths}) > 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, "Content-Length: differing values")
    length = int(lengths[0])
    if length > MAX_BODY:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body: {length} bytes, at most {MAX_BODY}"
        )
    return length


def _expect(fields: tuple[tuple[str, str], ...]) -> bool:
    expect = _tokens(fields, "expect")
    if expect - {"100-continue"}:
        raise RequestError(HTTPStatus.EXPECTATION_FAILED, "Expect: only 100-continue is known")
    return bool(expect)


def is_json(content_type: str) -> bool:
    """``application/json``, with no parameter but ``charset=utf-8`` (RFC 8259: UTF-8 only)."""
    media, *params = (part.strip(" \t").lower() for part in content_type.split(";"))
    if media != "application/json":
        return False
    return all(p.replace('"', "") in ("charset=utf-8", "") for p in params)

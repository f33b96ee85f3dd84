"""The agent's connections: requests read within limits, answers written, refusals audited.

:mod:`http.server` decided too much by itself: it answered malformed requests
with HTML nobody audited, waited for a slow client as long as it kept sending
a byte now and then, read a body the agent refused as the next request, and
printed a traceback when a client left. So the agent reads requests itself:

* :class:`Listener` (a mixin for :mod:`socketserver` servers) serves at most
  :attr:`HttpLimits.connections` connections at once, each in its own thread;
  the next :attr:`HttpLimits.turned_away` are answered ``503`` (audited) and
  closed; beyond those a connection is closed at once (audited as dropped).
  Nothing waits in a queue.
* :class:`Connection` reads one request at a time: the head (request line and
  header fields) must be complete within :attr:`HttpLimits.head_seconds` of the
  agent starting to wait for it, the body within :attr:`HttpLimits.body_seconds`;
  both are bounded in size (:mod:`atoll.agent.framing`). A refused request is
  answered with JSON, audited with who (the TLS peer), what (its request line)
  and why, and its connection is closed, after reading for a moment whatever
  the client still sends so that the answer is not lost to a reset.
* A client that leaves mid-request is one line in the journal and one audit
  record (``result: "disconnected"``); a client that leaves between requests,
  or connects without sending anything (the health check), is neither.

What a request means (routes, roles, bodies) is the server's
(:mod:`atoll.agent.server`), through :meth:`Listener.dispatch`. Standard
library only (runs on the node).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Generic, Protocol, TypeVar

from atoll.agent.framing import MAX_HEAD, RequestError, RequestHead, parse_head, request_line

LINGER_BYTES = 256 * 1024  # read and dropped from a refused client before closing


@dataclass(frozen=True)
class HttpLimits:
    """How long and how many: a slow or greedy client is refused, never waited for."""

    head_seconds: float = 10.0  # request line and fields, from when the agent waits for them
    body_seconds: float = 10.0  # the body, once the head is in
    send_seconds: float = 30.0  # writing one answer
    linger_seconds: float = 1.0  # reading what a refused client still sends, before closing
    connections: int = 128  # served at once
    turned_away: int = 16  # answered 503 at once; more are closed without an answer


class Peer(Protocol):
    """Who is on the other end, as an audit record names them."""

    @property
    def name(self) -> str: ...

    @property
    def role_name(self) -> str | None: ...


P = TypeVar("P", bound=Peer)
Record = Callable[..., object]  # AuditLog.append
Log = Callable[[str], None]


class Gone(Exception):
    """The client closed or reset the connection in the middle of a request."""


def log_to_stderr(line: str) -> None:
    """The default log: one line on stderr, which is the journal on a node."""
    print(line, file=sys.stderr, flush=True)


def json_body(payload: Any) -> bytes:
    """An answer's body: JSON, ASCII-escaped (always encodable, whatever it quotes)."""
    return json.dumps(payload).encode()


def answer_bytes(
    status: HTTPStatus, body: bytes, *, close: bool, fields: tuple[tuple[str, str], ...] = ()
) -> bytes:
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Date: {formatdate(usegmt=True)}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in fields),
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def linger(sock: socket.socket, seconds: float) -> None:
    """Read and drop what the client still sends, for a moment, then let it be closed.

    Closing a socket with unread input resets the connection, and a reset can
    destroy the answer before the client has read it (RFC 9112 section 9.6).
    """
    deadline = time.monotonic() + seconds
    left = LINGER_BYTES
    try:
        while left > 0 and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            data = sock.recv(min(left, 65536))
            if not data:
                return
            left -= len(data)
    except OSError:
        return


class Connection(Generic[P]):
    """One client connection, one request at a time (kept alive while the framing allows)."""

    def __init__(
        self, sock: socket.socket, peer: P, limits: HttpLimits, record: Record, log: Log
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.limits = limits
        self._record = record
        self.log = log
        self.rfile = sock.makefile("rb")
        self.what = ""  # the request being served, as records name it
        self.body_pending = False  # a body announced and not read (the connection must close)
        self._head = bytearray()

    # --- the request loop ---------------------------------------------------

    def serve(self, dispatch: Callable[[Connection[P], RequestHead], bool]) -> None:
        """Serve requests until the client or a refusal ends the connection."""
        try:
            while self._next(dispatch):
                pass
        except Gone as e:
            what = self.what or request_line(bytes(self._head))
            self.record(what=what, result="disconnected", reason=str(e))
            self.log(f"atoll-agent: {self.peer.name}: {what}: {e}")
        except OSError as e:  # an answer the client was no longer there to read
            self.log(
                f"atoll-agent: {self.peer.name}: {self.what or 'connection'}: lost ({_why(e)})"
            )
        finally:
            self.rfile.close()

    def _next(self, dispatch: Callable[[Connection[P], RequestHead], bool]) -> bool:
        self.what, self.body_pending = "", False
        try:
            raw = self._read_head()
        except TimeoutError:
            if not self._head:
                return False  # idle: closed quietly
            self.what = request_line(bytes(self._head))
            return self.refuse(
                RequestError(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"request head: not complete within {self.limits.head_seconds:g} s",
                )
            )
        except RequestError as e:
            self.what = request_line(bytes(self._head))
            return self.refuse(e)
        if raw is None:
            return False
        self.what = request_line(raw)
        try:
            head = parse_head(raw)
        except RequestError as e:
            return self.refuse(e)
        self.body_pending = head.content_length > 0
        return dispatch(self, head)

    # --- reading --------------------------------------------------------------

    def _wait(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)

    def _read_line(self, deadline: float) -> bool:
        """Append one line (up to its LF) to the head; False when the client closed first."""
        head = self._head
        while len(head) <= MAX_HEAD:
            self._wait(deadline)
            try:
                chunk = self.rfile.peek(1)  # at most one read from the socket
            except TimeoutError:
                raise
            except OSError as e:
                if not head:
                    return False  # a reset between requests is a close
                raise Gone(f"lost mid-head ({_why(e)})") from e
            if not chunk:
                if head:
                    raise Gone("closed mid-head")
                return False
            end = chunk.find(b"\n")
            head += self.rfile.read(end + 1 if end >= 0 else len(chunk))
            if end >= 0:
                return True
        return True

    def _read_head(self) -> bytes | None:
        """The next request's head (CRLF-terminated lines up to an empty one), or None."""
        deadline = time.monotonic() + self.limits.head_seconds
        head = self._head = bytearray()
        start = 0
        while self._read_line(deadline):
            line = bytes(head[start:])
            if len(head) > MAX_HEAD:
                status = HTTPStatus.REQUEST_URI_TOO_LONG if start == 0 else (
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                )  # fmt: skip
                raise RequestError(status, f"request head: over {MAX_HEAD} bytes")
            if not line.endswith(b"\r\n"):
                raise RequestError(HTTPStatus.BAD_REQUEST, "request head: lines must end with CRLF")
            if line == b"\r\n" and start == 0:
                del head[:]  # empty lines before a request are ignored (RFC 9112 section 2.2)
                continue
            if line == b"\r\n":
                return bytes(head)
            start = len(head)
        return None

    def read_body(self, length: int) -> bytes:
        """The body announced by ``Content-Length``, within :attr:`HttpLimits.body_seconds`."""
        deadline = time.monotonic() + self.limits.body_seconds
        data = bytearray()
        while len(data) < length:
            try:
                self._wait(deadline)
                chunk = self.rfile.read1(length - len(data))
            except TimeoutError as e:
                raise RequestError(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"body: {len(data)} of {length} bytes within {self.limits.body_seconds:g} s",
                ) from e
            except OSError as e:
                raise Gone(f"lost mid-body ({_why(e)})") from e
            if not chunk:
                raise Gone(f"closed after {len(data)} of {length} body bytes")
            data += chunk
        self.body_pending = False
        return bytes(data)

    # --- answering ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.limits.send_seconds)
        self.sock.sendall(data)

    def send_continue(self) -> None:
        """``100 Continue``: the client asked before sending its body (``Expect``)."""
        try:
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        except OSError as e:
            raise Gone(f"lost before the body ({_why(e)})") from e

    def answer(
        self,
        status: HTTPStatus,
        body: bytes,
        *,
        close: bool,
        fields: tuple[tuple[str, str], ...] = (),
        head_only: bool = False,
    ) -> None:
        """Send one answer; ``head_only`` for ``HEAD`` (its length, never its body)."""
        data = answer_bytes(status, body, close=close, fields=fields)
        self.send(data[: len(data) - len(body)] if head_only else data)
        if close and self.body_pending:
            linger(self.sock, self.limits.linger_seconds)

    def record(self, **fields: Any) -> None:
        """One audit record about this connection's peer."""
        self._record(who=self.peer.name, role=self.peer.role_name, **fields)

    def refuse(self, error: RequestError) -> bool:
        """Audit and answer a request refused before dispatch; the connection then closes."""
        reason = str(error)
        what = self.what or "(no request line)"
        try:
            self.record(what=what, result=int(error.status), reason=reason)
        except Exception as e:  # the disk, not the client: it still gets its answer
            self.log(f"atoll-agent: audit log: cannot record {what} ({_why(e)})")
        self.send(answer_bytes(error.status, json_body({"error": reason}), close=True))
        linger(self.sock, self.limits.linger_seconds)
        return False


class Listener(Generic[P]):
    """A :mod:`socketserver` mixin: bounded connections, each served by a :class:`Connection`.

    A server class puts it first in its bases and provides :meth:`accept_peer`
    (the TLS handshake and who the peer is), :meth:`dispatch` and :attr:`record`.
    """

    limits: HttpLimits
    log: Log

    def bound(self, limits: HttpLimits, log: Log) -> None:
        self.limits = limits
        self.log = log
        self._serving = threading.BoundedSemaphore(limits.connections)
        self._turning_away = threading.BoundedSemaphore(limits.turned_away)
        self._ended = 0  # connections whose thread has finished (errors logged, socket closed)
        self._ending = threading.Condition()

    def wait_ended(self, count: int, timeout: float) -> bool:
        """Whether ``count`` connections have ended within ``timeout`` seconds.

        A connection has ended once its thread is done: whatever it logs is logged."""
        with self._ending:
            return self._ending.wait_for(lambda: self._ended >= count, timeout)

    def record(self, **fields: Any) -> object:
        raise NotImplementedError

    def accept_peer(self, request: socket.socket, address: Any) -> tuple[socket.socket, P] | None:
        """The connection to serve and its peer; None when refused (and audited)."""
        raise NotImplementedError

    def dispatch(self, conn: Connection[P], head: RequestHead) -> bool:
        """Answer one request; True to keep the connection for the next one."""
        raise NotImplementedError

    def process_request(self, request: Any, client_address: Any) -> None:
        if self._serving.acquire(blocking=False):
            slots, serve = self._serving, self._serve
        elif self._turning_away.acquire(blocking=False):
            slots, serve = self._turning_away, self._turn_away
        else:
            self._drop(request, client_address)
            return
        thread = threading.Thread(
            target=self._run,
            args=(serve, slots, request, client_address),
            name="atoll-agent-connection",
            daemon=True,
        )
        try:
            thread.start()
        except BaseException:
            slots.release()  # socketserver closes the request and reports the error
            raise

    def _run(
        self,
        serve: Callable[[socket.socket, Any], None],
        slots: threading.BoundedSemaphore,
        request: socket.socket,
        address: Any,
    ) -> None:
        try:
            serve(request, address)
        except Exception:
            self.handle_error(request, address)
        finally:
            self._close(request)
            slots.release()
            with self._ending:
                self._ended += 1
                self._ending.notify_all()

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.close()

    def _serve(self, request: socket.socket, address: Any) -> None:
        accepted = self.accept_peer(request, address)
        if accepted is None:
            return
        sock, peer = accepted
        try:
            Connection(sock, peer, self.limits, self.record, self.log).serve(self.dispatch)
        finally:
            self._close(sock)

    def _turn_away(self, request: socket.socket, address: Any) -> None:
        accepted = self.accept_peer(request, address)
        if accepted is None:
            return
        sock, peer = accepted
        reason = f"{self.limits.connections} connections already open; try again later"
        try:
            self.record(who=peer.name, role=peer.role_name, what="connection", result=503,
                        reason=reason)  # fmt: skip
            sock.settimeout(self.limits.send_seconds)
            sock.sendall(
                answer_bytes(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    json_body({"error": reason}),
                    close=True,
                    fields=(("Retry-After", "1"),),
                )
            )
            linger(sock, self.limits.linger_seconds)
        except OSError as e:
            self.log(f"atoll-agent: {peer.name}: turned away: lost ({_why(e)})")
        finally:
            self._close(sock)

    def _drop(self, request: socket.socket, address: Any) -> None:
        self.record(
            who=f"{address[0]}" if isinstance(address, tuple) else str(address),
            role=None,
            what="connection",
            result="dropped",
            reason=f"{self.limits.connections} connections open and "
            f"{self.limits.turned_away} being turned away",
        )
        self._close(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line for a connection that failed (a traceback only for a bug in the agent)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self.log(f"atoll-agent: {client_address}: connection lost ({_why(error)})")
        else:
            self.log(f"atoll-agent: {client_address}: internal error\n{traceback.format_exc()}")

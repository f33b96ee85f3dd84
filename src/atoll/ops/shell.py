"""``atoll node shell``: open an ops shell on the node and relay the local terminal to it.

The request is ``POST /v1/shell`` on a fresh mutual-TLS connection with
``Connection: Upgrade`` / ``Upgrade: atoll-shell/1``; after the agent's ``101``
the connection carries the frames of :mod:`atoll.wire.shellframe` (data,
resize, stdin closed, exit). When stdin is a terminal it is put in raw mode for the
session (restored afterwards, also on errors) and window size changes are sent
as they happen (SIGWINCH); otherwise stdin and stdout are relayed as bytes and
the end of stdin is passed on, so a script can drive the shell:
``printf 'cat /etc/os-release; exit\\n' | atoll node ... shell --reason "..."``.

The exit code is the remote command's; a session ended by its TTL or by an
error on the node is a :class:`ShellError` naming the session.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import ssl
import sys
import termios
import tty
from types import FrameType
from typing import Any

from atoll.errors import AtollError
from atoll.ops.client import NodeClient
from atoll.wire.shellframe import (
    PROTOCOL,
    End,
    ExitFrame,
    Frame,
    FrameReader,
    encode_frame,
    encode_resize,
)

TIMEOUT = 30.0  # seconds to connect and send the request
# Seconds to wait for the agent's answer: the first shell on a node (or after an upgrade
# that changed the toolbox) waits while the agent imports the toolbox image; the
# agent gives up on that earlier (atoll.agent.shell.IMPORT_TIMEOUT) and says why.
ANSWER_TIMEOUT = 300.0


class ShellError(AtollError):
    """The shell could not be opened, or ended other than by its command's exit."""


def _read_head(conn: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    """Status code, headers (lower-case names) and the bytes that followed them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise OSError("connection closed before the answer's headers")
        data += chunk
        if len(data) > 65536:
            raise OSError("answer headers too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def open_shell(node: NodeClient, body: dict[str, Any]) -> tuple[ssl.SSLSocket, str, bytes]:
    """Send the upgrade request; returns the TLS socket, the session id and early frame bytes."""
    url = node.endpoint + "/v1/shell"
    payload = json.dumps(body).encode()
    request = (
        f"POST /v1/shell HTTP/1.1\r\nHost: {node.host}:{node.port}\r\n"
        f"Connection: Upgrade\r\nUpgrade: {PROTOCOL}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    try:
        raw = socket.create_connection((node.host, node.port), timeout=TIMEOUT)
        conn = node.context.wrap_socket(raw, server_hostname=node.host)
        conn.sendall(request)
        conn.settimeout(ANSWER_TIMEOUT)
        status, headers, rest = _read_head(conn)
        if status != 101:
            length = int(headers.get("content-length", "0") or 0)
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                rest += chunk
            conn.close()
            try:
                message = json.loads(rest).get("error", rest.decode(errors="replace"))
            except (ValueError, AttributeError):
                message = rest[:200].decode(errors="replace")
            raise ShellError(f"POST {url}: HTTP {status}: {message}")
    except (OSError, ssl.SSLError) as e:
        raise ShellError(f"POST {url}: {e}") from e
    return conn, headers.get("x-atoll-shell", "?"), rest


def relay(conn: ssl.SSLSocket, early: bytes, stdin: int, stdout: int) -> ExitFrame:
    """Relay stdin -> DATA/EOF frames and DATA frames -> stdout until the EXIT frame."""
    conn.settimeout(None)
    session = _Relay(conn, stdin, stdout)
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    previous = signal.signal(signal.SIGWINCH, session.on_winch) if is_tty else None
    try:
        if is_tty:
            tty.setraw(stdin)
        return session.run(early)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)
        conn.close()


class _Relay:
    """One session's relay loop; the terminal's modes are :func:`relay`'s business."""

    def __init__(self, conn: ssl.SSLSocket, stdin: int, stdout: int) -> None:
        self.conn = conn
        self.stdin = stdin
        self.stdout = stdout
        self.frames = FrameReader()
        self.stdin_open = True
        self.resized = False

    def on_winch(self, _: int, __: FrameType | None) -> None:
        self.resized = True

    def run(self, early: bytes) -> ExitFrame:
        pending = self.frames.feed(early)
        while True:
            end = self._deliver(pending)
            if end is not None:
                return end
            if self.resized:
                self.resized = False
                size = os.get_terminal_size(self.stdin)
                self.conn.sendall(encode_resize(size.lines, size.columns))
            pending = self._step()

    def _deliver(self, frames: list[tuple[Frame, bytes]]) -> ExitFrame | None:
        """Write DATA to stdout; the EXIT frame, when it came, ends the session."""
        for kind, payload in frames:
            if kind is Frame.DATA:
                _write_all(self.stdout, payload)
            elif kind is Frame.EXIT:
                return ExitFrame.from_json(payload)
        return None

    def _step(self) -> list[tuple[Frame, bytes]]:
        """Wait (at most a second) for the agent or stdin; the frames that arrived."""
        watch: list[Any] = [self.conn, self.stdin] if self.stdin_open else [self.conn]
        ready = [self.conn] if self.conn.pending() else select.select(watch, [], [], 1.0)[0]
        pending: list[tuple[Frame, bytes]] = []
        if self.conn in ready:
            data = self.conn.recv(65536)
            if not data:
                raise OSError("the agent closed the connection without an exit frame")
            pending = self.frames.feed(data)
        if self.stdin in ready:
            data = os.read(self.stdin, 65536)
            if data:
                self.conn.sendall(encode_frame(Frame.DATA, data))
            else:
                self.stdin_open = False
                self.conn.sendall(encode_frame(Frame.EOF))
        return pending


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_shell(node: NodeClient, ttl: int, reason: str, image: str | None = None) -> int:
    """A session in the node's toolbox, or in the preloaded ``image`` (for diagnosis)."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    body: dict[str, Any] = {"reason": reason, "ttl": ttl, "tty": os.isatty(stdin)}
    if image is not None:
        body["image"] = image
    if body["tty"]:
        size = os.get_terminal_size(stdin)
        body["rows"], body["cols"] = size.lines, size.columns
    conn, session, early = open_shell(node, body)
    sys.stdout.flush()
    try:
        end = relay(conn, early, stdin, stdout)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ShellError(f"shell {session} on {node.endpoint}: {e}") from e
    if end.end != End.EXIT:
        raise ShellError(
            f"shell {end.session} on {node.endpoint} ended: {end.end}"
            + (f" (TTL of {ttl} s)" if end.end == End.TTL else ""),
            hint="the session and its transcript are in the node's audit log",
        )
    status = end.exit_status
    return status if status is not None and 0 <= status < 256 else 1

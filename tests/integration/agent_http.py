"""A live agent on 127.0.0.1 (its own PKI, recording runners) and a raw HTTP/1.1 client for it.

The raw client writes exactly the bytes a test gives it over mutual TLS and
reads answers the way a careful client would (status line, fields,
``Content-Length`` body), so tests can send what ``http.client`` never would:
ambiguous framing, hidden second requests, bodies a parser chokes on.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.agent.server import Agent, AgentConfig, AgentServer, serve_in_thread
from atoll.pki import Kind, Role, init, issue

BOOTED = "* atoll " + "ab" * 32 + ".0\n    Version: 1.0.0\n"


@dataclass
class Answer:
    status: int
    fields: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class LiveAgent:
    pki: Path
    root: Path
    server: AgentServer
    restarts: list[list[str]] = field(default_factory=list)  # systemctl try-restart
    commands: list[list[str]] = field(default_factory=list)  # ostree admin, systemctl reboot

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def context(self, client: str = "ada") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.pki / "ca.crt")
        ctx.load_cert_chain(
            self.pki / "clients" / f"{client}.crt", self.pki / "clients" / f"{client}.key"
        )
        return ctx

    def connect(self, client: str = "ada", timeout: float = 10) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return self.context(client).wrap_socket(raw, server_hostname="127.0.0.1")

    def exchange(
        self, data: bytes, *, client: str = "ada", answers: int = 2, wait: float = 1.0
    ) -> tuple[list[Answer], bool]:
        """Send ``data`` on a new connection; the answers read and whether the agent closed it.

        Reads until the agent closes (after an answer that says ``Connection: close``),
        ``answers`` answers came, or ``wait`` seconds pass without a byte (the
        connection is then open).
        """
        with self.connect(client) as conn:
            conn.sendall(data)
            return read_answers(conn, answers=answers, wait=wait)

    def records(self) -> list[dict[str, Any]]:
        path = self.root / "var/lib/atoll/audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

    def wait_records(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        """The records once there are ``count`` (a refusal is audited in the agent's thread)."""
        deadline = time.monotonic() + timeout
        while len(records := self.records()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return records

    def etc(self) -> dict[str, bytes]:
        """Every file under the root's /etc: what a request may have changed."""
        etc = self.root / "etc"
        return {str(p.relative_to(etc)): p.read_bytes() for p in etc.rglob("*") if p.is_file()}


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    fields: Sequence[str] = (),
    content_type: str | None = "application/json",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *fields]
    if body is not None:
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join([*lines, "", ""]).encode() + (body or b"")


def _read_answer(conn: ssl.SSLSocket, buffer: bytearray) -> Answer | None:
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            if buffer:
                raise AssertionError(f"the agent closed mid-answer: {bytes(buffer)!r}")
            return None
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    length = int(fields.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise AssertionError("the agent closed mid-body")
        body += chunk
    buffer[:] = body[length:]
    return Answer(int(status), fields, bytes(body[:length]))


def read_answers(
    conn: ssl.SSLSocket, *, answers: int = 2, wait: float = 1.0
) -> tuple[list[Answer], bool]:
    got: list[Answer] = []
    buffer = bytearray()
    conn.settimeout(wait)
    try:
        while len(got) < answers:
            answer = _read_answer(conn, buffer)
            if answer is None:
                return got, True
            got.append(answer)
            if answer.status == 101:
                return got, False
            if answer.fields.get("connection", "").lower() == "close":
                # Done sending, as a client that read "Connection: close" is: the agent
                # stops reading what is left of the request and closes.
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(65536):
                    pass
                return got, True
        # one more read: has the agent closed the connection?
        return got, _read_answer(conn, buffer) is None
    except TimeoutError:
        return got, False
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
        return got, True


@contextmanager
def live_agent(tmp: Path, **server_options: Any) -> Iterator[LiveAgent]:
    """An agent serving a temporary root on an ephemeral port (roles vera, otto, ada)."""
    pki, root = tmp / "pki", tmp / "root"
    init(pki)
    issue(pki, "node1", kind=Kind.NODE)
    for name, role in (("vera", Role.VIEWER), ("otto", Role.OPERATOR), ("ada", Role.ADMIN)):
        issue(pki, name, kind=Kind.CLIENT, role=role)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("IMAGE_ID=atoll\nIMAGE_VERSION=1.0.0\n")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("node1\n")
    restarts: list[list[str]] = []
    ran: list[list[str]] = []

    def commands(argv: Sequence[str], **_: Any) -> str:
        if list(argv) == ["ostree", "admin", "status"]:
            return BOOTED
        ran.append(list(argv))
        return ""

    config = AgentConfig(
        root=root,
        audit_path=root / "var/lib/atoll/audit.jsonl",
        cert=pki / "nodes/node1.crt",
        key=pki / "nodes/node1.key",
        ca=pki / "ca.crt",
        crl=pki / "crl.pem",
        runner=lambda argv: restarts.append(list(argv)),
        commands=commands,
        sync=lambda: None,
    )
    server = AgentServer(("127.0.0.1", 0), Agent(config), **server_options)
    serve_in_thread(server)
    try:
        yield LiveAgent(pki, root, server, restarts, ran)
    finally:
        server.shutdown()
        server.server_close()

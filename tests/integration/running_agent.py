"""One running agent for integration tests, and clients for it in every role.

``running_agent`` (or the ``start_agent`` fixture of ``tests/integration/conftest.py``)
generates a PKI at test time (a node certificate and one client per role: vera
is a viewer, otto an operator, ada an admin), serves a temporary root on
127.0.0.1 (an ephemeral port) from a thread, and stops it at the end. What the
agent runs is injected: every command is recorded and answered by ``answers``
(``ostree admin status`` shows one booted deployment by default), restarts are
recorded, the boot entry sync does nothing.

The clients: ``call`` (``http.client`` over mutual TLS, JSON in and out),
``client`` (the ops ``NodeClient``), and a raw HTTP/1.1 client (``connect``,
``exchange``, ``request``, ``read_answers``) that writes exactly the bytes a
test gives it and reads answers the way a careful client would (status line,
fields, ``Content-Length`` body), so tests can send what ``http.client`` never
would: ambiguous framing, hidden second requests, bodies a parser chokes on.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.agent.deployments import SyncHook
from atoll.agent.server import Agent, AgentConfig, AgentServer, serve_in_thread
from atoll.agent.shell import Runtime
from atoll.ops.client import NodeClient
from atoll.pki import Kind, Role, init, issue, revoke

BOOTED = "* atoll " + "ab" * 32 + ".0\n    Version: 1.0.0\n"
OS_RELEASE = "IMAGE_ID=atoll\nIMAGE_VERSION=1.0.0\n"
ROLES = (("vera", Role.VIEWER), ("otto", Role.OPERATOR), ("ada", Role.ADMIN))
STATUS = ["ostree", "admin", "status"]  # read-only: not counted as a change

# What a command the agent runs prints (the recording runner answers with it).
Answers = Callable[[list[str]], str]


def booted(argv: list[str]) -> str:
    """One booted deployment for ``ostree admin status``; nothing for the rest."""
    return BOOTED if argv == STATUS else ""


@dataclass
class Answer:
    status: int
    fields: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RunningAgent:
    pki: Path
    root: Path
    server: AgentServer
    restarts: list[list[str]] = field(default_factory=list)  # systemctl try-restart
    commands: list[list[str]] = field(default_factory=list)  # all but `ostree admin status`

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self, client: str | None = "ada") -> ssl.SSLContext:
        """Trusts the fleet CA; presents ``client``'s certificate (none for None)."""
        ctx = ssl.create_default_context(cafile=self.pki / "ca.crt")
        if client is not None:
            ctx.load_cert_chain(
                self.pki / "clients" / f"{client}.crt", self.pki / "clients" / f"{client}.key"
            )
        return ctx

    def call(
        self, client: str | None, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, Any]:
        """One request through ``http.client``: the status and the JSON answer."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context(client), timeout=10
        )
        try:
            payload = None if body is None else json.dumps(body).encode()
            if payload is not None:  # JSON bodies are accepted only as such
                headers = {"Content-Type": "application/json", **headers}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def client(self, name: str) -> NodeClient:
        crt, key = self.pki / f"clients/{name}.crt", self.pki / f"clients/{name}.key"
        return NodeClient(self.endpoint, self.pki / "ca.crt", crt, key)

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
        """Every audit record on disk (each line must parse)."""
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


def make_pki(
    pki: Path,
    clients: Sequence[tuple[str, Role]] = ROLES,
    revoked: Sequence[tuple[str, Role]] = (),
) -> Path:
    """A fleet CA at ``pki`` with the node ``node1``, ``clients`` (name, role), and
    ``revoked`` clients (issued, then revoked)."""
    init(pki)
    issue(pki, "node1", kind=Kind.NODE)
    for name, role in (*clients, *revoked):
        issue(pki, name, kind=Kind.CLIENT, role=role)
    for name, _ in revoked:
        revoke(pki, name)
    return pki


@contextmanager
def running_agent(
    tmp: Path,
    *,
    answers: Answers = booted,
    sync: SyncHook | None = None,
    clients: Sequence[tuple[str, Role]] = ROLES,
    revoked: Sequence[tuple[str, Role]] = (),
    crl: bool = True,
    os_release: str | None = OS_RELEASE,
    hostname: str | None = "node1",
    shell_runtime: Runtime | None = None,
    max_shells: int | None = None,
    **server_options: Any,
) -> Iterator[RunningAgent]:
    """An agent serving ``tmp/root`` on an ephemeral port with its PKI in ``tmp/pki``.

    ``clients`` and ``revoked``: as ``make_pki``'s (the agent loads the CRL at
    start); ``os_release`` and ``hostname`` are written into the root unless None;
    ``crl``: whether the agent checks the CA's revocation list; ``server_options``
    go to ``AgentServer`` (``limits``, ``log``).
    """
    pki, root = make_pki(tmp / "pki", clients, revoked), tmp / "root"
    if os_release is not None:
        (root / "usr/lib").mkdir(parents=True)
        (root / "usr/lib/os-release").write_text(os_release)
    if hostname is not None:
        (root / "etc").mkdir(parents=True)
        (root / "etc/hostname").write_text(f"{hostname}\n")
    restarts: list[list[str]] = []
    ran: list[list[str]] = []

    def commands(argv: Sequence[str], **_: Any) -> str:
        if list(argv) != STATUS:
            ran.append(list(argv))
        return answers(list(argv))

    config = AgentConfig(
        root=root,
        audit_path=root / "var/lib/atoll/audit.jsonl",
        cert=pki / "nodes/node1.crt",
        key=pki / "nodes/node1.key",
        ca=pki / "ca.crt",
        crl=pki / "crl.pem" if crl else None,
        runner=lambda argv: restarts.append(list(argv)),
        commands=commands,
        sync=sync or (lambda: None),
    )
    if shell_runtime is not None:
        config = dataclasses.replace(config, shell_runtime=shell_runtime)
    if max_shells is not None:
        config = dataclasses.replace(config, max_shells=max_shells)
    server = AgentServer(("127.0.0.1", 0), Agent(config), **server_options)
    serve_in_thread(server)
    try:
        yield RunningAgent(pki, root, server, restarts, ran)
    finally:
        server.shutdown()
        server.server_close()

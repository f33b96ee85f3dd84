"""A watch over https (TLS 1.3) against a loopback server that holds its answer.

TLS 1.3 servers send session tickets right after the handshake: the socket is
readable long before the answer. The watch must keep waiting (the watch's time,
not the client's short timeout), read the whole answer, refuse an oversized one,
and drop the request when interrupted.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.pki import Kind, init, issue
from atoll.wire.fleet import MAX_WATCH_ANSWER, Desired, FleetClient, FleetError

ETAG = "e1"
CHANGED = Desired("2.0", True, False, "", "pool-a", etag="e2")


class HoldingServer:
    """Answers each request (read up to its blank line) after ``hold`` seconds with
    ``body``; TLS 1.3 only, so session tickets precede the answer."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # so that close() ends the loop at once
        self.stopping = threading.Event()
        self.port = self.listener.getsockname()[1]
        self.hold = 0.0
        self.body = b""
        self.closed = threading.Event()  # set when a client went away first
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(None)
            with raw, self.context.wrap_socket(raw, server_side=True) as conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                conn.settimeout(self.hold)
                try:  # hold the answer; a client that hangs up ends the wait early
                    if conn.recv(1) == b"":
                        self.closed.set()
                        continue
                except (TimeoutError, ssl.SSLError, OSError):
                    pass
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
                )
                try:
                    conn.sendall(head.encode() + self.body)
                except OSError:
                    self.closed.set()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HoldingServer]:
    pki = tmp_path / "pki"
    ca = init(pki)
    server_cert = issue(pki, "node-1", kind=Kind.NODE)  # valid for 127.0.0.1
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the client's default context trusts it
    held = HoldingServer(server_cert.cert, server_cert.key)
    yield held
    held.close()


def test_a_held_answer_over_tls13_arrives_after_the_clients_own_timeout(
    server: HoldingServer,
) -> None:
    server.hold, server.body = 1.5, json.dumps(CHANGED.to_json()).encode()
    client = FleetClient(f"https://127.0.0.1:{server.port}", timeout=0.5)
    assert client.watch("node-1", ETAG, timeout=10) == CHANGED


def test_an_oversized_answer_is_refused(server: HoldingServer) -> None:
    server.hold, server.body = 0.1, b" " * (MAX_WATCH_ANSWER + 1)
    client = FleetClient(f"https://127.0.0.1:{server.port}")
    with pytest.raises(FleetError, match="larger than"):
        client.watch("node-1", ETAG, timeout=10)


def test_an_interrupted_watch_drops_the_request(server: HoldingServer) -> None:
    server.hold, server.body = 30.0, json.dumps(CHANGED.to_json()).encode()
    client = FleetClient(f"https://127.0.0.1:{server.port}")
    stop_at = time.monotonic() + 0.5
    answer = client.watch(
        "node-1", ETAG, timeout=30, interrupted=lambda: time.monotonic() > stop_at, check_every=0.1
    )
    assert answer is None
    assert server.closed.wait(10), "the server never saw the client hang up"

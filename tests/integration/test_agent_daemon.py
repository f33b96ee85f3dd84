"""``python3 -m atoll.agent`` as a process: Unix socket (0600, acts as admin), TLS, sd_notify."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from atoll.pki import Kind, Role, init, issue
from atoll.process import start

SRC = Path(__file__).resolve().parents[2] / "src"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(self.unix_path))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    pki, tls = tmp_path / "pki", tmp_path / "tls"
    init(pki)
    node = issue(pki, "n1", kind=Kind.NODE)
    issue(pki, "ada", kind=Kind.CLIENT, role=Role.ADMIN)
    tls.mkdir()
    for src, dst in ((node.cert, "node.crt"), (node.key, "node.key"), (pki / "ca.crt", "ca.crt")):
        (tls / dst).write_bytes(src.read_bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notify = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(20)
    sock = tmp_path / "run/agent.sock"
    stderr = (tmp_path / "agent.log").open("wb")
    proc = start(
        [
            sys.executable,
            "-m",
            "atoll.agent",
            "--root",
            str(tmp_path / "root"),
            "--tls-dir",
            str(tls),
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--socket",
            str(sock),
            "--audit",
            str(tmp_path / "audit.jsonl"),
            "--record-commands",
            str(tmp_path / "commands"),
        ],
        env={**os.environ, "PYTHONPATH": str(SRC), "NOTIFY_SOCKET": str(notify)},
        stderr=stderr,
    )
    try:
        assert listener.recv(100) == b"READY=1"
        yield sock, pki, port
    finally:
        assert proc.stop(grace=10) == 0  # SIGTERM: a clean exit
        listener.close()
        stderr.close()


def test_unix_socket_is_root_only_and_acts_as_admin(daemon: tuple[Path, Path, int]) -> None:
    sock, _, _ = daemon
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    conn = _UnixConnection(sock)
    body = json.dumps({"hostname": "local"})
    conn.request("PATCH", "/v1/settings", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    assert answer["hostname"] == "local"
    commands = (sock.parent.parent / "commands").read_text().splitlines()
    assert commands == ['["systemctl", "try-restart", "systemd-hostnamed.service"]']
    assert (sock.parent.parent / "root/etc/hostname").read_text() == "local\n"
    conn.close()
    conn = _UnixConnection(sock)
    conn.request("GET", "/v1/audit")
    records = json.loads(conn.getresponse().read())["records"]
    conn.close()
    assert records[0]["who"] == "unix:root" and records[0]["result"] == 200


def test_tls_listener_serves_enrolled_clients(daemon: tuple[Path, Path, int]) -> None:
    _, pki, port = daemon
    ctx = ssl.create_default_context(cafile=pki / "ca.crt")
    ctx.load_cert_chain(pki / "clients/ada.crt", pki / "clients/ada.key")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.request("GET", "/v1/status")
    assert conn.getresponse().status == 200
    conn.close()


def test_recorded_upgrade_touches_nothing_on_the_host(daemon: tuple[Path, Path, int]) -> None:
    sock, _, _ = daemon
    conn = _UnixConnection(sock)
    body = json.dumps({"to": "atoll/x86_64/minimal"})
    conn.request("POST", "/v1/upgrade", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 200, answer
    commands = [json.loads(c) for c in (sock.parent.parent / "commands").read_text().splitlines()]
    assert commands == [
        ["ostree", "admin", "status"],
        ["ostree", "admin", "deploy", "atoll/x86_64/minimal"],
        ["ostree", "admin", "status"],
        ["atoll.agent.bootentries", "sync_node"],
    ]

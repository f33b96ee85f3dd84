"""The fleet CA's certificates in real mutual-TLS handshakes on loopback.

Roles travel in the subject, revoked clients and other CAs are refused, and a
revocation whose write failed revoked nothing. (Issuing and revoking as data:
tests/unit/test_agent_pki.py.)
"""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from atoll.cli import main
from atoll.pki import Kind, Role, init, issue, revoke
from tests.unit.test_agent_pki import failing_disk


def _handshake(pki: Path, client: str) -> dict[str, object] | str:
    """A real mutual-TLS handshake on loopback; the server checks the CRL like the agent."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki / "nodes" / "n1.crt", pki / "nodes" / "n1.key")
    server_ctx.load_verify_locations(pki / "ca.crt")
    server_ctx.load_verify_locations(pki / "crl.pem")
    server_ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=pki / "ca.crt")
    client_ctx.load_cert_chain(pki / "clients" / f"{client}.crt", pki / "clients" / f"{client}.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                result["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except ssl.SSLError as e:
            # The verify message says why (revoked, unknown CA); the reason is generic.
            result["error"] = f"{e.reason} {getattr(e, 'verify_message', '')}"

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.recv(2)
    except (ssl.SSLError, ConnectionError):
        pass
    thread.join(10)
    listener.close()
    if "error" in result:
        return str(result["error"])
    peer = result["peer"]
    assert isinstance(peer, dict)
    return peer


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA with the node n1 (the server side of every handshake), made by the CLI."""
    root = tmp_path / "pki"
    assert main(["pki", "init", str(root)]) == 0
    assert main(["pki", "issue", str(root), "--node", "n1"]) == 0
    return root


def test_role_travels_in_the_subject_and_keys_are_private(pki: Path) -> None:
    done = issue(pki, "alice", kind=Kind.CLIENT, role=Role.OPERATOR)
    assert stat.S_IMODE(done.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    peer = _handshake(pki, "alice")
    assert isinstance(peer, dict)
    subject = dict(pair for rdn in peer["subject"] for pair in rdn)  # type: ignore[attr-defined]
    assert subject == {"commonName": "alice", "organizationalUnitName": "operator"}


def test_revoked_client_is_refused_by_the_handshake(pki: Path) -> None:
    assert main(["pki", "issue", str(pki), "--client", "bob", "--role", "admin"]) == 0
    assert isinstance(_handshake(pki, "bob"), dict)
    assert main(["pki", "revoke", str(pki), "bob"]) == 0
    refused = _handshake(pki, "bob")
    assert isinstance(refused, str) and "REVOKED" in refused.upper()


def test_other_ca_is_refused(tmp_path: Path, pki: Path) -> None:
    other = tmp_path / "other"
    init(other)
    issue(other, "mallory", kind=Kind.CLIENT, role=Role.ADMIN)
    (pki / "clients").mkdir(exist_ok=True)
    for ext in ("crt", "key"):
        (pki / "clients" / f"mallory.{ext}").write_bytes(
            (other / "clients" / f"mallory.{ext}").read_bytes()
        )
    refused = _handshake(pki, "mallory")
    assert isinstance(refused, str) and "CERTIFICATE" in refused.upper()


def test_a_failed_revocation_leaves_the_index_and_the_crl(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    issue(pki, "grace", kind=Kind.CLIENT, role=Role.ADMIN)
    files = {name: (pki / name).read_bytes() for name in ("index.json", "crl.pem")}
    with monkeypatch.context() as m:
        failing_disk(m)
        with pytest.raises(OSError, match="Input/output error"):
            revoke(pki, "grace")
    assert {name: (pki / name).read_bytes() for name in files} == files
    assert not [p.name for p in pki.iterdir() if p.name.endswith(".tmp")]
    assert isinstance(_handshake(pki, "grace"), dict)  # not revoked after all

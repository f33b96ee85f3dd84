"""The fleet's certificate authority: the credentials the agent's mutual TLS checks.

Host side only (it uses ``cryptography``); the node never holds the CA key.
A PKI directory is plain files an operator can inspect with ``openssl``::

    ca.key  ca.crt  crl.pem  index.json
    clients/<name>.key  clients/<name>.crt     (clientAuth, role in the subject OU)
    nodes/<name>.key    nodes/<name>.crt       (serverAuth, SAN: name, localhost, 127.0.0.1)

The role travels in the certificate's subject ``organizationalUnitName`` so the
agent can read it with nothing but :meth:`ssl.SSLSocket.getpeercert`. Revocation
is a CRL signed by the CA; the agent loads it with ``VERIFY_CRL_CHECK_LEAF``.
``index.json`` records every serial issued (name, kind, role, revoked) so a
revocation by name needs no certificate file. Every file is written atomically
and durably (:func:`atoll.durable.write_atomic`); keys are 0600 from their
first byte and never overwritten: issuing a name twice is an input error.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atoll.durable import write_atomic
from atoll.errors import AtollError, InputError

CA_DAYS = 3650
LEAF_DAYS = 825


class Role(StrEnum):
    """What a client may do; the agent maps each verb to the least role allowed."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Kind(StrEnum):
    CLIENT = "client"
    NODE = "node"


class _IndexEntry(TypedDict):
    serial: int
    name: str
    kind: str
    role: str
    revoked: bool


@dataclass(frozen=True)
class Issued:
    """Where a freshly issued credential was written."""

    name: str
    kind: Kind
    role: Role | None
    serial: int
    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    # exclusive: a key is never silently replaced; 0600 from the first byte.
    write_atomic(path, data, mode=0o600, exclusive=True)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    except FileNotFoundError as e:
        raise InputError(
            f"{pki}: not a PKI directory ({e.filename} missing)",
            hint=f"atoll pki init {pki}",
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(f"{pki / 'ca.key'}: not an EC private key")
    return cert, key


def _read_index(pki: Path) -> list[_IndexEntry]:
    path = pki / "index.json"
    try:
        raw: list[_IndexEntry] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AtollError(f"{path}: cannot read the index of issued certificates: {e}") from e
    return raw


def _write_index(pki: Path, entries: list[_IndexEntry]) -> None:
    write_atomic(pki / "index.json", json.dumps(entries, indent=2) + "\n")


def init(pki: Path, *, common_name: str = "atoll fleet CA") -> Path:
    """Create a CA (key, self-signed certificate, empty CRL) in a new directory."""
    if (pki / "ca.key").exists():
        raise InputError(f"{pki}: already holds a CA (ca.key exists)")
    pki.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(pki / "ca.key", _key_pem(key))
    write_atomic(pki / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write_index(pki, [])
    _write_crl(pki, cert, key, [])
    return pki / "ca.crt"


def _write_crl(
    pki: Path,
    ca: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    entries: list[_IndexEntry],
) -> None:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=LEAF_DAYS))
    )
    for entry in entries:
        if entry["revoked"]:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(entry["serial"])
                .revocation_date(now)
                .build()
            )
    crl = builder.sign(key, hashes.SHA256())
    write_atomic(pki / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))


def _valid_name(name: str) -> str:
    if not name or len(name) > 63 or not all(c.isalnum() or c in "-_." for c in name):
        raise InputError(f"name {name!r}: use 1-63 letters, digits, '-', '_' or '.'")
    if name.startswith("."):
        raise InputError(f"name {name!r}: must not start with '.'")
    return name


def issue(
    pki: Path,
    name: str,
    *,
    kind: Kind,
    role: Role | None = None,
    days: int = LEAF_DAYS,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """Issue a client certificate (with a role) or a node server certificate."""
    _valid_name(name)
    if kind is Kind.CLIENT and role is None:
        raise InputError(f"client {name!r}: --role is required (admin, operator or viewer)")
    if kind is Kind.NODE and role is not None:
        raise InputError(f"node {name!r}: a node certificate carries no role")
    ca, ca_key = _load_ca(pki)
    entries = _read_index(pki)
    folder = pki / ("clients" if kind is Kind.CLIENT else "nodes")
    folder.mkdir(exist_ok=True)
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    if key_path.exists():
        raise InputError(f"{key_path}: already issued (revoke it first, then pick a new name)")
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if role is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role.value))
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    serial = x509.random_serial_number()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if kind is Kind.CLIENT:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    entries.append(
        {
            "serial": serial,
            "name": name,
            "kind": kind.value,
            "role": role.value if role else "",
            "revoked": False,
        }
    )
    _write_index(pki, entries)
    return Issued(name, kind, role, serial, cert_path, key_path)


def revoke(pki: Path, name: str, *, kind: Kind = Kind.CLIENT) -> list[int]:
    """Revoke every certificate issued under ``name``; rewrite the CRL. Returns the serials."""
    ca, ca_key = _load_ca(pki)
    entries = _read_index(pki)
    hits = [e for e in entries if e["name"] == name and e["kind"] == kind.value]
    if not hits:
        raise InputError(f"{pki / 'index.json'}: no {kind.value} named {name!r} was issued")
    for entry in hits:
        entry["revoked"] = True
    _write_index(pki, entries)
    _write_crl(pki, ca, ca_key, entries)
    return [e["serial"] for e in hits]

"""The local control plane's PKI: what certificates it needs (a pure plan), then the files.

The cluster CA signs every certificate but one. As kubeadm does, a separate
front-proxy CA signs the API server's front-proxy client certificate: the
controllers' delegated authentication reads that CA (the request-header CA)
from the API server and logs an error every 10 s while it is missing, and it
must not be the client CA (any client certificate could then claim to be the
proxy). There is no etcd CA: etcd listens on loopback without TLS. The
controller-manager signs node
client certificates with the same CA (``--cluster-signing-*``), so a kubelet's
bootstrap-issued certificate is trusted by the API server's ``--client-ca-file``.

Keys are ECDSA P-256 (quick to generate, accepted by every component, the
service-account signer included). Private keys are written 0600. Bootstrap
tokens have Kubernetes' format ``[a-z0-9]{6}.[a-z0-9]{16}`` (id.secret).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atoll.durable import write_atomic
from atoll.errors import InputError

CA_DAYS = 3650
LEAF_DAYS = 365
TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


@dataclass(frozen=True)
class BootstrapToken:
    id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"


def new_token(choice: Callable[[str], str] = secrets.choice) -> BootstrapToken:
    """A fresh bootstrap token; ``choice`` picks one character (injected for tests)."""
    return BootstrapToken(
        "".join(choice(TOKEN_ALPHABET) for _ in range(6)),
        "".join(choice(TOKEN_ALPHABET) for _ in range(16)),
    )


def parse_token(text: str, *, source: str) -> BootstrapToken:
    found = TOKEN_RE.match(text.strip())
    if found is None:
        raise InputError(f"{source}: not a bootstrap token (expected [a-z0-9]{{6}}.[a-z0-9]{{16}})")
    return BootstrapToken(found.group(1), found.group(2))


@dataclass(frozen=True)
class CertSpec:
    """One certificate signed by the cluster CA: ``<name>.crt`` and ``<name>.key``."""

    name: str
    common_name: str
    organizations: tuple[str, ...] = ()
    server: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    issuer: str = "ca"  # or "front-proxy-ca"


def first_service_ip(service_cidr: str) -> str:
    """The ``kubernetes`` Service's address: the first host of the service range."""
    try:
        network = ipaddress.ip_network(service_cidr)
    except ValueError as e:
        raise InputError(f"service range {service_cidr!r}: {e}") from e
    return str(network.network_address + 1)


def apiserver_names(cluster_domain: str) -> tuple[str, ...]:
    return (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{cluster_domain}",
        "localhost",
    )


def plan_certificates(
    *, service_cidr: str, guest_address: str, cluster_domain: str = "cluster.local"
) -> list[CertSpec]:
    """Every leaf certificate the control plane uses (the CA and the service-account
    key pair are separate: they are not leaves)."""
    return [
        CertSpec(
            "apiserver",
            "kube-apiserver",
            server=True,
            dns=apiserver_names(cluster_domain),
            ips=("127.0.0.1", first_service_ip(service_cidr), guest_address),
        ),
        # The API server's client certificate towards kubelets (logs, exec, port-forward).
        CertSpec("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
        CertSpec("admin", "atoll-admin", ("system:masters",)),
        CertSpec("controller-manager", "system:kube-controller-manager"),
        CertSpec("scheduler", "system:kube-scheduler"),
        CertSpec("front-proxy-client", "front-proxy-client", issuer="front-proxy-ca"),
    ]


CAS = {"ca": "atoll-kubernetes-ca", "front-proxy-ca": "atoll-front-proxy-ca"}


# -- apply: keys and certificates on disk ---------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name([*parts, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class ClusterCa:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _new_ca(common_name: str, now: datetime.datetime) -> ClusterCa:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ClusterCa(cert, key)


def issue(
    ca: ClusterCa, spec: CertSpec, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if spec.server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(spec.common_name, spec.organizations))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if spec.dns or spec.ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), key


def _write_pair(pki: Path, name: str, cert: x509.Certificate, key_pem: bytes) -> None:
    write_atomic(pki / f"{name}.key", key_pem, mode=0o600)
    write_atomic(pki / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def generate(
    pki: Path, certificates: Sequence[CertSpec], *, now: datetime.datetime | None = None
) -> None:
    """Write the CAs, every certificate of ``certificates`` and the service-account key
    pair into ``pki`` (created 0700). Run once per cluster directory."""
    when = now if now is not None else _now()
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    cas = {name: _new_ca(common_name, when) for name, common_name in CAS.items()}
    for name, ca in cas.items():
        _write_pair(pki, name, ca.cert, _key_pem(ca.key))
    for spec in certificates:
        cert, key = issue(cas[spec.issuer], spec, when)
        _write_pair(pki, spec.name, cert, _key_pem(key))
    sa = ec.generate_private_key(ec.SECP256R1())
    write_atomic(pki / "sa.key", _key_pem(sa), mode=0o600)
    public = sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(pki / "sa.pub", public, mode=0o644)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

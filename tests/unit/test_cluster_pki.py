"""The control plane's PKI: token format, the certificate plan, and the files it writes."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atoll.cluster import pki
from atoll.errors import InputError


def test_a_new_token_has_kubernetes_format() -> None:
    characters = itertools.cycle("a1")
    token = pki.new_token(lambda alphabet: next(characters))
    assert str(token) == "a1a1a1.a1a1a1a1a1a1a1a1"
    assert pki.TOKEN_RE.match(str(pki.new_token()))
    assert pki.new_token() != pki.new_token()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("abcdef.0123456789abcdef", ("abcdef", "0123456789abcdef")),
        ("  abcdef.0123456789abcdef\n", ("abcdef", "0123456789abcdef")),
        ("ABCDEF.0123456789abcdef", None),  # lower case only
        ("abcde.0123456789abcdef", None),  # id of 5
        ("abcdef.0123456789abcde", None),  # secret of 15
        ("abcdef0123456789abcdef", None),  # no dot
        ("abcdef.0123456789abcde_", None),
        ("", None),
    ],
)
def test_parse_token(text: str, parsed: tuple[str, str] | None) -> None:
    if parsed is None:
        with pytest.raises(InputError, match=r"join\.json: token: not a bootstrap token"):
            pki.parse_token(text, source="join.json: token")
    else:
        assert pki.parse_token(text, source="t") == pki.BootstrapToken(*parsed)


@pytest.mark.parametrize(
    ("cidr", "first"),
    [("10.96.0.0/12", "10.96.0.1"), ("10.0.0.0/24", "10.0.0.1"), ("fd00::/108", "fd00::1")],
)
def test_first_service_ip(cidr: str, first: str) -> None:
    assert pki.first_service_ip(cidr) == first


def test_a_bad_service_range_names_itself() -> None:
    with pytest.raises(InputError, match=r"service range '10\.96\.0\.1/12'"):
        pki.first_service_ip("10.96.0.1/12")


PLAN = {
    spec.name: spec
    for spec in pki.plan_certificates(service_cidr="10.96.0.0/12", guest_address="10.0.2.100")
}


@pytest.mark.parametrize(
    ("name", "common_name", "organizations", "server", "issuer"),
    [
        ("apiserver", "kube-apiserver", (), True, "ca"),
        (
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            ("system:masters",),
            False,
            "ca",
        ),
        ("admin", "atoll-admin", ("system:masters",), False, "ca"),
        ("controller-manager", "system:kube-controller-manager", (), False, "ca"),
        ("scheduler", "system:kube-scheduler", (), False, "ca"),
        ("front-proxy-client", "front-proxy-client", (), False, "front-proxy-ca"),
    ],
)
def test_the_plan(
    name: str, common_name: str, organizations: tuple[str, ...], server: bool, issuer: str
) -> None:
    spec = PLAN[name]
    assert (spec.common_name, spec.organizations, spec.server, spec.issuer) == (
        common_name,
        organizations,
        server,
        issuer,
    )


def test_the_api_server_is_named_as_every_client_dials_it() -> None:
    spec = PLAN["apiserver"]
    assert set(spec.ips) == {"127.0.0.1", "10.96.0.1", "10.0.2.100"}
    assert {"kubernetes", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} <= set(
        spec.dns
    )
    other = pki.plan_certificates(service_cidr="10.0.0.0/16", guest_address="192.168.1.5")
    assert set(other[0].ips) == {"127.0.0.1", "10.0.0.1", "192.168.1.5"}


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_generate_writes_a_chain_that_verifies(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)
    pki.generate(tmp_path / "pki", list(PLAN.values()), now=now)
    d = tmp_path / "pki"
    assert d.stat().st_mode & 0o777 == 0o700
    cas = {name: _load(d / f"{name}.crt") for name in pki.CAS}
    for name, spec in PLAN.items():
        cert = _load(d / f"{name}.crt")
        cert.verify_directly_issued_by(cas[spec.issuer])
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == spec.common_name
        organizations = [
            a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        ]
        assert tuple(organizations) == spec.organizations
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        wanted = ExtendedKeyUsageOID.SERVER_AUTH if spec.server else ExtendedKeyUsageOID.CLIENT_AUTH
        assert list(usage) == [wanted]
        assert cert.not_valid_after_utc == now + datetime.timedelta(days=pki.LEAF_DAYS)
        assert (d / f"{name}.key").stat().st_mode & 0o777 == 0o600
    served = _load(d / "apiserver.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("10.0.2.100") in served.value.get_values_for_type(x509.IPAddress)
    for ca in cas.values():
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cas["ca"].subject != cas["front-proxy-ca"].subject
    assert (d / "sa.key").stat().st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in (d / "sa.pub").read_bytes()


def test_keys_match_their_certificates(tmp_path: Path) -> None:
    pki.generate(tmp_path, [PLAN["admin"]])
    key = load_pem_private_key((tmp_path / "admin.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == _load(tmp_path / "admin.crt").public_key()

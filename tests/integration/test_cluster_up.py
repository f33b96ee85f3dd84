"""``atoll cluster up``: a real etcd, kube-apiserver, kube-controller-manager and
kube-scheduler on 127.0.0.1, and a client doing what a kubelet's TLS bootstrap does.

One control plane serves the module (``up`` takes about 8 s here); the CLI test
starts its own in another directory, interrupted once and then for real.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from atoll.cluster.build import KubernetesBinaries
from atoll.cluster.pki import BootstrapToken, parse_token
from atoll.cluster.up import (
    TOKEN_TTL,
    ClusterError,
    ControlPlane,
    bootstrap_objects,
    create_objects,
    expiration,
    running_cluster,
    status,
    up,
)
from atoll.process import DEVNULL, run, start
from tests.kube_api import Api, admin_api

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/etcd").exists(), reason="etcd-server is not installed"
)

KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


@pytest.fixture(scope="module")
def plane(
    kubernetes_binaries: KubernetesBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    with running_cluster(tmp_path_factory.mktemp("cluster"), kubernetes_binaries.binaries) as cp:
        yield cp


def _node_csr(name: str) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM) as a kubelet makes them for its client certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}"),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def _bootstrap(plane: ControlPlane, name: str, into: Path) -> Path:
    """TLS bootstrap with the join token: CSR, wait for approval and the certificate."""
    bootstrapper = Api(plane, token=plane.token)
    key_pem, csr_pem = _node_csr(name)
    code, created = bootstrapper.call(
        "POST",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "node-csr-"},
            "spec": {
                "request": base64.b64encode(csr_pem).decode(),
                "signerName": KUBELET_SIGNER,
                "usages": ["digital signature", "client auth"],
            },
        },
    )
    assert code == 201, created
    path = f"/apis/certificates.k8s.io/v1/certificatesigningrequests/{created['metadata']['name']}"
    deadline = time.monotonic() + 30
    while True:
        code, csr = bootstrapper.call("GET", path)
        assert code == 200, csr
        issued = csr.get("status", {}).get("certificate")
        if issued:
            break
        assert time.monotonic() < deadline, f"CSR not approved and signed in 30 s: {csr}"
        time.sleep(0.2)
    conditions = {c["type"]: c["status"] for c in csr["status"]["conditions"]}
    assert conditions.get("Approved") == "True"
    cert = x509.load_pem_x509_certificate(base64.b64decode(issued))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        f"system:node:{name}"
    )
    (into / f"{name}.crt").write_bytes(base64.b64decode(issued))
    (into / f"{name}.key").write_bytes(key_pem)
    return into / f"{name}.crt"


def test_the_api_server_is_ready_and_serves_the_guest_address(plane: ControlPlane) -> None:
    context = ssl.create_default_context(cafile=os.fspath(plane.ca_file))
    ready = plane.server + "/readyz"
    with urllib.request.urlopen(ready, context=context, timeout=5) as answer:  # noqa: S310
        assert answer.read() == b"ok"
    served = ssl.get_server_certificate(("127.0.0.1", plane.config.ports["kube-apiserver"]))
    names = (
        x509.load_pem_x509_certificate(served.encode())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "10.96.0.1", plane.config.guest_address} <= addresses
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)
    join = json.loads(plane.join_file.read_text())
    assert join["server"] == f"https://{plane.config.guest_address}:{join['port']}"
    assert join["token"] == plane.token
    assert join["ca"].encode() == plane.ca_pem


def test_every_component_is_healthy_and_a_second_up_says_it_runs(
    plane: ControlPlane, kubernetes_binaries: KubernetesBinaries
) -> None:
    components = status(plane.directory)
    assert [(c.component, c.healthy) for c in components] == [
        ("etcd", True),
        ("kube-apiserver", True),
        ("kube-controller-manager", True),
        ("kube-scheduler", True),
    ]
    with pytest.raises(ClusterError, match="already running"):
        up(plane.directory, kubernetes_binaries.binaries)
    assert all(c.healthy for c in status(plane.directory))


def test_a_node_bootstraps_with_the_token_and_may_change_only_itself(
    plane: ControlPlane, tmp_path: Path
) -> None:
    admin = admin_api(plane)
    code, _ = admin.call("POST", "/api/v1/nodes", {"metadata": {"name": "other-node"}})
    assert code == 201
    cert = _bootstrap(plane, "node-a", tmp_path)
    node = Api(plane, cert=cert)
    code, created = node.call("POST", "/api/v1/nodes", {"metadata": {"name": "node-a"}})
    assert code == 201, created
    label = {"metadata": {"labels": {"atoll.dev/version": "1"}}}
    code, patched = node.call("PATCH", "/api/v1/nodes/node-a", label)
    assert code == 200, patched
    assert patched["metadata"]["labels"]["atoll.dev/version"] == "1"
    code, refused = node.call("PATCH", "/api/v1/nodes/other-node", label)
    assert code == 403, refused
    assert "not allowed to modify node" in refused["message"]
    code, refused = node.call("POST", "/api/v1/nodes", {"metadata": {"name": "node-b"}})
    assert code == 403, refused


def test_a_wrong_token_is_refused(plane: ControlPlane) -> None:
    token_id = plane.token.split(".")[0]
    for wrong in (f"{token_id}.0000000000000000", "abcdef.0123456789abcdef"):
        code, answer = Api(plane, token=wrong).call("GET", "/api/v1/namespaces")
        assert code == 401, answer


def test_list_then_watch_from_the_list_version(plane: ControlPlane) -> None:
    """What kopf and client-go informers do: list, then watch from its resourceVersion."""
    admin = admin_api(plane)
    code, listed = admin.call("GET", "/api/v1/namespaces")
    assert code == 200
    code, _ = admin.call("POST", "/api/v1/namespaces", {"metadata": {"name": "watched"}})
    assert code == 201
    version = listed["metadata"]["resourceVersion"]
    events = admin.lines(
        f"/api/v1/namespaces?watch=1&allowWatchBookmarks=true&resourceVersion={version}"
        "&timeoutSeconds=5"
    )
    first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "watched")


def _etcd_version(plane: ControlPlane) -> tuple[int, ...]:
    url = f"http://127.0.0.1:{plane.config.ports['etcd']}/version"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return tuple(int(part) for part in json.loads(answer.read())["etcdserver"].split("."))


def test_streaming_lists_need_an_etcd_with_progress_notify(plane: ControlPlane) -> None:
    """``sendInitialEvents`` needs etcd's RequestWatchProgress, which the API server trusts
    from etcd 3.4.31 / 3.5.13 on; Debian 12's 3.4.23 is older (docs/kubernetes.md)."""
    version = _etcd_version(plane)
    supported = version >= (3, 5, 13) or (3, 4, 31) <= version < (3, 5, 0)
    events = admin_api(plane).lines(
        "/api/v1/namespaces?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true&timeoutSeconds=5"
    )
    first = next(events)
    if supported:
        assert first["type"] == "ADDED"
    else:
        assert first["type"] == "ERROR"
        assert "RequestWatchProgress" in first["object"]["message"]


def _token_expiration(admin: Api, plane: ControlPlane) -> tuple[int, float | None]:
    name = f"bootstrap-token-{plane.token.split('.')[0]}"
    code, secret = admin.call("GET", f"/api/v1/namespaces/kube-system/secrets/{name}")
    if code != 200:
        return code, None
    text = base64.b64decode(secret["data"]["expiration"]).decode()
    return code, datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_the_bootstrap_token_expires_and_each_up_renews_it(plane: ControlPlane) -> None:
    """``up`` gave the token a day; once expired it is refused and the token cleaner
    deletes its Secret; what ``up`` creates again (or replaces, when it exists) is a
    token valid for another day. Runs last of the module's cluster tests: it expires
    the token."""
    admin = admin_api(plane)
    _, expires = _token_expiration(admin, plane)
    assert expires is not None
    assert TOKEN_TTL - 600 < expires - time.time() <= TOKEN_TTL
    name = f"bootstrap-token-{plane.token.split('.')[0]}"
    past = {"stringData": {"expiration": "2020-01-01T00:00:00Z"}}
    admin.ok("PATCH", f"/api/v1/namespaces/kube-system/secrets/{name}", past)
    deadline = time.monotonic() + 30
    while _token_expiration(admin, plane)[0] != 404:
        assert time.monotonic() < deadline, "the token cleaner left the expired token"
        time.sleep(0.2)
    # Refused once the API server's authentication cache (about 10 s) forgets it.
    while (code := Api(plane, token=plane.token).call("GET", "/api/v1/namespaces")[0]) != 401:
        assert code == 403, code
        assert time.monotonic() < deadline + 30, "the expired token is still accepted"
        time.sleep(0.5)

    context = ssl.create_default_context(cafile=os.fspath(plane.ca_file))
    context.load_cert_chain(plane.layout.pki / "admin.crt", plane.layout.pki / "admin.key")
    soon = time.time() + 120
    create_objects(
        plane.server, context, bootstrap_objects(parse_token_of(plane), expiration(soon, 0))
    )
    assert _token_expiration(admin, plane) == (200, float(int(soon)))
    create_objects(
        plane.server, context, bootstrap_objects(parse_token_of(plane), expiration(soon))
    )
    assert _token_expiration(admin, plane) == (200, float(int(soon + TOKEN_TTL)))  # replaced
    code, _ = Api(plane, token=plane.token).call("GET", "/api/v1/namespaces")
    assert code == 403  # known again (a bootstrapper may not list namespaces)


def parse_token_of(plane: ControlPlane) -> BootstrapToken:
    return parse_token(plane.token, source="test")


# -- the command line: interrupted, then up, status, down ---------------------------------


def _atoll(*args: str | Path) -> list[str | Path]:
    return [sys.executable, "-m", "atoll", *args]


def _processes_under(directory: Path) -> list[str]:
    """Every process whose command line names ``directory`` (the components all do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fspath(directory) in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def test_the_cli_stops_what_it_started_interrupted_or_not(
    tmp_path: Path, kubernetes_binaries: KubernetesBinaries
) -> None:
    # kubernetes_binaries: the CLI finds them in the cache (built in the background).
    directory = tmp_path / "cli-cluster"
    state = directory / "state.json"
    interrupted = start(_atoll("cluster", "up", "--dir", directory), stdout=DEVNULL, stderr=DEVNULL)
    with interrupted:
        deadline = time.monotonic() + 60
        while not (state.exists() and "kube-apiserver" in state.read_text()):
            assert interrupted.poll() is None, "up ended before starting the API server"
            assert time.monotonic() < deadline, "up did not start the API server in 60 s"
            time.sleep(0.05)
        interrupted.send_signal(signal.SIGTERM)
        assert interrupted.wait(60) == 130
    assert _processes_under(directory) == []
    assert not state.exists()

    started = run(_atoll("cluster", "up", "--dir", directory))
    assert b"cluster up in" in started.stdout
    pids = [entry["pid"] for entry in json.loads(state.read_text())]
    assert len(pids) == 4
    assert len(_processes_under(directory)) == 4
    healthy = run(_atoll("cluster", "status", "--dir", directory))
    assert healthy.stdout.decode().count("healthy") == 4
    again = run(_atoll("cluster", "up", "--dir", directory), check=False)
    assert again.returncode == 1
    assert b"already running" in again.stderr
    stopped = run(_atoll("cluster", "down", "--dir", directory))
    assert stopped.stdout.decode().count("stopped ") == 4
    assert _processes_under(directory) == []
    after = run(_atoll("cluster", "status", "--dir", directory), check=False)
    assert after.returncode == 1
    assert after.stdout.decode().count("stopped") == 4

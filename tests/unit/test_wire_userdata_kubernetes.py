"""User data [kubernetes]: the join data, validated strictly on both sides, and the files
first boot writes for the kubelet (which kubelet.service waits for)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from atoll.agent import provision
from atoll.agent.provision import NodeFacts, kubelet_configuration, observe, plan
from atoll.compose import kubernetes as image
from atoll.wire.userdata import MAX_PEM, KubernetesJoin, UserDataError, parse_user_data

# Not real certificates: PEM blocks whose base64 is a DER SEQUENCE (30 03 02 01 01),
# which is what the format checks; the kubelet and the API server check the rest.
DER = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
CERT = f"-----BEGIN CERTIFICATE-----\n{DER}\n-----END CERTIFICATE-----\n"
KEY = f"-----BEGIN EC PRIVATE KEY-----\n{DER}\n-----END EC PRIVATE KEY-----\n"
TOKEN = "abcdef.0123456789abcdef"  # noqa: S105 (a test token of the right form)
NODE = '[node]\nhostname = "node-1"\n'


def _toml(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these values


def _kubernetes(**keys: str) -> bytes:
    lines = "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())
    return (NODE + "[kubernetes]\n" + lines).encode()


def _joined(**keys: str) -> KubernetesJoin:
    join = parse_user_data(_kubernetes(**keys), "node.toml").kubernetes
    assert join is not None
    return join


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (
            {"server": "https://10.0.2.2:6443", "ca": CERT, "token": TOKEN},
            KubernetesJoin("https://10.0.2.2:6443", CERT, token=TOKEN),
        ),
        (
            {
                "server": "https://[fd00::1]:6443/k8s",
                "ca": CERT + CERT,
                "certificate": CERT,
                "key": KEY,
            },
            KubernetesJoin("https://[fd00::1]:6443/k8s", CERT + CERT, certificate=CERT, key=KEY),
        ),
        (  # CRLF line ends and no final newline are normalised
            {
                "server": "https://api.example",
                "ca": CERT.replace("\n", "\r\n").rstrip(),
                "token": TOKEN,
            },
            KubernetesJoin("https://api.example", CERT, token=TOKEN),
        ),
    ],
)
def test_join_data_is_parsed(keys: dict[str, str], expected: KubernetesJoin) -> None:
    assert _joined(**keys) == expected


GOOD = {"server": "https://10.0.2.2:6443", "ca": CERT, "token": TOKEN}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"server": "http://10.0.2.2:6443"},
            "[kubernetes].server: 'http://10.0.2.2:6443' must be an https:// URL",
        ),
        ({"server": "https://10.0.2.2:6443 x"}, "[kubernetes].server:"),
        ({"server": "https://10.0.2.2:6443\n"}, "[kubernetes].server:"),
        ({"server": "https://10.0.2.2:99999"}, "port 99999 is not 1-65535"),
        ({"server": "https://" + "a" * 3000}, "... (3010 characters)"),
        ({"server": None}, "[kubernetes].server: required"),
        ({"ca": None}, "[kubernetes].ca: required: a PEM CERTIFICATE"),
        ({"ca": "hello"}, "[kubernetes].ca: not a PEM CERTIFICATE 'hello': expected -----BEGIN"),
        ({"ca": KEY}, "[kubernetes].ca: not a PEM CERTIFICATE"),
        ({"ca": CERT + "trailing\n"}, "and nothing else"),
        ({"ca": CERT.replace(DER, "!!!!")}, "expected -----BEGIN"),
        ({"ca": CERT.replace(DER, "AAAA")}, "is not a DER structure"),
        ({"ca": CERT.replace(DER, DER[:-1])}, "bad base64"),
        ({"ca": CERT.replace("\n", "\n\x1b", 1)}, "control or non-ASCII character"),
        ({"ca": CERT + "\n" * MAX_PEM}, f"at most {MAX_PEM} characters"),
        ({"token": "abcdef.0123456789ABCDEF"}, "[kubernetes].token: must be a bootstrap token"),
        ({"token": "abcdef0123456789abcdef"}, "[kubernetes].token: must be a bootstrap token"),
        ({"token": None}, "give either token"),
        ({"certificate": CERT, "key": KEY}, "not both or neither"),
        ({"port": "6443"}, "[kubernetes].port: unknown key"),
    ],
)
def test_bad_join_data_is_named_by_key(change: dict[str, str | None], message: str) -> None:
    keys = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(UserDataError) as exc:
        parse_user_data(_kubernetes(**keys), "node.toml")
    assert any(message in line for line in str(exc.value).splitlines()), str(exc.value)
    assert all(line.startswith("node.toml: ") for line in str(exc.value).splitlines())


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"certificate": CERT}, "[kubernetes].key: required"),
        ({"key": KEY}, "[kubernetes].certificate: required"),
        ({"certificate": CERT + CERT, "key": KEY}, "2 blocks, expected one"),
        ({"certificate": CERT, "key": CERT}, "[kubernetes].key: not a PEM EC PRIVATE KEY or"),
    ],
)
def test_a_client_certificate_needs_its_key(keys: dict[str, str], message: str) -> None:
    with pytest.raises(UserDataError, match=r"node\.toml") as exc:
        parse_user_data(_kubernetes(server="https://api", ca=CERT, **keys), "node.toml")
    assert message in str(exc.value)


def test_a_bad_key_or_token_is_never_quoted() -> None:
    secret = "-----BEGIN PRIVATE KEY-----\nsecretsecret\n-----END PRIVATE KEY-----\n"  # noqa: S105
    with pytest.raises(UserDataError) as exc:
        parse_user_data(
            _kubernetes(server="https://api", ca=CERT, certificate=CERT, key=secret), "n.toml"
        )
    assert "secretsecret" not in str(exc.value)
    with pytest.raises(UserDataError) as exc:
        bad = {"server": "https://api", "ca": CERT, "token": "secret.token"}
        parse_user_data(_kubernetes(**bad), "n.toml")
    assert "secret.token" not in str(exc.value)


def test_an_empty_kubernetes_section_is_an_error_not_an_absence() -> None:
    with pytest.raises(UserDataError) as raised:
        parse_user_data(_kubernetes(), "node.toml")
    assert "[kubernetes].server: required" in str(raised.value)
    assert "[kubernetes].ca: required" in str(raised.value)
    assert parse_user_data(NODE.encode(), "node.toml").kubernetes is None


def test_joining_needs_the_nodes_host_name() -> None:
    text = f'[kubernetes]\nserver = "https://api"\nca = {_toml(CERT)}\ntoken = "{TOKEN}"\n'
    with pytest.raises(UserDataError, match=r"\[kubernetes\]: needs \[node\].hostname"):
        parse_user_data(text.encode(), "node.toml")


def test_a_bootstrap_token_becomes_a_bootstrap_kubeconfig() -> None:
    data = parse_user_data(_kubernetes(**GOOD), "node.toml")
    writes = {w.path: w for w in plan(data, NodeFacts(resolv_conf="/etc/resolv.conf"))}
    assert writes["etc/hostname"].content == b"node-1\n"
    assert writes["etc/kubernetes/pki/ca.crt"].content == CERT.encode()
    bootstrap = writes["etc/kubernetes/bootstrap-kubelet.conf"]
    assert bootstrap.mode == 0o600
    kubeconfig = json.loads(bootstrap.content)
    assert kubeconfig["clusters"][0]["cluster"] == {
        "server": "https://10.0.2.2:6443",
        "certificate-authority": "/etc/kubernetes/pki/ca.crt",
    }
    assert kubeconfig["users"][0]["user"] == {"token": TOKEN}
    assert kubeconfig["current-context"] == kubeconfig["contexts"][0]["name"]
    assert "etc/kubernetes/kubelet.conf" not in writes  # the kubelet writes it after its CSR
    config = json.loads(writes["var/lib/kubelet/config.yaml"].content)
    assert config == kubelet_configuration(NodeFacts(resolv_conf="/etc/resolv.conf"))


def test_a_pre_issued_certificate_becomes_the_kubelets_kubeconfig() -> None:
    join = {"server": "https://api:6443", "ca": CERT, "certificate": CERT, "key": KEY}
    writes = {w.path: w for w in plan(parse_user_data(_kubernetes(**join), "node.toml"))}
    assert "etc/kubernetes/bootstrap-kubelet.conf" not in writes
    kubelet = writes["etc/kubernetes/kubelet.conf"]
    assert kubelet.mode == 0o600
    user = json.loads(kubelet.content)["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]).decode() == CERT
    assert base64.b64decode(user["client-key-data"]).decode() == KEY


def test_the_kubelet_configuration() -> None:
    config = kubelet_configuration(NodeFacts())
    assert config["kind"] == "KubeletConfiguration"
    assert config["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert config["cgroupDriver"] == "systemd"
    assert config["containerRuntimeEndpoint"] == "unix:///run/containerd/containerd.sock"
    assert config["rotateCertificates"] is True and config["failSwapOn"] is False
    assert config["authentication"] == {
        "anonymous": {"enabled": False},
        "webhook": {"enabled": True},
        "x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"},
    }
    assert config["authorization"] == {"mode": "Webhook"}
    assert "staticPodPath" not in config
    assert config["resolvConf"] == ""  # no resolver file on the node: none for pods


def test_the_resolver_is_observed(tmp_path: Path) -> None:
    assert observe(tmp_path) == NodeFacts(resolv_conf=None)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    assert observe(tmp_path) == NodeFacts(resolv_conf="/etc/resolv.conf")


def test_the_agent_writes_what_the_image_waits_for() -> None:
    """Both sides take the paths from atoll.wire.kubelet; the unit names each."""
    assert "/" + provision.KUBELET_CONFIG == image.KUBELET_CONFIG
    assert "/" + provision.BOOTSTRAP_KUBECONFIG == image.BOOTSTRAP_KUBECONFIG
    assert "/" + provision.KUBECONFIG == image.KUBECONFIG
    for path in (image.KUBELET_CONFIG, image.BOOTSTRAP_KUBECONFIG, image.KUBECONFIG):
        assert path in image.KUBELET_SERVICE


def test_first_boot_applies_the_join_data(tmp_path: Path) -> None:
    user_data = tmp_path / "var/lib/atoll/user-data.toml"
    user_data.parent.mkdir(parents=True)
    user_data.write_bytes(_kubernetes(**GOOD))
    record = provision.provision(tmp_path, fw_cfg=tmp_path / "absent")
    applied = {a["path"] for a in record["applied"]}
    assert {"/etc/kubernetes/bootstrap-kubelet.conf", "/var/lib/kubelet/config.yaml"} <= applied
    bootstrap = tmp_path / "etc/kubernetes/bootstrap-kubelet.conf"
    assert bootstrap.stat().st_mode & 0o777 == 0o600
    assert json.loads(bootstrap.read_text())["users"][0]["user"]["token"] == TOKEN

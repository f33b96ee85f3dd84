"""``atoll cluster up``'s decisions: flags, health URLs, bootstrap objects, the join file,
the configuration file, and whether a recorded pid is still the process it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.cli import build_parser
from atoll.cluster import up as cp
from atoll.cluster.pki import BootstrapToken
from atoll.errors import InputError

LAYOUT = cp.Layout(Path("/c"))
PORTS = {
    "etcd": 2379,
    "etcd-peer": 2380,
    "kube-apiserver": 6443,
    "kube-controller-manager": 10257,
    "kube-scheduler": 10259,
}
TOKEN = BootstrapToken("abcdef", "0123456789abcdef")
CONFIG = cp.ClusterConfig(PORTS, TOKEN)
BIN = Path("/bin/k")


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(a.removeprefix("--").split("=", 1) for a in argv[1:])


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("data-dir", "/c/etcd"),
        ("listen-client-urls", "http://127.0.0.1:2379"),
        ("listen-peer-urls", "http://127.0.0.1:2380"),
        ("initial-cluster", "atoll=http://127.0.0.1:2380"),
    ],
)
def test_etcd_flags(flag: str, value: str) -> None:
    argv = cp.etcd_argv("/usr/bin/etcd", LAYOUT, PORTS)
    assert argv[0] == "/usr/bin/etcd"
    assert _flags(argv)[flag] == value


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("etcd-servers", "http://127.0.0.1:2379"),
        ("bind-address", "127.0.0.1"),
        ("secure-port", "6443"),
        ("advertise-address", "10.0.2.100"),
        ("authorization-mode", "Node,RBAC"),
        ("enable-admission-plugins", "NodeRestriction"),
        ("enable-bootstrap-token-auth", "true"),
        ("client-ca-file", "/c/pki/ca.crt"),
        ("tls-cert-file", "/c/pki/apiserver.crt"),
        ("requestheader-client-ca-file", "/c/pki/front-proxy-ca.crt"),
        ("service-account-issuer", "https://kubernetes.default.svc.cluster.local"),
        ("service-account-key-file", "/c/pki/sa.pub"),
        ("service-account-signing-key-file", "/c/pki/sa.key"),
        ("service-cluster-ip-range", "10.96.0.0/12"),
        ("cert-dir", "/c/serving/kube-apiserver"),
    ],
)
def test_apiserver_flags(flag: str, value: str) -> None:
    assert _flags(cp.apiserver_argv(BIN, LAYOUT, CONFIG))[flag] == value


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("kubeconfig", "/c/controller-manager.kubeconfig"),
        ("authentication-kubeconfig", "/c/controller-manager.kubeconfig"),
        ("bind-address", "127.0.0.1"),
        ("secure-port", "10257"),
        ("controllers", "*,bootstrapsigner,tokencleaner"),
        ("cluster-signing-cert-file", "/c/pki/ca.crt"),
        ("cluster-signing-key-file", "/c/pki/ca.key"),
        ("use-service-account-credentials", "true"),
        ("service-account-private-key-file", "/c/pki/sa.key"),
        ("cert-dir", "/c/serving/controller-manager"),
        ("leader-elect", "false"),
    ],
)
def test_controller_manager_flags(flag: str, value: str) -> None:
    assert _flags(cp.controller_manager_argv(BIN, LAYOUT, CONFIG))[flag] == value


def test_scheduler_flags() -> None:
    flags = _flags(cp.scheduler_argv(BIN, LAYOUT, CONFIG))
    assert flags["kubeconfig"] == "/c/scheduler.kubeconfig"
    assert (flags["bind-address"], flags["secure-port"]) == ("127.0.0.1", "10259")
    assert flags["cert-dir"] == "/c/serving/scheduler"


@pytest.mark.parametrize(
    ("component", "url"),
    [
        ("etcd", "http://127.0.0.1:2379/health"),
        ("kube-apiserver", "https://127.0.0.1:6443/readyz"),
        ("kube-controller-manager", "https://127.0.0.1:10257/healthz"),
        ("kube-scheduler", "https://127.0.0.1:10259/healthz"),
    ],
)
def test_health_url(component: str, url: str) -> None:
    assert cp.health_url(component, PORTS) == url


def test_every_component_listens_on_loopback_only() -> None:
    argvs = [
        cp.etcd_argv("etcd", LAYOUT, PORTS),
        cp.apiserver_argv(BIN, LAYOUT, CONFIG),
        cp.controller_manager_argv(BIN, LAYOUT, CONFIG),
        cp.scheduler_argv(BIN, LAYOUT, CONFIG),
    ]
    for argv in argvs:
        for name, value in _flags(argv).items():
            if name in {"bind-address", "listen-client-urls", "listen-peer-urls"}:
                assert "127.0.0.1" in value, (argv[0], name)


def test_extra_apiserver_flags_come_last_so_they_override() -> None:
    extra = ["--max-requests-inflight=3", "--profiling=true", "--enable-priority-and-fairness"]
    argv = cp.apiserver_argv(BIN, LAYOUT, CONFIG, extra)
    assert argv[-3:] == extra
    assert "--profiling=false" in argv  # atoll's own, then the override after it
    assert argv.index("--profiling=false") < argv.index("--profiling=true")


@pytest.mark.parametrize("arg", ["max-requests-inflight=3", "-v=2", "--", "--a b=1", ""])
def test_an_extra_apiserver_flag_must_be_one_flag(arg: str) -> None:
    with pytest.raises(InputError, match="--apiserver-arg"):
        cp.check_apiserver_args([arg])


def test_the_cli_takes_extra_apiserver_flags() -> None:
    args = build_parser().parse_args(
        ["cluster", "up", "--apiserver-arg=--max-requests-inflight=3", "--apiserver-arg=--v=2"]
    )
    assert args.apiserver_arg == ["--max-requests-inflight=3", "--v=2"]
    assert build_parser().parse_args(["cluster", "up"]).apiserver_arg == []


@pytest.mark.parametrize(
    ("now", "ttl", "expires"),
    [
        (1_700_000_000.0, cp.TOKEN_TTL, "2023-11-15T22:13:20Z"),  # 24 h after 2023-11-14T22:13:20Z
        (1_700_000_000.9, 60.0, "2023-11-14T22:14:20Z"),
    ],
)
def test_the_token_expires_a_ttl_after_up(now: float, ttl: float, expires: str) -> None:
    assert cp.expiration(now, ttl) == expires


def test_the_bootstrap_token_secret() -> None:
    (path, secret), *_ = cp.bootstrap_objects(TOKEN, "2023-11-15T22:13:20Z")
    assert path == "/api/v1/namespaces/kube-system/secrets"
    assert secret["metadata"] == {"name": "bootstrap-token-abcdef", "namespace": "kube-system"}
    assert secret["type"] == "bootstrap.kubernetes.io/token"
    data = secret["stringData"]
    assert (data["token-id"], data["token-secret"]) == ("abcdef", "0123456789abcdef")
    assert data["usage-bootstrap-authentication"] == data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"].startswith("system:bootstrappers:")
    assert data["expiration"] == "2023-11-15T22:13:20Z"
    assert "Secret" in cp.REPLACED_KINDS  # each `up` moves the expiration of an existing one


@pytest.mark.parametrize(
    ("role", "group"),
    [
        ("system:node-bootstrapper", "system:bootstrappers"),
        (
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            "system:bootstrappers",
        ),
        ("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes"),
    ],
)
def test_the_bootstrap_bindings(role: str, group: str) -> None:
    objects = cp.bootstrap_objects(TOKEN, "2023-11-15T22:13:20Z")
    bindings = [body for path, body in objects if path == cp.RBAC]
    found = [b for b in bindings if b["roleRef"]["name"] == role]
    assert len(found) == 1
    assert found[0]["roleRef"]["kind"] == "ClusterRole"
    assert found[0]["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}
    ]


def test_the_join_document() -> None:
    join = cp.join_document(CONFIG, b"-----BEGIN CERTIFICATE-----\n")
    assert join == {
        "server": "https://10.0.2.100:6443",
        "ca": "-----BEGIN CERTIFICATE-----\n",
        "token": "abcdef.0123456789abcdef",
        "guest_address": "10.0.2.100",
        "port": 6443,
        "host_server": "https://127.0.0.1:6443",
    }


def test_the_kubeconfig_embeds_everything() -> None:
    doc = json.loads(cp.kubeconfig("https://127.0.0.1:6443", b"CA", b"CERT", b"KEY", "admin"))
    assert doc["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority-data": "Q0E=",
    }
    assert doc["users"][0] == {
        "name": "admin",
        "user": {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"},
    }
    assert doc["current-context"] == "atoll"


def test_the_configuration_round_trips() -> None:
    text = json.dumps(CONFIG.as_json())
    assert cp.parse_config(text, source="cluster.json") == CONFIG


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "format 2, expected 1"),
        ({"token": "nope"}, "token: not a bootstrap token"),
        ({"ports": {"etcd": 1}}, "not a cluster configuration"),
        ({"service_cidr": None, "ports": "x"}, "not a cluster configuration"),
    ],
)
def test_a_bad_configuration_names_its_file(change: dict[str, Any], message: str) -> None:
    raw = {**CONFIG.as_json(), **change}
    with pytest.raises(InputError, match=r"^/c/cluster\.json: ") as error:
        cp.parse_config(json.dumps(raw), source="/c/cluster.json")
    assert message in str(error.value)


STAT = "4242 (kube-apiserver) S 1 4242 4242 0 -1 4194560 1 0 0 0 1 2 0 0 20 0 9 0 777 1 2 3"


@pytest.mark.parametrize(
    ("stat", "parsed"),
    [
        (STAT, ("S", 777)),
        (STAT.replace("(kube-apiserver)", "(a) b (c)"), ("S", 777)),  # spaces and parentheses
        (STAT.replace(") S ", ") Z "), ("Z", 777)),
    ],
)
def test_proc_start_time(stat: str, parsed: tuple[str, int]) -> None:
    assert cp.proc_start_time(stat) == parsed


RECORDED = cp.Recorded("etcd", 4242, 777, "boot-a")


@pytest.mark.parametrize(
    ("stat", "boot_id", "running"),
    [
        (("S", 777), "boot-a", True),
        (("R", 777), "boot-a", True),
        (None, "boot-a", False),  # no such pid
        (("Z", 777), "boot-a", False),  # ended, not yet reaped
        (("S", 778), "boot-a", False),  # another process got the pid
        (("S", 777), "boot-b", False),  # the host rebooted: same start time, another process
    ],
)
def test_is_running(stat: tuple[str, int] | None, boot_id: str, running: bool) -> None:
    assert cp.is_running(RECORDED, stat, boot_id) is running


def test_the_verbs_parse() -> None:
    parser = build_parser()
    up = parser.parse_args(["cluster", "up"])
    assert up.dir == cp.DEFAULT_DIR
    assert up.timeout == cp.READY_TIMEOUT
    for verb in ("up", "down", "status"):
        args = parser.parse_args(["cluster", verb, "--dir", "x"])
        assert args.dir == Path("x")
        assert callable(args.handler)


def test_status_of_a_directory_without_a_cluster(tmp_path: Path) -> None:
    with pytest.raises(cp.ClusterError, match="no cluster here"):
        cp.status(tmp_path)


def test_down_with_nothing_recorded_stops_nothing(tmp_path: Path) -> None:
    assert cp.down(tmp_path) == []


class _FakeChild:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


def _starter(tmp_path: Path, now: list[float]) -> cp._Starter:
    layout = cp.Layout(tmp_path)
    layout.log("kube-apiserver").parent.mkdir(parents=True)
    lines = "".join(f"line {n}\n" for n in range(30))
    layout.log("kube-apiserver").write_text(lines + "E0101 etcd unreachable\n")

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return cp._Starter(layout, CONFIG, 5.0, lambda: now[0], sleep, [], [])


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (None, r"kube-apiserver: not ready after 5 s \(https://127.0.0.1:6443/readyz\)"),
        (1, "kube-apiserver exited with status 1 while starting"),
    ],
)
def test_a_component_that_does_not_come_up_is_named_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int | None, message: str
) -> None:
    monkeypatch.setattr(cp, "healthy", lambda *args: False)
    now = [100.0]
    starter = _starter(tmp_path, now)
    with pytest.raises(cp.ClusterError, match=message) as error:
        starter.wait_ready("kube-apiserver", _FakeChild(code))  # type: ignore[arg-type]
    text = str(error.value)
    assert "kube-apiserver.log" in text
    assert text.endswith("E0101 etcd unreachable")
    assert "line 29" in text
    assert "line 5\n" not in text  # only the tail
    if code is None:
        assert 105.0 < now[0] <= 105.5  # gave up just after its timeout
    else:
        assert now[0] == 100.0  # an exit is seen at once


def test_a_component_that_comes_up_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter([False, False, True])
    monkeypatch.setattr(cp, "healthy", lambda *args: next(answers))
    now = [0.0]
    _starter(tmp_path, now).wait_ready("kube-apiserver", _FakeChild(None))  # type: ignore[arg-type]
    assert now[0] == pytest.approx(0.4)

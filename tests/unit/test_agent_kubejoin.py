"""The join data's verdicts: what a probe's outcome means (a table), when to look again,
where the join data is found, and the watch that keeps the verdict (a fake probe)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
from pathlib import Path

import pytest

from atoll.agent import kubejoin
from atoll.agent.kubejoin import (
    JoinData,
    JoinDataError,
    JoinReport,
    JoinState,
    classify,
    retry_delay,
)
from atoll.agent.kubenode import JoinWatch
from atoll.agent.server import Agent, AgentConfig, Identity, Role
from atoll.wire import kubelet

SERVER = "https://10.0.2.100:6443"
CA = Path("/etc/kubernetes/pki/ca.crt")


def _untrusted() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    return error


@pytest.mark.parametrize(
    ("outcome", "said", "state", "message"),
    [
        (201, "system:bootstrap:abcdef (groups x)", JoinState.OK,
         f"{SERVER}: credentials accepted as system:bootstrap:abcdef (groups x)"),
        (200, "", JoinState.OK, f"{SERVER}: credentials accepted"),
        (401, "Unauthorized", JoinState.REFUSED,
         f"{SERVER}: credentials refused (HTTP 401, unknown or expired): Unauthorized"),
        (403, "forbidden:\n  no", JoinState.REFUSED,
         f"{SERVER}: credentials refused (HTTP 403, not allowed): forbidden: no"),
        (500, "", JoinState.FAILED, f"{SERVER}: unexpected answer HTTP 500: no message"),
        (ConnectionRefusedError(111, "Connection refused"), "", JoinState.UNREACHABLE,
         f"{SERVER}: unreachable: connection refused"),
        (TimeoutError("timed out"), "", JoinState.UNREACHABLE,
         f"{SERVER}: unreachable: no answer in time"),
        (socket.gaierror(-2, "Name or service not known"), "", JoinState.UNREACHABLE,
         f"{SERVER}: unreachable: cannot resolve its host name"),
        (OSError(113, "No route to host"), "", JoinState.UNREACHABLE,
         f"{SERVER}: unreachable: No route to host"),
        (_untrusted(), "", JoinState.UNTRUSTED,
         f"{SERVER}: server certificate not trusted by the cluster CA {CA}: "
         "unable to get local issuer certificate"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "",
         JoinState.FAILED, f"{SERVER}: TLS handshake failed: "),
        (JoinDataError("cluster CA (/ca.crt): no PEM"), "", JoinState.INVALID,
         "join data: cluster CA (/ca.crt): no PEM"),
        (ValueError("bad"), "", JoinState.FAILED, f"{SERVER}: ValueError: bad"),
    ],
)  # fmt: skip
def test_what_a_probes_outcome_means(
    outcome: int | BaseException, said: str, state: JoinState, message: str
) -> None:
    got_state, got_message = classify(outcome, server=SERVER, ca=CA, said=said)
    assert got_state is state
    if isinstance(outcome, ssl.SSLError) and state is JoinState.FAILED:
        assert got_message.startswith(message)  # OpenSSL's own words follow
    else:
        assert got_message == message


@pytest.mark.parametrize(
    ("state", "failures", "delay"),
    [
        (JoinState.OK, 0, kubejoin.OK_DELAY),
        (JoinState.JOINED, 0, kubejoin.JOINED_DELAY),
        (JoinState.REFUSED, 1, 5.0),
        (JoinState.UNREACHABLE, 2, 10.0),
        (JoinState.UNTRUSTED, 4, 40.0),
        (JoinState.REFUSED, 6, kubejoin.MAX_DELAY),
        (JoinState.REFUSED, 10_000, kubejoin.MAX_DELAY),
    ],
)
def test_the_retry_schedule_backs_off_after_failures(
    state: JoinState, failures: int, delay: float
) -> None:
    assert retry_delay(state, failures) == delay


def _kubeconfig(root: Path, name: str, user: dict[str, str], server: str = SERVER) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"clusters": [{"cluster": {"server": server}}], "users": [{"user": user}]}
    path.write_text(json.dumps(config))
    return path


def test_join_data_is_a_token_or_a_client_certificate(tmp_path: Path) -> None:
    assert kubejoin.find_join_data(tmp_path) is None  # a node that never joins
    source = _kubeconfig(tmp_path, kubelet.KUBECONFIG, {
        "client-certificate-data": base64.b64encode(b"CERT").decode(),
        "client-key-data": base64.b64encode(b"KEY").decode(),
    })  # fmt: skip
    ca = tmp_path / kubelet.CA
    assert kubejoin.find_join_data(tmp_path) == JoinData(SERVER, ca, None, b"CERT", b"KEY", source)
    source.write_text("apiVersion: v1\n")  # the kubelet's own (YAML), after it joined
    assert kubejoin.find_join_data(tmp_path) is None
    source = _kubeconfig(tmp_path, kubelet.BOOTSTRAP_KUBECONFIG, {"token": "abcdef.0123"})
    assert kubejoin.find_join_data(tmp_path) == JoinData(SERVER, ca, "abcdef.0123", None, None,
                                                         source)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ('{"clusters": []}', "no cluster server or user"),
        (json.dumps({"clusters": [{"cluster": {"server": "http://x"}}], "users": [{"user": {}}]}),
         "server 'http://x' is not an https:// URL"),
        (json.dumps({"clusters": [{"cluster": {"server": SERVER}}], "users": [{"user": {}}]}),
         "neither a token nor client certificate data"),
    ],
)  # fmt: skip
def test_unusable_join_data_is_an_error_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / kubelet.BOOTSTRAP_KUBECONFIG
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(JoinDataError, match=f"^{path}: {problem}"):
        kubejoin.find_join_data(tmp_path)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_keeps_each_verdict_says_each_change_once_and_stops_probing_once_joined(
    tmp_path: Path,
) -> None:
    _kubeconfig(tmp_path, kubelet.BOOTSTRAP_KUBECONFIG, {"token": "abcdef.0123"})
    outcomes: list[tuple[int, str] | BaseException] = [
        ConnectionRefusedError(111, "refused"), ConnectionRefusedError(111, "refused"),
        (401, "Unauthorized"), (201, "system:bootstrap:abcdef"),
    ]  # fmt: skip
    probed: list[JoinData] = []

    def probe(data: JoinData) -> tuple[int, str]:
        probed.append(data)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    clock, logged = _Clock(), list[str]()
    watch = JoinWatch(tmp_path, probe=probe, clock=clock, log=logged.append)
    assert kubejoin.read_report(tmp_path) is None
    assert watch.once() == 5.0
    assert watch.once() == 10.0  # backing off
    clock.now = 1010.0
    assert watch.once() == 20.0
    assert kubejoin.read_report(tmp_path) == {
        "state": "refused",
        "server": SERVER,
        "message": f"{SERVER}: credentials refused (HTTP 401, unknown or expired): Unauthorized",
        "checked_at": 1010.0,
    }
    assert watch.once() == kubejoin.OK_DELAY
    assert [line.split(":")[1] for line in logged] == [" unreachable", " refused", " ok"]
    cert = tmp_path / kubejoin.CLIENT_CERT
    cert.parent.mkdir(parents=True)
    cert.write_text("PEM")  # the kubelet has its certificate: no more probes
    assert watch.once() == kubejoin.JOINED_DELAY
    assert watch.once() == kubejoin.JOINED_DELAY
    assert len(probed) == 4 and not outcomes
    report = kubejoin.read_report(tmp_path)
    assert report is not None and report["state"] == "joined"
    assert logged[-1] == f"kubernetes join: joined: {SERVER}: the kubelet has joined"


def test_the_watch_says_nothing_on_a_node_without_join_data_and_names_bad_join_data(
    tmp_path: Path,
) -> None:
    def probe(data: JoinData) -> tuple[int, str]:
        raise AssertionError("no probe without usable join data")

    watch = JoinWatch(tmp_path, probe=probe, log=lambda _: None)
    assert watch.once() == kubejoin.JOINED_DELAY
    assert kubejoin.read_report(tmp_path) is None
    (tmp_path / kubelet.BOOTSTRAP_KUBECONFIG).parent.mkdir(parents=True)
    (tmp_path / kubelet.BOOTSTRAP_KUBECONFIG).write_text("{")
    assert watch.once() == 5.0
    report = kubejoin.read_report(tmp_path)
    assert report is not None and report["state"] == "invalid"
    assert report["message"].endswith("bootstrap-kubelet.conf: not JSON")


def test_the_agents_status_carries_the_verdict(tmp_path: Path) -> None:
    config = AgentConfig(
        root=tmp_path,
        audit_path=tmp_path / "var/lib/atoll/audit.jsonl",
        cert=tmp_path / "none",
        key=tmp_path / "none",
        ca=tmp_path / "none",
        crl=None,
        runner=lambda _: None,
        commands=lambda argv, *, timeout: "",
        sync=lambda: None,
    )
    agent, who = Agent(config), Identity("vera", Role.VIEWER)
    assert agent.status(who, {}, {})["kubernetes"] is None  # never joins
    report = JoinReport(JoinState.UNTRUSTED, SERVER, f"{SERVER}: server certificate ...", 5.0)
    kubejoin.write_report(tmp_path, report)
    assert agent.status(who, {}, {})["kubernetes"] == {
        "state": "untrusted",
        "server": SERVER,
        "message": f"{SERVER}: server certificate ...",
        "checked_at": 5.0,
    }

"""``atoll node`` against a live agent: PKI made here, mutual TLS on loopback, end to end.

The agent serves a temporary root on 127.0.0.1 (ephemeral port) with recording
runners for systemctl/ostree (the real ostree path is exercised on a booted
VM). Every call goes through the ``atoll`` command line, as a user would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atoll.cli import main
from atoll.pki import Kind, Role, init, issue
from tests.integration.running_agent import RunningAgent


@dataclass
class Live:
    agent: RunningAgent
    other: Path  # another CA, with its own admin "eve"

    @property
    def root(self) -> Path:
        return self.agent.root

    @property
    def commands(self) -> list[list[str]]:
        return self.agent.commands

    def node(
        self, capsys: pytest.CaptureFixture[str], client: str | None, *argv: str, pki: Path | None
    ) -> tuple[int, Any, str]:
        pki = pki or self.agent.pki
        creds: list[str] = []
        if client is not None:
            creds = ["--cert", str(pki / f"clients/{client}.crt")]
            creds += ["--key", str(pki / f"clients/{client}.key")]
        code = main(["node", "--endpoint", self.agent.endpoint,
                     "--ca", str(self.agent.pki / "ca.crt"), *creds, *argv])  # fmt: skip
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else None, err


@pytest.fixture
def live(tmp_path: Path, start_agent: Callable[..., RunningAgent]) -> Live:
    other = tmp_path / "other-ca"
    init(other)
    issue(other, "eve", kind=Kind.CLIENT, role=Role.ADMIN)
    return Live(start_agent(revoked=[("rex", Role.ADMIN)], hostname=None), other)


def test_status_and_roles(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    code, status, _ = live.node(capsys, "vera", "status", pki=None)
    assert code == 0 and status["version"] == "1.0.0"
    assert status["deployments"][0]["booted"] and status["deployments"][0]["version"] == "1.0.0"
    code, _, err = live.node(capsys, "vera", "reboot", pki=None)
    assert code == 1 and "HTTP 403" in err and "needs role operator" in err
    code, _, err = live.node(capsys, "otto", "reboot", pki=None)
    assert code == 0 and ["systemctl", "reboot"] in live.commands
    code, records, _ = live.node(capsys, "ada", "audit", pki=None)
    assert code == 0
    assert [(r["who"], r["what"], r["result"]) for r in records["records"]][-2:] == [
        ("vera", "POST /v1/reboot", 403),
        ("otto", "POST /v1/reboot", 200),
    ]


@pytest.mark.parametrize(
    ("client", "which"), [(None, "no certificate"), ("eve", "another CA"), ("rex", "revoked")]
)
def test_bad_credentials_are_refused_and_audited(
    live: Live, capsys: pytest.CaptureFixture[str], client: str | None, which: str
) -> None:
    pki = live.other if client == "eve" else None
    code, _, err = live.node(capsys, client, "status", pki=pki)
    assert code == 1 and "GET https://127.0.0.1" in err, which
    code, records, _ = live.node(capsys, "ada", "audit", pki=None)
    refused = [r for r in records["records"] if r["result"] != 200]
    assert refused, f"{which}: the refusal was not audited"


def test_settings_round_trip_and_bad_input(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    code, after, _ = live.node(
        capsys, "otto", "settings", "set", "hostname=edge-7",
        'network.ntp.servers=["ntp1.example", "10.0.0.1"]', pki=None,
    )  # fmt: skip
    assert code == 0 and after["hostname"] == "edge-7"
    assert (live.root / "etc/hostname").read_text() == "edge-7\n"
    assert (
        "NTP=ntp1.example 10.0.0.1"
        in (live.root / "etc/systemd/timesyncd.conf.d/50-atoll.conf").read_text()
    )
    code, got, _ = live.node(capsys, "vera", "settings", "get", pki=None)
    assert got == after
    before = (live.root / "etc/atoll/settings.json").read_text()
    code, _, err = live.node(
        capsys, "otto", "settings", "set", "hostname=ok-name", "network.dns.servers=[\"x\"]",
        pki=None,
    )  # fmt: skip
    assert code == 1 and "HTTP 422" in err and "network.dns.servers" in err
    assert (live.root / "etc/atoll/settings.json").read_text() == before  # nothing half-applied
    code, _, err = live.node(capsys, "otto", "upgrade", "--to=bad/../ref", pki=None)
    assert code == 1 and "HTTP 400" in err and "to: " in err


def test_audit_verify_detects_tampering(live: Live, capsys: pytest.CaptureFixture[str]) -> None:
    live.node(capsys, "vera", "status", pki=None)
    code, verdict, _ = live.node(capsys, "vera", "audit", "--verify", pki=None)
    assert code == 0 and verdict["ok"]
    log = live.root / "var/lib/atoll/audit.jsonl"
    lines = log.read_text().splitlines()
    first = json.loads(lines[0])
    first["who"] = "mallory"
    lines[0] = json.dumps(first, sort_keys=True, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    code, verdict, _ = live.node(capsys, "vera", "audit", "--verify", pki=None)
    assert code == 1 and not verdict["ok"]
    assert any("hash mismatch" in p for p in verdict["problems"])

"""The agent API over real mutual TLS on loopback: roles, refusals audited, validation."""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from atoll.agent.server import openapi_document, tls_context
from atoll.pki import Kind, Role, init, issue, revoke
from tests.integration.running_agent import RunningAgent

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent-openapi.json"


@pytest.fixture
def node(start_agent: Callable[..., RunningAgent]) -> RunningAgent:
    release = 'ID=debian\nIMAGE_ID=atoll\nIMAGE_VERSION="1.2"\n'
    return start_agent(os_release=release, hostname=None)


def test_roles_decide_what_a_client_may_do(node: RunningAgent) -> None:
    status, body = node.call("vera", "GET", "/v1/status")
    assert status == 200 and body["image"] == "atoll" and body["version"] == "1.2"
    status, body = node.call("vera", "PATCH", "/v1/settings", {"hostname": "n2"})
    assert status == 403 and "needs role operator" in body["error"]
    status, body = node.call("otto", "PATCH", "/v1/settings", {"hostname": "n2"})
    assert status == 200 and body["hostname"] == "n2"
    assert node.call("ada", "GET", "/v1/settings")[1]["hostname"] == "n2"
    assert node.restarts == [["systemctl", "try-restart", "systemd-hostnamed.service"]]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"hostname": "Bad Name"}, 422, "hostname"),
        ({"kernel.args": "quiet"}, 422, "kernel.args"),
        ({"nope": 1}, 422, "nope: unknown setting"),
        ([1, 2], 400, "body: expected a JSON object"),
        ({}, 422, "non-empty"),
    ],
)
def test_bad_bodies_are_4xx_naming_the_field_and_change_nothing(
    node: RunningAgent, body: Any, status: int, names: str
) -> None:
    before = node.call("otto", "GET", "/v1/settings")[1]
    got, answer = node.call("otto", "PATCH", "/v1/settings", body)
    assert got == status and names in answer["error"]
    assert node.call("otto", "GET", "/v1/settings")[1] == before


def test_refused_credentials_are_audited(node: RunningAgent, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init(other)
    issue(other, "mallory", kind=Kind.CLIENT, role=Role.ADMIN)
    for ext in ("crt", "key"):
        (node.pki / f"clients/mallory.{ext}").write_bytes(
            (other / f"clients/mallory.{ext}").read_bytes()
        )
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    issue(node.pki, "expired", kind=Kind.CLIENT, role=Role.ADMIN, days=1, not_before=old)
    issue(node.pki, "gone", kind=Kind.CLIENT, role=Role.ADMIN)
    revoke(node.pki, "gone")
    # The CRL is loaded at start: a fresh context picks up the revocation.
    node.server.tls = tls_context(node.server.agent.config)
    for client in (None, "mallory", "expired", "gone"):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            node.call(client, "GET", "/v1/status")
    # The server's thread audits a refusal after the client has seen its error.
    deadline = time.monotonic() + 10
    while True:
        records = node.call("ada", "GET", "/v1/audit?limit=1000")[1]["records"]
        refusals = [r for r in records if r["what"] == "TLS handshake"]
        if len(refusals) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(refusals) == 4, refusals
    status, verdict = node.call("ada", "GET", "/v1/audit/verify")
    assert status == 200 and verdict["ok"], verdict
    records = node.call("ada", "GET", "/v1/audit?limit=1000")[1]["records"]
    reasons = " ".join(r["reason"] for r in refusals).lower()
    assert "expired" in reasons and "revoked" in reasons
    assert records[-1]["what"] == "GET /v1/audit/verify" and records[-1]["who"] == "ada"


def test_unknown_paths_and_bad_queries_are_4xx(node: RunningAgent) -> None:
    assert node.call("vera", "GET", "/v1/nothing")[0] == 404
    assert node.call("vera", "DELETE", "/v1/status")[0] == 405
    assert node.call("vera", "GET", "/v1/audit?limit=x")[0] == 400


def test_the_served_openapi_document_is_the_one_in_the_repo(node: RunningAgent) -> None:
    served = node.call("vera", "GET", "/v1/openapi.json")[1]
    assert served == openapi_document() == json.loads(DOC.read_text())

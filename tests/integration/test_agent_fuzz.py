"""Fuzz the agent API from its own OpenAPI document (schemathesis), over real mutual TLS.

Every operation gets generated bodies and queries, valid and invalid; the agent must
never answer 5xx and only with the statuses its document declares, and must audit
every answer (one record, with its status). The agent runs in-process on 127.0.0.1
with recording runners (no host service or ostree is touched). Raw, hostile bytes
are ``test_agent_http_fuzz.py``'s.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from atoll.agent.server import Agent, AgentConfig, AgentServer, openapi_document, serve_in_thread
from atoll.pki import Kind, Role, init, issue

# schemathesis 3.x uses jsonschema's RefResolver API, deprecated since jsonschema 4.18.
# Only those deprecations are silenced, only in this file (the suite runs with
# filterwarnings=error): around the import and loading, and in the test below.
JSONSCHEMA_DEPRECATIONS = r"jsonschema\.(exceptions\.)?Ref\w+ is deprecated"
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=JSONSCHEMA_DEPRECATIONS, category=DeprecationWarning)
    import schemathesis
    import schemathesis._hypothesis
    from schemathesis.specs.openapi.checks import status_code_conformance

    SCHEMA = schemathesis.from_dict(
        openapi_document(), data_generation_methods=schemathesis.DataGenerationMethod.all()
    )


BOOTED = "* atoll " + "ab" * 32 + ".0\n    Version: 1.0.0\n"


class Live:
    def __init__(self, base_url: str, pki: Path, audit: Path) -> None:
        self.base_url = base_url
        self.audit = audit
        self.verify = str(pki / "ca.crt")
        self.cert = (str(pki / "clients/ada.crt"), str(pki / "clients/ada.key"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    pki, root = tmp / "pki", tmp / "root"
    init(pki)
    issue(pki, "node1", kind=Kind.NODE)
    issue(pki, "ada", kind=Kind.CLIENT, role=Role.ADMIN)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("IMAGE_ID=atoll\nIMAGE_VERSION=1.0.0\n")

    def commands(argv: Sequence[str], *, timeout: float) -> str:
        return BOOTED if list(argv) == ["ostree", "admin", "status"] else ""

    config = AgentConfig(
        root=root,
        audit_path=root / "var/lib/atoll/audit.jsonl",
        cert=pki / "nodes/node1.crt",
        key=pki / "nodes/node1.key",
        ca=pki / "ca.crt",
        crl=pki / "crl.pem",
        runner=lambda argv: None,
        commands=commands,
        sync=lambda: None,
    )
    server = AgentServer(("127.0.0.1", 0), Agent(config))
    serve_in_thread(server)
    try:
        yield Live(f"https://127.0.0.1:{server.server_address[1]}", pki, config.audit_path)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.filterwarnings(f"ignore:{JSONSCHEMA_DEPRECATIONS}:DeprecationWarning")
@SCHEMA.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_never_fails_on_any_input(case: schemathesis.Case, live: Live) -> None:
    before = _records(live.audit)
    response = case.call(base_url=live.base_url, verify=live.verify, cert=live.cert, timeout=10)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    case.validate_response(response, checks=(status_code_conformance,))
    records = _records(live.audit)[len(before) :]
    assert [(r["who"], r["what"], r["result"]) for r in records] == [
        ("ada", f"{case.method} {case.formatted_path}", response.status_code)
    ], (case.method, case.path, case.body)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]

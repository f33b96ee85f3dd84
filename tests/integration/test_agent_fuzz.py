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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from atoll.agent.server import openapi_document
from atoll.pki import Role
from tests.integration.running_agent import RunningAgent, running_agent

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


class Live:
    def __init__(self, agent: RunningAgent) -> None:
        self.base_url = agent.endpoint
        self.audit = agent.root / "var/lib/atoll/audit.jsonl"
        self.verify = str(agent.pki / "ca.crt")
        self.cert = (str(agent.pki / "clients/ada.crt"), str(agent.pki / "clients/ada.key"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_agent(tmp, clients=[("ada", Role.ADMIN)], hostname=None) as agent:
        yield Live(agent)


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

"""The health check that the agent answers on its Unix socket, against a real socket.

(The other checks and the upgrade trial, with fake probes and fake time:
tests/unit/test_agent_health.py.)
"""

from __future__ import annotations

import socket
from pathlib import Path

from atoll.agent.health import check_agent


def test_agent_check_connects_to_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    assert not check_agent(path).ok
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        assert check_agent(path).ok

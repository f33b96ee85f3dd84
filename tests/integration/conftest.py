"""Fixtures shared by integration test modules (each owner adds theirs, additively)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fleet_etcd import etcd_cluster
from tests.integration.running_agent import RunningAgent, running_agent


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One three-member etcd cluster for the fleet tests of a session (``etcd://...``).

    Tests share it: each one works under its own key prefix. Tests that kill
    members start their own cluster (``tests/integration/test_fleet_etcd.py``)."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as url:
        yield url


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """Starts a running agent under ``tmp_path`` (options: ``running_agent``'s);
    every agent started is stopped at teardown."""
    started: list[RunningAgent] = []
    with ExitStack() as stack:

        def start(**options: Any) -> RunningAgent:
            tmp = tmp_path / f"agent{len(started)}"  # one directory per agent of a test
            started.append(stack.enter_context(running_agent(tmp, **options)))
            return started[-1]

        yield start

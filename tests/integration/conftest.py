"""Fixtures shared by integration test modules (each owner adds theirs, additively)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.fleet_etcd import etcd_cluster


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One three-member etcd cluster for the fleet tests of a session (``etcd://...``).

    Tests share it: each one works under its own key prefix. Tests that kill
    members start their own cluster (``tests/integration/test_fleet_etcd.py``)."""
    with etcd_cluster(tmp_path_factory.mktemp("etcd")) as url:
        yield url

"""A real three-member etcd cluster for the fleet tests, through the project's own
``scripts/etcd-cluster.sh`` (loopback, ephemeral ports, stopped by pid)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from atoll.process import run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "etcd-cluster.sh"


@contextmanager
def etcd_cluster(directory: Path) -> Iterator[str]:
    """Start the cluster in ``directory``; yields its ``etcd://`` store URL."""
    if not Path("/usr/bin/etcd").exists():
        pytest.skip("etcd-server is not installed")
    run([SCRIPT, "start", directory])
    try:
        yield "etcd://" + (directory / "endpoints").read_text().strip()
    finally:
        run([SCRIPT, "stop", directory], capture=False)

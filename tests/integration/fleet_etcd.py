"""A real three-member etcd cluster for the fleet tests, through the project's own
``scripts/etcd-cluster.sh`` (loopback, ephemeral ports, stopped by pid)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "etcd-cluster.sh"


@contextmanager
def etcd_cluster(directory: Path) -> Iterator[str]:
    """Start the cluster in ``directory``; yields its ``etcd://`` store URL."""
    if not Path("/usr/bin/etcd").exists():
        pytest.skip("etcd-server is not installed")
    subprocess.run([str(SCRIPT), "start", str(directory)], check=True, capture_output=True)
    try:
        yield "etcd://" + (directory / "endpoints").read_text().strip()
    finally:
        subprocess.run([str(SCRIPT), "stop", str(directory)], check=True)

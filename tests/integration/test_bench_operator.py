"""The operator's scale benchmark, small: 20 fake Nodes (kwok), reboots of 1 s.

It runs only where kwok is already in the cache (``make bench`` builds it); the
test never builds kwok. The figures are the benchmark's (docs/benchmarks.md);
here only what must hold at any size: the rollout completes, the recorded
history never shows more nodes unavailable than maxUnavailable, and the API
server counted the operator's requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atoll.bench.operator import run_benchmark
from atoll.cache import default_cache
from atoll.cluster import kwok
from atoll.cluster.build import KubernetesBinaries
from atoll.progress import PlainReporter

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/etcd").exists(), reason="etcd-server is not installed"
)


def test_a_small_rollout_over_kwok_nodes_stays_within_max_unavailable(
    kubernetes_binaries: KubernetesBinaries, tmp_path: Path
) -> None:
    if not (default_cache() / "kwok").is_dir():
        pytest.skip("kwok is not built (make bench builds it)")
    fake = kwok.cached(PlainReporter())
    if fake is None:
        pytest.skip("kwok is not built for this wrapper (make bench builds it)")
    result = run_benchmark(
        tmp_path,
        PlainReporter(),
        nodes=20,
        reboot_seconds=1.0,
        kubernetes=kubernetes_binaries.binaries,
        fake=fake,
    )
    figures: dict[str, Any] = result["figures"]["rollout"]  # type: ignore[index]
    assert figures["complete"], figures
    assert (figures["pool phase"], figures["pool updated"]) == ("Completed", 20)
    assert figures["max_unavailable"] == 2
    assert 1 <= figures["peak unavailable (history)"] <= 2
    assert figures["times above maxUnavailable (history)"] == 0
    assert figures["operator API requests during rollout"] > 0
    assert figures["agent or watch errors"] == 0, figures["first error"]

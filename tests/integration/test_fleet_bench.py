"""The fleet benchmark runs end to end at a small size (figures, not timings, are asserted)."""

from __future__ import annotations

from pathlib import Path

from atoll.fleet.bench import run_benchmark
from atoll.progress import PlainReporter


def test_small_benchmark(tmp_path: Path) -> None:
    result = run_benchmark(
        tmp_path, PlainReporter(), agents=30, rollout_nodes=10, reboot_seconds=0.1
    )
    figures = result["figures"]
    assert isinstance(figures, dict)
    burst, rollout = figures["registration burst"], figures["rollout"]
    assert burst["registered"] == 30 and burst["errors"] == 0
    assert rollout["updated"] == 10 and rollout["max_unavailable"] == 1
    assert rollout["ideal wave time (s)"] == 1.0
    targets = result["targets"]
    assert isinstance(targets, list) and targets[0]["met"] is True

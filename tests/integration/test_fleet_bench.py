"""The fleet benchmark runs end to end at a small size (figures, not timings, are asserted)."""

from __future__ import annotations

from pathlib import Path

from atoll.bench.fleet import run_benchmark
from atoll.progress import PlainReporter


def test_small_benchmark(tmp_path: Path) -> None:
    result = run_benchmark(
        tmp_path,
        PlainReporter(),
        agents=30,
        rollout_nodes=10,
        reboot_seconds=0.1,
        poll=0.01,
        scale_nodes=50,
    )
    figures = result["figures"]
    assert isinstance(figures, dict)
    burst, rollout, scale = figures["registration burst"], figures["rollout"], figures["scale"]
    assert burst["registered"] == 30 and burst["errors"] == 0
    assert rollout["updated (agents)"] == 10 and rollout["updated (controller)"] == 10
    assert rollout["max_unavailable"] == 1 and rollout["first failure"] is None
    assert rollout["ideal wave time (s)"] == 1.0
    assert scale["nodes in pool"] == 50 and scale["controller peak RSS (MB)"] > 0
    series = result["series"]
    assert isinstance(series, dict)
    timeline = series["rollout timeline"]
    assert timeline["updated"][0] == 0 and timeline["updated"][-1] == 10
    assert max(timeline["unavailable"]) <= 1  # maxUnavailable, seen from the agents
    targets = result["targets"]
    assert isinstance(targets, list) and targets[0]["met"] is True

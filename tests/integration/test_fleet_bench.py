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
    burst, scale = figures["registration burst"], figures["scale"]
    assert burst["registered"] == 30 and burst["errors"] == 0
    for rollout in (figures["rollout, grants pushed"], figures["rollout, agents polling"]):
        assert rollout["updated (agents)"] == 10 and rollout["updated (controller)"] == 10
        assert rollout["max_unavailable"] == 1 and rollout["first failure"] is None
        assert rollout["controller plans during rollout (timer and reports)"] > 0
        assert rollout["ideal wave time (s)"] == 1.0
        assert rollout["controller CPU per node per minute (ms)"] >= 0
    assert figures["rollout, grants pushed"]["agents"] == "watch (grants pushed)"
    assert scale["nodes in pool"] == 50 and scale["controller peak RSS (MB)"] > 0
    # Every idle node's watch was parked, and the pool's first plan answered each one.
    assert scale["watches parked"] == 50
    assert scale["watches answered on apply"] == 50
    series = result["series"]
    assert isinstance(series, dict)
    timeline = series["rollout timeline"]
    assert timeline["updated"][0] == 0 and timeline["updated"][-1] == 10
    assert max(timeline["unavailable"]) <= 1  # maxUnavailable, seen from the agents
    targets = result["targets"]
    assert isinstance(targets, list) and targets[0]["met"] is True
    assert targets[-1]["met"] is True  # every watch parked and answered

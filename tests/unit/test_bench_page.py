"""The benchmarks page renders every stage, including failed and missing ones."""

from __future__ import annotations

from pathlib import Path

from atoll.bench.page import render, run_all
from atoll.progress import PlainReporter


def test_render_shows_targets_figures_and_failures() -> None:
    page = render(
        {
            "compose": {
                "figures": {"atoll size (MB)": 120.5, "stages": {"rootfs": 3.0}},
                "targets": [{"name": "size", "value": "26%", "target": "<= 30%", "met": True}],
                "seconds": 12.0,
            },
            "boot": {"error": "ToolError: qemu failed", "seconds": 1.0},
            "fleet": {"missing": "no benchmark in this tree yet"},
        },
        {"host": "h", "date": "2026-11-23"},
    )
    assert "| size | 26% | <= 30% | yes |" in page
    assert '| stages | {"rootfs": 3.0} |' in page
    assert "**benchmark failed**: `ToolError: qemu failed`" in page
    assert "_no benchmark in this tree yet_" in page
    assert "| host | h |" in page


def test_run_all_reports_a_stage_without_benchmark(tmp_path: Path) -> None:
    results = run_all(["disk"], tmp_path, PlainReporter())
    assert "missing" in results["disk"]


def test_each_stage_says_the_commit_and_machine_it_ran_on_and_its_note() -> None:
    page = render(
        {
            "boot": {
                "figures": {"x": 1},
                "seconds": 3.0,
                "measured": "2026-12-07 04:02 UTC",
                "commit": "3f3717d",
                "machine": "AMD EPYC x 2",
                "note": "the run was shared with other VM runs",
            },
            "restart": {"figures": {"y": 2}, "seconds": 4.0},  # from before stages said so
        },
        {"host": "h"},
    )
    assert (
        "_boot benchmark took 3.0 s, measured 2026-12-07 04:02 UTC, commit 3f3717d, "
        "machine AMD EPYC x 2._\n\n_the run was shared with other VM runs_" in page
    )
    assert "_restart benchmark took 4.0 s._" in page
    assert "_fleet benchmark._" in render({"fleet": {"figures": {"z": 3}}}, {})

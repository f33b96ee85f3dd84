"""The benchmark page's plots: valid PNGs from small result fixtures, failures reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atoll.bench.page import render
from atoll.bench.plots import attach, boot_phases

# Drawing imports matplotlib, which lists the fonts once per machine.
pytestmark = pytest.mark.usefixtures("matplotlib_fonts")

PNG = b"\x89PNG\r\n\x1a\n"

BOOT = {
    "atoll boot to ready, median (s)": 12.0,
    "baseline boot to ready, median (s)": 30.0,
    "atoll kernel (systemd-analyze, s)": 2.0,
    "atoll userspace (systemd-analyze, s)": 9.0,
    "baseline kernel (systemd-analyze, s)": None,  # not reported: drawn as one bar
}
TIMELINE = {
    "t": [0.0, 1.0, 2.0, 3.0, 4.0],
    "updated": [0, 0, 2, 4, 4],
    "unavailable": [2, 2, 2, 0, 0],
    "nodes": 4,
    "max_unavailable": 2,
    "reboot_seconds": 1.5,
    "from": "v1",
    "to": "v2",
}
LATENCY = {"quantiles": [0.0, 50.0, 99.0, 100.0], "GET /v1/status": [1.0, 2.0, 9.0, 12.0]}


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG) and len(data) > 1000


def test_attach_draws_every_plot_and_links_it(tmp_path: Path) -> None:
    results: dict[str, Any] = {
        "boot": {"figures": BOOT},
        "fleet": {"figures": {}, "series": {"rollout timeline": TIMELINE}},
        "agent": {"figures": {}, "series": {"latency quantiles (ms)": LATENCY}},
        "compose": {"figures": {"size": 1}},
    }
    attach(results, tmp_path)
    assert results["boot"]["plots"] == ["img/boot-phases.png"]
    assert results["fleet"]["plots"] == ["img/fleet-rollout.png"]
    assert results["agent"]["plots"] == ["img/agent-latency.png"]
    assert "plots" not in results["compose"]
    for name in ("boot-phases", "fleet-rollout", "agent-latency"):
        assert _is_png(tmp_path / "img" / f"{name}.png"), name
    page = render(results, {"host": "h"})
    assert "![fleet](img/fleet-rollout.png)" in page


def test_a_plot_that_cannot_be_drawn_is_reported(tmp_path: Path) -> None:
    broken = {**TIMELINE, "updated": [0, 1]}  # length differs from t
    results: dict[str, Any] = {"fleet": {"series": {"rollout timeline": broken}}, "boot": {}}
    attach(results, tmp_path)
    assert "ValueError" in results["fleet"]["plot_error"]
    assert "plots" not in results["boot"]
    assert "_plot failed: `ValueError" in render(results, {})


def test_boot_phases_needs_both_totals(tmp_path: Path) -> None:
    out = boot_phases(BOOT, tmp_path / "b.png")
    assert _is_png(out)
    with pytest.raises(ValueError, match="baseline boot to ready"):
        boot_phases({"atoll boot to ready, median (s)": 1.0}, tmp_path / "c.png")

"""The agent benchmark's pure parts: percentiles and /proc/PID/status memory parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atoll.ops.bench import QUANTILES, memory_kib, percentile

STATUS = """\
Name:\tpython3
VmPeak:\t   40120 kB
VmSize:\t   40116 kB
VmHWM:\t   21504 kB
VmRSS:\t   20480 kB
RssAnon:\t    9000 kB
Threads:\t3
"""


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.5) == 100.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_quantiles_cover_the_whole_distribution() -> None:
    assert QUANTILES[0] == 0 and QUANTILES[-1] == 100 and 99 in QUANTILES


def test_memory_kib_reads_vm_lines_only() -> None:
    got = memory_kib(STATUS)
    assert got["VmRSS"] == 20480 and got["VmHWM"] == 21504 and got["VmPeak"] == 40120
    assert "RssAnon" not in got and "Threads" not in got
    assert memory_kib("VmRSS:\tgarbage\n") == {}


def test_memory_kib_of_this_process() -> None:
    got = memory_kib(Path(f"/proc/{os.getpid()}/status").read_text())
    assert 0 < got["VmRSS"] <= got["VmHWM"]

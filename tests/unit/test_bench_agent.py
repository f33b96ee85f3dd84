"""The benchmarks' pure parts: percentiles, /proc/PID memory and CPU time parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atoll.bench.agent import QUANTILES, percentile
from atoll.tools.procfs import cpu_seconds, cpu_ticks, memory_kib

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


def test_cpu_ticks_counts_fields_after_the_command_name() -> None:
    # A command name with a space and a parenthesis must not shift the fields.
    stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 100 1000 500\n"
    assert cpu_ticks(stat) == 281


def test_cpu_seconds_of_this_process_grows() -> None:
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    assert cpu_seconds(os.getpid()) > before

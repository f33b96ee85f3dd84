"""Resource use of a process we started, from ``/proc/PID`` (benchmarks: agent, fleet controller).

Linux only, no external program: ``/proc/PID/status`` gives the memory lines
(``VmRSS`` now, ``VmHWM`` the peak resident set, in KiB) and ``/proc/PID/stat``
the CPU time the process used (user + system, in clock ticks).
"""

from __future__ import annotations

import os
from pathlib import Path


class ProcError(OSError):
    """``/proc/PID`` could not be read (the process exited) or lacks a field."""


def memory_kib(status_text: str) -> dict[str, int]:
    """``VmRSS``/``VmHWM``/... (KiB) from the text of ``/proc/PID/status``."""
    out: dict[str, int] = {}
    for line in status_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.startswith("Vm"):
            fields = value.split()
            if len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
                out[key] = int(fields[0])
    return out


def cpu_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from the text of ``/proc/PID/stat``.

    The command name (field 2) may contain spaces and parentheses: fields are
    counted after its closing parenthesis.
    """
    rest = stat_text[stat_text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): utime and stime are fields 14 and 15.
    return int(rest[11]) + int(rest[12])


def process_memory(pid: int) -> dict[str, int]:
    path = Path(f"/proc/{pid}/status")
    try:
        found = memory_kib(path.read_text())
    except OSError as e:
        raise ProcError(f"{path}: {e.strerror} (did the process exit?)") from e
    if "VmRSS" not in found:
        raise ProcError(f"{path}: no VmRSS line")
    return found


def cpu_seconds(pid: int) -> float:
    path = Path(f"/proc/{pid}/stat")
    try:
        ticks = cpu_ticks(path.read_text())
    except OSError as e:
        raise ProcError(f"{path}: {e.strerror} (did the process exit?)") from e
    return ticks / os.sysconf("SC_CLK_TCK")


def mb(kib: int) -> float:
    """KiB as megabytes (10^6 bytes), one decimal: how the targets are written."""
    return round(kib * 1024 / 1e6, 1)

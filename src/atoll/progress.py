"""One reporter interface for long work (after osbuild's Monitor).

Stages of a long job (compose, publish, disk, boot, rollouts) report through a
:class:`Reporter`, never through scattered prints:

* :class:`RichReporter` draws a live progress display on a terminal,
* :class:`PlainReporter` prints one plain line per event (CI, pipes),
* :class:`JsonReporter` prints one JSON object per line (``--json``), so a
  machine can follow along.

``reporter_for()`` chooses one from the output stream and the flags.
"""

from __future__ import annotations

import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter(ABC):
    """Receives the events of a long-running job."""

    @abstractmethod
    def stage_begin(self, name: str, detail: str = "") -> None: ...

    @abstractmethod
    def stage_end(self, name: str, seconds: float, detail: str = "") -> None: ...

    @abstractmethod
    def progress(self, name: str, done: int, total: int | None, unit: str = "") -> None:
        """``done`` of ``total`` units (bytes, packages) in stage ``name``."""

    @abstractmethod
    def info(self, message: str) -> None: ...

    @abstractmethod
    def warning(self, message: str) -> None: ...

    def result(self, payload: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """The job's final result; only machine-readable reporters print it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the terminal; called once at the end."""

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        """Report a stage around a block, with its duration."""
        started = time.monotonic()
        self.stage_begin(name, detail)
        yield
        self.stage_end(name, time.monotonic() - started)


class PlainReporter(Reporter):
    """One line per event; progress only at 25% steps to keep CI logs short."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stderr
        self._last_quarter: dict[str, int] = {}

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def stage_begin(self, name: str, detail: str = "") -> None:
        self._line(f"==> {name}" + (f": {detail}" if detail else ""))

    def stage_end(self, name: str, seconds: float, detail: str = "") -> None:
        self._line(f"<== {name} ({seconds:.1f}s)" + (f": {detail}" if detail else ""))

    def progress(self, name: str, done: int, total: int | None, unit: str = "") -> None:
        if not total:
            return
        quarter = min(4, done * 4 // total)
        if quarter > self._last_quarter.get(name, -1):
            self._last_quarter[name] = quarter
            self._line(f"    {name}: {done}/{total} {unit}".rstrip())

    def info(self, message: str) -> None:
        self._line(f"    {message}")

    def warning(self, message: str) -> None:
        self._line(f"warning: {message}")


class JsonReporter(Reporter):
    """One JSON object per line on stdout, for machines."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout

    def _emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        print(json.dumps(record, sort_keys=True), file=self._stream, flush=True)

    def stage_begin(self, name: str, detail: str = "") -> None:
        self._emit("stage-begin", stage=name, detail=detail)

    def stage_end(self, name: str, seconds: float, detail: str = "") -> None:
        self._emit("stage-end", stage=name, seconds=round(seconds, 3), detail=detail)

    def progress(self, name: str, done: int, total: int | None, unit: str = "") -> None:
        self._emit("progress", stage=name, done=done, total=total, unit=unit)

    def info(self, message: str) -> None:
        self._emit("info", message=message)

    def warning(self, message: str) -> None:
        self._emit("warning", message=message)

    def result(self, payload: dict[str, Any]) -> None:
        self._emit("result", result=payload)


class RichReporter(Reporter):
    """A live display on a terminal: one spinner per stage, a bar for downloads."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._progress.start()

    def stage_begin(self, name: str, detail: str = "") -> None:
        label = f"{name}: {detail}" if detail else name
        self._tasks[name] = self._progress.add_task(label, total=None)

    def stage_end(self, name: str, seconds: float, detail: str = "") -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            self._progress.update(task, total=1, completed=1)
            self._progress.remove_task(task)
        suffix = f" - {detail}" if detail else ""
        self._console.print(f"[green]done[/green] {name} ({seconds:.1f}s){suffix}")

    def progress(self, name: str, done: int, total: int | None, unit: str = "") -> None:
        task = self._tasks.get(name)
        if task is not None:
            self._progress.update(task, completed=done, total=total)

    def info(self, message: str) -> None:
        self._console.print(f"  {message}", highlight=False)

    def warning(self, message: str) -> None:
        self._console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)

    def close(self) -> None:
        self._progress.stop()


def reporter_for(json_lines: bool = False, stream: IO[str] | None = None) -> Reporter:
    """JSON lines if asked; a live display on a terminal; plain lines otherwise."""
    if json_lines:
        return JsonReporter()
    out = stream or sys.stderr
    if out.isatty() and not _in_ci():
        return RichReporter()
    return PlainReporter(out)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}

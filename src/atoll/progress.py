"""One reporter interface for long work (after osbuild's Monitor).

Stages of a long job (compose, publish, disk, boot, rollouts) report through a
:class:`Reporter`, never through scattered prints:

* :class:`RichReporter` draws a live progress display on a terminal,
* :class:`PlainReporter` prints one plain line per event (CI, pipes),
* :class:`JsonReporter` prints one JSON object per line (``--json``), so a
  machine can follow along.

``reporter_for()`` chooses one from the output stream and the flags.

The reporter times stages itself: ``with reporter.stage("rootfs") as stage:``
reports the stage's beginning and its end with the duration measured on the
reporter's clock (``time.monotonic`` unless a test injects another), and
leaves the duration in ``stage.seconds`` for the caller's result. A stage whose
block raises still ends: it is reported as failed, with its time, and the
exception goes on.
"""

from __future__ import annotations

import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

Clock = Callable[[], float]  # a source of seconds: time.monotonic, time.time, a test's fake


@dataclass
class Stage:
    """A stage in progress; ``seconds`` and ``failed`` are set when it ends."""

    name: str
    seconds: float = 0.0
    failed: bool = False


class Reporter(ABC):
    """Receives the events of a long-running job, and times its stages."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock

    @abstractmethod
    def stage_begin(self, name: str, detail: str = "") -> None: ...

    @abstractmethod
    def stage_end(
        self, name: str, seconds: float, detail: str = "", *, failed: bool = False
    ) -> None:
        """Stage ``name`` ended after ``seconds``.

        ``failed``: its block raised, and ``detail`` says what.
        """

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
    def stage(self, name: str, detail: str = "") -> Iterator[Stage]:
        """Report a stage around a block, timed on the reporter's clock.

        The block's exception (Ctrl-C too) ends the stage as failed, then goes on.
        """
        stage = Stage(name)
        started = self._clock()
        self.stage_begin(name, detail)
        try:
            yield stage
        except BaseException as e:
            stage.seconds = self._clock() - started
            stage.failed = True
            self.stage_end(name, stage.seconds, _failure(e), failed=True)
            raise
        stage.seconds = self._clock() - started
        self.stage_end(name, stage.seconds)


def _failure(error: BaseException) -> str:
    """What a failed stage's end says: "interrupted", or the error's first line."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    return first if len(first) <= 120 else first[:117] + "..."


class PlainReporter(Reporter):
    """One line per event; progress only at 25% steps to keep CI logs short."""

    def __init__(self, stream: IO[str] | None = None, *, clock: Clock = time.monotonic) -> None:
        super().__init__(clock=clock)
        self._stream = stream or sys.stderr
        self._last_quarter: dict[str, int] = {}

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def stage_begin(self, name: str, detail: str = "") -> None:
        self._line(f"==> {name}" + (f": {detail}" if detail else ""))

    def stage_end(
        self, name: str, seconds: float, detail: str = "", *, failed: bool = False
    ) -> None:
        outcome = " failed" if failed else ""
        self._line(f"<== {name}{outcome} ({seconds:.1f}s)" + (f": {detail}" if detail else ""))

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

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        super().__init__(clock=clock)
        self._stream = stream or sys.stdout
        self._wall_clock = wall_clock  # the records' "time": seconds since the epoch

    def _emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(self._wall_clock(), 3), **fields}
        print(json.dumps(record, sort_keys=True), file=self._stream, flush=True)

    def stage_begin(self, name: str, detail: str = "") -> None:
        self._emit("stage-begin", stage=name, detail=detail)

    def stage_end(
        self, name: str, seconds: float, detail: str = "", *, failed: bool = False
    ) -> None:
        self._emit("stage-end", stage=name, seconds=round(seconds, 3), detail=detail, failed=failed)

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

    def __init__(self, console: Console | None = None, *, clock: Clock = time.monotonic) -> None:
        super().__init__(clock=clock)
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

    def stage_end(
        self, name: str, seconds: float, detail: str = "", *, failed: bool = False
    ) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            self._progress.update(task, total=1, completed=1)
            self._progress.remove_task(task)
        outcome = "[red]failed[/red]" if failed else "[green]done[/green]"
        suffix = f" - {escape(detail)}" if detail else ""
        self._console.print(f"{outcome} {escape(name)} ({seconds:.1f}s){suffix}")

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

"""One exception root for atoll, with a subclass per kind of failure.

Only the CLI entry point (:func:`atoll.cli.main`) turns these into exit codes:

* 0 ok, 1 failed (:class:`AtollError` and most subclasses),
* 2 bad input (:class:`InputError`: manifests, flags, files a user gave us),
* 130 interrupted (Ctrl-C, :class:`Interrupted`).

Every message names its source (a file and key, a tool and its argv, a URL),
so a user can act on it without a traceback. Foreign exceptions are wrapped
with ``raise ... from e`` at the boundary where we know what was being done.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class AtollError(Exception):
    """Root of every error atoll raises on purpose."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class InputError(AtollError):
    """The user gave us something we cannot use: exit code 2."""

    exit_code = EXIT_BAD_INPUT


class ManifestError(InputError):
    """One or more problems in a manifest; each line names file, key and value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = f"manifest has {count} problem{'s' if count != 1 else ''}:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class ToolError(AtollError):
    """An external program failed; the message carries its argv and stderr tail."""

    def __init__(
        self, message: str, *, argv: list[str], returncode: int, stderr_tail: str = ""
    ) -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class ToolMissing(AtollError):
    """A program atoll needs is not installed."""


class Interrupted(AtollError):
    """The user pressed Ctrl-C; work done so far was left consistent."""

    exit_code = EXIT_INTERRUPTED

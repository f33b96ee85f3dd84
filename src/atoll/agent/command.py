"""How the agent runs programs: one runner, standard library only (this runs on the node).

Every program the agent starts goes through this module: ``ostree admin`` and ``systemctl
reboot`` (deployments), ``ostree pull`` (fetch), ``systemctl try-restart`` and ``journalctl``
(the daemon and its API), the health probes (health), ``blkid``, ``mount`` and ``umount``
(boot entries, first boot), ``ctr`` and the ops shell's session process (shell). Only
this module imports :mod:`subprocess` (a ruff rule says so); the host has its own runner,
:mod:`atoll.process`. The rules, after mkosi's ``run.py``:

* argv lists only, never a shell; paths go through ``os.fspath``;
* a clean environment: ``PATH`` (the system directories) and ``LANG=C.UTF-8``; nothing of
  the agent's own environment reaches the child unless the caller passes it in ``env``;
* stdin is ``/dev/null`` unless the caller gives input bytes;
* a timeout on *every* call: ``timeout`` is a required keyword, finite and positive, so no
  call can wait forever. The child runs in a process group of its own; at the timeout the
  whole group gets SIGKILL (the program and whatever it started) and the child is reaped.
  The caller gets a :class:`CommandError`, so a lock it held (the deployments' lock around
  ``ostree admin upgrade``) is released on the way out instead of being held for good;
* one error type, :class:`CommandError`, whose message is the argv as a line a user can
  paste into a shell, then ``exit N``, ``timed out after N s`` or why it could not start,
  then the last lines of stderr;
* with ``ATOLL_DEBUG=1`` every argv is printed to stderr before it runs.

The timeout is chosen per call, by the code that knows the program: a named constant next
to the call (``ostree admin deploy`` on a slow emulated guest takes minutes, ``ostree admin
status`` seconds). Modules that run programs take a :class:`Runner` (argv and a timeout in,
stdout out, :class:`CommandError` on failure), so tests inject a fake that records argv;
:func:`output` is the real one.

:func:`spawn` starts a long-running process instead (the ops shell's session): on a
terminal the caller opened, as the leader of a new session (so it and everything it starts
can be hung up and killed as a group), in the same clean environment. Its
:class:`Child` is ended by the caller (:meth:`Child.end`), which decides how long it may run.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shlex
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 3  # lines of stderr in a CommandError
TAIL_CHARS = 500  # per line: a runaway line does not flood the log
REAP_SECONDS = 5.0  # after the kill at a timeout: collecting the last output, reaping

StrPath = str | os.PathLike[str]


class CommandError(RuntimeError):
    """A program exited non-zero, timed out or could not start (the message says which).

    ``argv``; ``status`` (the exit code, negative for a signal) or ``timeout`` (the
    seconds it was given) or ``start_error`` (the ``OSError`` of the exec);
    ``stderr_tail`` (its last non-empty lines).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        status: int | None = None,
        timeout: float | None = None,
        start_error: OSError | None = None,
        stderr: bytes | str = b"",
    ) -> None:
        self.argv = tuple(argv)
        self.status = status
        self.timeout = timeout
        self.start_error = start_error
        self.stderr_tail = tail(stderr)
        super().__init__(f"{command_line(self.argv)}: {self.detail}")

    @property
    def timed_out(self) -> bool:
        return self.timeout is not None

    @property
    def what(self) -> str:
        """``exit N``, ``killed by SIGNAL``, ``timed out after N s`` or ``cannot run: ...``."""
        if self.timeout is not None:
            return f"timed out after {self.timeout:g} s"
        if self.start_error is not None:
            return f"cannot run: {self.start_error.strerror or self.start_error}"
        if self.status is not None and self.status < 0:
            return f"killed by {_signal_name(-self.status)}"
        return f"exit {self.status}"

    @property
    def detail(self) -> str:
        """:attr:`what`, then the tail of stderr: the message without the argv."""
        return " | ".join((self.what, *self.stderr_tail))


@dataclass(frozen=True)
class Completed:
    """A program that ran to its end (with ``check=False``, also a non-zero ``status``)."""

    argv: tuple[str, ...]
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


class Runner(Protocol):
    """What a module that runs programs takes (tests pass a fake): argv and a timeout in,
    stdout out; raises :class:`CommandError` on failure. :func:`output` is the real one."""

    def __call__(self, argv: Sequence[str], *, timeout: float) -> str: ...


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's whole environment: ``PATH``, ``LANG``, then ``extra`` (which may override)."""
    env = {"PATH": PATH, "LANG": "C.UTF-8"}
    if extra:
        env.update(extra)
    return env


def command_line(argv: Sequence[str]) -> str:
    """The argv as a line a user can paste into a shell."""
    return shlex.join(argv)


def tail(stderr: bytes | str, lines: int = TAIL_LINES) -> tuple[str, ...]:
    """The last ``lines`` non-empty lines of ``stderr``, stripped and each cut short."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return tuple(_cut(line) for line in kept[-lines:]) if lines > 0 else ()


def _cut(line: str) -> str:
    return line if len(line) <= TAIL_CHARS else line[: TAIL_CHARS - 3] + "..."


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _args(argv: Sequence[StrPath]) -> list[str]:
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("an empty argv runs nothing")
    if os.environ.get("ATOLL_DEBUG") == "1":
        print(f"+ {command_line(args)}", file=sys.stderr, flush=True)
    return args


def _check_timeout(timeout: float) -> None:
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout: {timeout!r} must be a finite number of seconds above 0")


def run(
    argv: Sequence[StrPath],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> Completed:
    """Run ``argv`` to its end, within ``timeout`` seconds; see the module docstring.

    With ``check`` (the default) a non-zero exit raises :class:`CommandError`; without,
    the caller reads ``status``. A timeout or a program that cannot start always raises.
    """
    _check_timeout(timeout)
    args = _args(argv)
    try:
        child = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(env),
            process_group=0,  # its own group: a timeout kills what it started too
        )
    except OSError as e:
        raise CommandError(args, start_error=e) from e
    try:
        stdout, stderr = child.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandError(args, timeout=timeout, stderr=_kill(child)) from None
    except BaseException:  # interrupted: the child does not outlive the call either
        _kill(child)
        raise
    done = Completed(tuple(args), child.returncode, stdout, stderr)
    if check and done.status != 0:
        raise CommandError(args, status=done.status, stderr=stderr)
    return done


def _kill(child: subprocess.Popen[bytes]) -> bytes:
    """SIGKILL to the child's process group, then reap it; returns what it wrote to stderr."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    try:
        _, stderr = child.communicate(timeout=REAP_SECONDS)
    except subprocess.TimeoutExpired:
        # A process outside the group holds a pipe open: stop reading, reap the child.
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=REAP_SECONDS)
        return b""
    return stderr or b""


def output(argv: Sequence[str], *, timeout: float) -> str:
    """The real :class:`Runner`: run ``argv`` (see :func:`run`) and return its stdout."""
    return run(argv, timeout=timeout).stdout_text


@dataclass(frozen=True)
class Child:
    """A long-running process from :func:`spawn`: a session (and process group) leader."""

    argv: tuple[str, ...]
    pid: int

    def exited(self) -> bool:
        """Whether it has exited; it stays unreaped (:meth:`end` collects the status)."""
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to its process group (it and everything it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def end(self, *, hangup: bool, grace: float) -> int | None:
        """Reap it: after SIGHUP to its group when ``hangup``; SIGKILL to the group once
        ``grace`` seconds have passed. Returns the exit code (negative: the signal that
        ended it), or None when it was reaped already."""
        if hangup:
            self.signal(signal.SIGHUP)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        self.signal(signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def spawn(argv: Sequence[StrPath], *, terminal: int, env: Mapping[str, str] | None = None) -> Child:
    """Start ``argv`` on ``terminal`` (the slave end of a pty the caller opened).

    The terminal is its stdin, stdout, stderr and controlling terminal; it leads a new
    session, in the clean :func:`environment` plus ``env``. A program that cannot be
    executed exits 127, as in a shell. ``subprocess`` cannot make the terminal the
    controlling one, so this forks itself; the child does only async-signal-safe work
    until the exec (the agent has threads).
    """
    args = _args(argv)
    full_env = environment(env)
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.setsid()
            fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(terminal, fd)
            os.closerange(3, 65536)
            os.execvpe(args[0], args, full_env)  # noqa: S606 - an argv list, no shell involved
        finally:
            os._exit(127)
    return Child(tuple(args), pid)

"""The one way atoll runs an external program on the host.

Two shapes, one set of rules (after mkosi's ``run.py``):

* :func:`run` starts a program and waits for it: a tool that does one job
  (``ostree``, ``sfdisk``, ``mmdebstrap``) and whose output is the answer.
* :func:`start` starts a program and returns at once with a :class:`Child`:
  something that runs until we stop it (a VM, a controller, the agent under a
  benchmark, a client under test). The caller waits for it, signals it, stops
  it with a grace period (:meth:`Child.stop`: SIGTERM, wait, then SIGKILL) or
  kills it. A ``with`` block stops it on the way out, whatever happened.

The rules both follow:

* argv lists only, never ``shell=True``; paths go through ``os.fspath``; a
  bare program name is looked up on a fixed ``PATH``;
* a clean, predictable environment (:func:`clean_environment`: ``LANG=C.UTF-8``,
  a fixed ``PATH``, a few variables passed through) plus whatever the caller
  adds explicitly;
* stdin closed unless the caller passes input (or a pipe, for :func:`start`);
* with ``ATOLL_DEBUG=1`` every argv is logged as a copy-pasteable shell line;
* on failure a :class:`~atoll.errors.ToolError` naming the program, its argv,
  its exit code and the tail of its stderr; a missing program is a
  :class:`~atoll.errors.ToolMissing` that says which package provides it.

A child started with ``session=True`` leads its own session and process group:
a Ctrl-C on our terminal does not reach it (we stop it in order instead), and
its signals go to the whole group, so what it started (qemu's relays) ends with
it. Signals are only ever sent to children of this process, never to a name.

This module and :mod:`atoll.agent.command` (its standard-library twin on the
node) are the only modules that import :mod:`subprocess`; ruff's banned-api
rule (TID251) keeps it so. Thin typed wrappers per tool (:mod:`atoll.tools`)
sit on top.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Final

from atoll.errors import ToolError, ToolMissing

log = logging.getLogger("atoll.process")

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Which Debian package provides a program, for the "not installed" message.
PROVIDERS: dict[str, str] = {
    "mmdebstrap": "mmdebstrap",
    "ostree": "ostree",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "etcd": "etcd-server",
    "gpgv": "gpgv",
    "dpkg-deb": "dpkg",
    "tar": "tar",
    "gcc": "gcc",
    "depmod": "kmod",
    "systemctl": "systemd",
    "chattr": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "git": "git",
}

# Where a started child's standard streams go, besides an open binary file or
# a file descriptor. None (the default for stdout and stderr) shares ours.
PIPE: Final = subprocess.PIPE  # a pipe we read (Child.stdout) or write (Child.stdin)
DEVNULL: Final = subprocess.DEVNULL  # nothing in, output thrown away
STDOUT: Final = subprocess.STDOUT  # for stderr: into the same place as stdout

StrPath = str | os.PathLike[str]
Stream = int | IO[bytes]

# A finished program (run()'s result): Completed[bytes], or Completed[str] after as_text().
Completed = subprocess.CompletedProcess

# How long Child.stop() and leaving a `with` block give a program to end after SIGTERM.
STOP_GRACE = 10.0


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every program gets: C.UTF-8, a fixed PATH, a few pass-throughs, ``extra``."""
    env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATH": CLEAN_PATH}
    for name in ("HOME", "TMPDIR", "SOURCE_DATE_EPOCH", "http_proxy", "https_proxy", "no_proxy"):
        if name in os.environ:
            env[name] = os.environ[name]
    if extra:
        env.update(extra)
    return env


def which(program: str) -> str:
    """Return the absolute path of ``program`` or raise :class:`ToolMissing`."""
    found = shutil.which(program, path=CLEAN_PATH)
    if found is None:
        package = PROVIDERS.get(program)
        hint = f"apt-get install {package}" if package else None
        raise ToolMissing(f"{program}: not installed", hint=hint)
    return found


def command_line(argv: Sequence[StrPath]) -> str:
    """The argv as a line a user can paste into a shell."""
    return shlex.join(os.fspath(a) for a in argv)


def as_text(result: Completed[bytes]) -> Completed[str]:
    """``result`` with its output decoded (UTF-8, bad bytes replaced): for comparing text."""
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        stdout=_decode(result.stdout),
        stderr=_decode(result.stderr),
    )


def _decode(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", errors="replace")


def _argv(argv: Sequence[StrPath], what: str) -> list[str]:
    """argv as strings, the program resolved on the clean PATH; logged in debug mode."""
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError(f"{what}() needs a program")
    if "/" not in args[0]:
        args[0] = which(args[0])
    log.debug("+ %s", command_line(args))
    return args


def _cwd(cwd: StrPath | None) -> str | None:
    return os.fspath(cwd) if cwd is not None else None


def _not_startable(args: list[str], error: OSError) -> ToolMissing | ToolError:
    if isinstance(error, FileNotFoundError):
        return ToolMissing(f"{args[0]}: not found ({error.strerror})")
    return ToolError(
        f"{args[0]}: cannot start ({error.strerror}): {command_line(args)}",
        argv=args,
        returncode=-1,
    )


# -- programs we wait for ------------------------------------------------------


def run(
    argv: Sequence[StrPath],
    *,
    cwd: StrPath | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
    stdout: IO[bytes] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> Completed[bytes]:
    """Run an external program; raise :class:`ToolError` if it fails.

    ``capture=True`` collects stdout and stderr (bytes) on the result;
    ``capture=False`` lets them through to our own stdout/stderr (progress of
    long-running tools). ``stdout=`` streams stdout to an open file instead.
    ``on_line`` receives each line the program writes to stdout or stderr
    (merged) as it appears, for progress; the output is still collected on
    the result and its tail still goes into a failure's message. A program
    still running after ``timeout`` seconds is killed and is a failure even
    with ``check=False``.
    """
    args = _argv(argv, "run")
    if on_line is not None:
        result = _run_streaming(args, cwd=cwd, env=env, timeout=timeout, on_line=on_line)
    else:
        result = _run_collected(
            args, cwd=cwd, env=env, input=input, capture=capture, timeout=timeout, stdout=stdout
        )
    if check and result.returncode != 0:
        tail = _tail(result.stderr)
        message = (
            f"{Path(args[0]).name} failed with exit code {result.returncode}: {command_line(args)}"
        )
        if tail:
            message += "\n" + "\n".join(f"    {line}" for line in tail.splitlines())
        raise ToolError(message, argv=args, returncode=result.returncode, stderr_tail=tail)
    return result


def _run_collected(
    args: list[str],
    *,
    cwd: StrPath | None,
    env: Mapping[str, str] | None,
    input: bytes | None,
    capture: bool,
    timeout: float | None,
    stdout: IO[bytes] | None,
) -> Completed[bytes]:
    try:
        return subprocess.run(
            args,
            cwd=_cwd(cwd),
            env=clean_environment(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else (subprocess.PIPE if capture else None),
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except OSError as e:
        raise _not_startable(args, e) from e
    except subprocess.TimeoutExpired as e:
        raise ToolError(
            f"{Path(args[0]).name}: timed out after {timeout:g} s: {command_line(args)}",
            argv=args,
            returncode=-1,
            stderr_tail=_tail(e.stderr),
        ) from e


def _run_streaming(
    args: list[str],
    *,
    cwd: StrPath | None,
    env: Mapping[str, str] | None,
    timeout: float | None,
    on_line: Callable[[str], None],
) -> Completed[bytes]:
    collected: list[bytes] = []
    # Its own process group: a long tool starts helpers (mmdebstrap's user
    # namespace, go's compilers) that must end with it, whoever stops it.
    child = _spawn(args, cwd=cwd, env=env, stdin=DEVNULL, stdout=PIPE, stderr=STDOUT, session=True)
    stream = child.stdout
    assert stream is not None
    try:
        for raw in stream:
            collected.append(raw)
            on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        returncode = child.wait(timeout)
    except BaseException as e:
        # Ctrl-C or a failing callback: the child must not outlive us. On
        # Ctrl-C its whole group gets SIGINT, as from a terminal, so it cleans
        # up the way it does for a user (else SIGTERM); SIGKILL if it lingers
        # past a minute.
        if isinstance(e, KeyboardInterrupt):
            child.send_signal(signal.SIGINT)
            with contextlib.suppress(ToolError):
                child.wait(60.0)
            child.kill()
        else:
            child.stop(60.0)
        raise
    finally:
        child.end_group()
        child.close()
    output = b"".join(collected)
    return subprocess.CompletedProcess(args, returncode, stdout=output, stderr=output)


def _tail(data: bytes | None, lines: int = 15) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


# -- programs that run until we stop them --------------------------------------


def start(
    argv: Sequence[StrPath],
    *,
    cwd: StrPath | None = None,
    env: Mapping[str, str] | None = None,
    stdin: Stream = DEVNULL,
    stdout: Stream | None = None,
    stderr: Stream | None = None,
    session: bool = False,
) -> Child:
    """Start a program that keeps running, and return at once.

    Each stream is :data:`PIPE`, :data:`DEVNULL`, an open binary file or a
    file descriptor (a pseudo-terminal); stdin is closed unless given, stdout
    and stderr are ours unless given (``stderr=STDOUT`` merges it into stdout).
    ``session=True`` gives the child its own session and process group (see
    the module's docstring). Raises :class:`ToolMissing` or :class:`ToolError`
    if it cannot start; once started, how it ends is the caller's to read.
    """
    args = _argv(argv, "start")
    return _spawn(
        args, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, session=session
    )


def _spawn(
    args: list[str],
    *,
    cwd: StrPath | None,
    env: Mapping[str, str] | None,
    stdin: Stream,
    stdout: Stream | None,
    stderr: Stream | None,
    session: bool = False,
) -> Child:
    try:
        popen = subprocess.Popen(
            args,
            cwd=_cwd(cwd),
            env=clean_environment(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=session,
        )
    except OSError as e:
        raise _not_startable(args, e) from e
    return Child(popen, args, group=session)


class Child:
    """A program started by :func:`start`; a context manager that stops it on the way out.

    Exit statuses are as :mod:`subprocess` reports them: the program's exit
    code, or minus the number of the signal that ended it.
    """

    def __init__(self, popen: subprocess.Popen[bytes], argv: list[str], *, group: bool) -> None:
        self._popen = popen
        self._group = group
        self.argv = argv
        self.pid = popen.pid
        # Our ends of the pipes asked for with PIPE (None otherwise).
        self.stdin: IO[bytes] | None = popen.stdin
        self.stdout: IO[bytes] | None = popen.stdout
        self.stderr: IO[bytes] | None = popen.stderr

    def __repr__(self) -> str:
        return f"Child(pid={self.pid}, {command_line(self.argv)!r}, returncode={self.returncode})"

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    @property
    def returncode(self) -> int | None:
        """The exit status once the program has ended and was waited for, else None."""
        return self._popen.returncode

    def poll(self) -> int | None:
        """The exit status if the program has ended, None while it runs."""
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the program to end and return its exit status.

        Raises :class:`ToolError` if it still runs after ``timeout`` seconds;
        it is left running (stop it, or wait again).
        """
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ToolError(
                f"{self.name} (pid {self.pid}): still running after {timeout:g} s: "
                f"{command_line(self.argv)}",
                argv=self.argv,
                returncode=-1,
            ) from None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` (to its whole group when it leads one); nothing once it has ended.

        Checking first is what makes this safe: until we wait for it, an ended
        child keeps its pid, so the signal cannot reach a stranger.
        """
        if self._popen.poll() is not None:
            return
        if self._group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
        else:
            self._popen.send_signal(sig)

    def kill(self) -> int:
        """SIGKILL: no chance to clean up; wait for the end and return the exit status."""
        self.send_signal(signal.SIGKILL)
        return self._popen.wait()

    def end_group(self, timeout: float = 10.0) -> None:
        """Once the program has ended: SIGKILL what it left running in its group and
        wait until none of it remains, at most ``timeout`` seconds.

        What a program leaves behind may still be writing into its work
        directories (mmdebstrap's namespace after its main process ends), so a
        caller that removes them must wait for this first. Nothing for a child
        that does not lead a group, or that still runs. Its pid names the group
        as long as a member lives (the kernel reuses no pid that is a group's id).
        """
        if not self._group or self._popen.poll() is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                log.warning("%s (pid %d): its process group outlived it by %g s",
                            self.name, self.pid, timeout)  # fmt: skip
                return
            time.sleep(0.05)

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM, up to ``grace`` seconds to end by itself, then SIGKILL; the exit status.

        Idempotent: a program that has already ended is only waited for.
        """
        if self._popen.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                return self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                log.debug("%s (pid %d): still running %g s after SIGTERM: killed",
                          self.name, self.pid, grace)  # fmt: skip
        return self.kill()

    def close(self) -> None:
        """Close our ends of its pipes (the program keeps running)."""
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # a closed pipe: it is not reading
                    stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self.close()


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM (``kill``, a CI job's timeout, systemd stopping a unit) ends a long verb
    the way Ctrl-C does: KeyboardInterrupt, so its work is undone (partial entries and
    work directories removed, children stopped) and the exit code is 130.

    SIGINT gets Python's own handler back too: a background job of a shell script
    starts with SIGINT ignored, and Python then never raises KeyboardInterrupt, so
    an interrupted build would carry on to the end.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)

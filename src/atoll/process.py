"""The single helper through which atoll runs every external program.

Rules (after mkosi's ``run.py``):

* argv lists only, never ``shell=True``; paths go through ``os.fspath``;
* a clean, predictable environment (``LANG=C.UTF-8``, a fixed ``PATH``) plus
  whatever the caller adds explicitly;
* stdin closed unless the caller passes input;
* with ``ATOLL_DEBUG=1`` every argv is logged as a copy-pasteable shell line;
* on failure a :class:`~atoll.errors.ToolError` naming the program, its exit
  code and the tail of its stderr; a missing program is a
  :class:`~atoll.errors.ToolMissing` that says which package provides it.

Thin typed wrappers per tool (:mod:`atoll.tools`) sit on top of this.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

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
}

StrPath = str | os.PathLike[str]


def _environment(extra: Mapping[str, str] | None) -> dict[str, str]:
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
) -> subprocess.CompletedProcess[bytes]:
    """Run an external program; raise :class:`ToolError` if it fails.

    ``capture=True`` collects stdout and stderr (bytes) on the result;
    ``capture=False`` lets them through to our own stdout/stderr (progress of
    long-running tools). ``stdout=`` streams stdout to an open file instead.
    ``on_line`` receives each line the program writes to stdout or stderr
    (merged) as it appears, for progress; the output is still collected on
    the result and its tail still goes into a failure's message.
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("run() needs a program")
    if "/" not in args[0]:
        args[0] = which(args[0])
    log.debug("+ %s", command_line(args))
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
) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            args,
            cwd=os.fspath(cwd) if cwd is not None else None,
            env=_environment(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else (subprocess.PIPE if capture else None),
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise ToolMissing(f"{args[0]}: not found ({e.strerror})") from e
    except subprocess.TimeoutExpired as e:
        raise ToolError(
            f"{Path(args[0]).name}: timed out after {timeout:.0f}s: {command_line(args)}",
            argv=args,
            returncode=-1,
        ) from e


def _run_streaming(
    args: list[str],
    *,
    cwd: StrPath | None,
    env: Mapping[str, str] | None,
    timeout: float | None,
    on_line: Callable[[str], None],
) -> subprocess.CompletedProcess[bytes]:
    collected: list[bytes] = []
    try:
        proc = subprocess.Popen(
            args,
            cwd=os.fspath(cwd) if cwd is not None else None,
            env=_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except FileNotFoundError as e:
        raise ToolMissing(f"{args[0]}: not found ({e.strerror})") from e
    with proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                collected.append(raw)
                on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            returncode = proc.wait(timeout=timeout)
        except BaseException as e:
            # Ctrl-C or a failing callback: the child must not outlive us. On
            # Ctrl-C it gets SIGINT, as from a terminal, so it cleans up the
            # way it does for a user; then TERM and KILL if it lingers.
            if isinstance(e, KeyboardInterrupt):
                proc.send_signal(signal.SIGINT)
            else:
                proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    output = b"".join(collected)
    return subprocess.CompletedProcess(args, returncode, stdout=output, stderr=output)


def _tail(data: bytes | None, lines: int = 15) -> str:
    if not data:
        return ""
    text = data.decode("utf-8", errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])

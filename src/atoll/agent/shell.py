"""The ops shell: an interactive container on demand, limited in time, recorded in full.

``POST /v1/shell`` (role admin) with ``{"reason": str, "ttl"?: seconds, "tty"?: bool,
"rows"?: int, "cols"?: int, "image"?: str}`` and the headers ``Connection: Upgrade`` +
``Upgrade: atoll-shell/1`` is answered ``101 Switching Protocols``; from then on
the same mutual-TLS connection carries *frames* both ways (their format,
which ``atoll node shell`` speaks too, is :mod:`atoll.wire.shellframe`'s):
a byte stream alone could not say "stdin closed", "the window changed" or
"exited 3 because the TTL ran out". The client waits for the 101 before it
sends a frame.

On the node the session is a pseudo-terminal whose slave end is the stdin,
stdout, stderr and controlling terminal of a :class:`Runtime`'s command
(started by :func:`atoll.agent.command.spawn`; ``ctr`` itself runs through
:func:`atoll.agent.command.run`, ``CTR_TIMEOUT`` per call); the
agent relays pty <-> frames in the request's worker thread. The real runtime
is containerd (:class:`ContainerdRuntime`, ``ctr run`` with the preloaded
image); tests put a plain command on the pty instead (same relay, same
recording). With ``tty`` false (the client's stdin is not a terminal: a
script) the pty neither echoes nor rewrites output, and the container gets
pipes rather than a console, so the shell prints no prompts and the output is
byte-exact.

The session ends when the command exits, when the client disconnects, or at
the TTL (measured on an injected monotonic clock): then the command's process
group gets SIGHUP then SIGKILL, and the runtime's ``stop`` kills and removes
the container. A last frame tells the client the exit status and why it
ended. A container that outlived its agent (killed or restarted mid-session) is
found by ``leftovers`` and removed when the next agent starts.

Recording: the transcript is an asciicast v2 file (``asciinema play`` replays
it) under ``<root>/var/log/atoll/shell/<id>.log``: a JSON header (session id,
who, reason, ttl, command) then one ``[seconds, "o"|"i"|"r"|"m", text]`` event
per chunk of output, input, resize, and a final marker with the end. It is
fsynced before its SHA-256 goes into the session's end record in the audit
log (the start record is written before the 101 is sent). Standard library
only: this runs on the node.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import secrets
import select
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NewType, Protocol

from atoll.agent import command
from atoll.wire.imagelist import DIRECTORY, TOOLBOX_LIST, ImageListError, ListedImage, parse_list
from atoll.wire.shellframe import (
    MAX_FRAME,
    WINSIZE,
    End,
    ExitFrame,
    Frame,
    FrameReader,
    encode_frame,
)

DEFAULT_TTL = 15 * 60
MAX_TTL = 4 * 60 * 60
MAX_REASON = 500
KILL_GRACE = 3.0  # seconds between SIGHUP and SIGKILL
EXIT_GRACE = 10.0  # seconds for a command that exited to be reaped before SIGKILL
CTR_TIMEOUT = 30.0  # seconds for one ctr call (list, kill, delete)
# Seconds to import the toolbox archive (tens of MB; seconds on hardware, more under
# emulation); less than the client's wait for an answer (atoll.ops.shell.ANSWER_TIMEOUT).
IMPORT_TIMEOUT = 240.0
TRANSCRIPT_DIR = "var/log/atoll/shell"
CONTAINER_PREFIX = "atoll-shell-"

SessionId = NewType("SessionId", str)
Clock = Callable[[], float]  # monotonic seconds


class ShellInputError(ValueError):
    """A bad request body; the message names the field."""


@dataclass(frozen=True)
class ShellRequest:
    reason: str
    ttl: int = DEFAULT_TTL
    tty: bool = True
    rows: int = 24
    cols: int = 80
    image: str | None = None  # a preloaded image instead of the toolbox, for diagnosis


_FIELDS: dict[str, type] = {
    "reason": str,
    "ttl": int,
    "tty": bool,
    "rows": int,
    "cols": int,
    "image": str,
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A full image reference (registry/name:tag or @sha256:...), as compose accepts them.
_IMAGE = re.compile(
    r"[a-z0-9][a-z0-9.-]*(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})"
)
MAX_IMAGE = 255


def parse_request(body: dict[str, Any]) -> ShellRequest:
    """Validate a ``POST /v1/shell`` body completely (unknown fields, types, ranges)."""
    for key, value in body.items():
        if key not in _FIELDS:
            raise ShellInputError(f"{key}: unknown field")
        # bool is an int in Python; only JSON true/false count as booleans
        if type(value) is not _FIELDS[key]:
            raise ShellInputError(f"{key}: expected {_FIELDS[key].__name__}")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ShellInputError("reason: required, a non-empty string (it goes into the audit log)")
    if len(reason) > MAX_REASON or _CONTROL.search(reason):
        raise ShellInputError(f"reason: at most {MAX_REASON} characters, no control characters")
    ttl = body.get("ttl", DEFAULT_TTL)
    if not 1 <= ttl <= MAX_TTL:
        raise ShellInputError(f"ttl: {ttl} seconds is outside 1..{MAX_TTL}")
    for key in ("rows", "cols"):
        if key in body and not 1 <= body[key] <= 1000:
            raise ShellInputError(f"{key}: {body[key]} is outside 1..1000")
    image = body.get("image")
    if image is not None and (len(image) > MAX_IMAGE or not _IMAGE.fullmatch(image)):
        raise ShellInputError(
            f"image: not a full image reference (registry/name:tag), at most {MAX_IMAGE} characters"
        )
    return ShellRequest(
        reason=reason.strip(),
        ttl=ttl,
        tty=body.get("tty", True),
        rows=body.get("rows", 24),
        cols=body.get("cols", 80),
        image=image,
    )


def new_session_id() -> SessionId:
    """Sortable and unique: UTC time plus 48 random bits (also the container's name)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return SessionId(f"{now}-{secrets.token_hex(6)}")


class Runtime(Protocol):
    """What runs on the pty, and how to make sure it is gone afterwards."""

    def argv(self, session: SessionId, tty: bool, image: str | None = None) -> list[str]:
        """The command of a session: in the toolbox, or in ``image`` (already prepared)."""
        ...

    def stop(self, session: SessionId) -> list[str]:
        """Kill and remove what ``argv`` started, idempotently; returns problems, if any."""
        ...

    def leftovers(self) -> list[SessionId]:
        """Sessions whose container outlived its agent (stopped or crashed mid-session)."""
        ...

    def running(self, session: SessionId) -> bool:
        """Whether the session's process runs (the end of stdin can reach it)."""
        ...

    def prepare(self, image: str | None = None) -> None:
        """Make sure a session can start (the toolbox, or ``image``, is there); raises
        :class:`ShellUnavailable` saying why not. Runs before the 101 is sent."""
        ...


class ShellUnavailable(RuntimeError):
    """The ops shell cannot start on this node; the message says why and names the image."""


class ShellImageMissing(ShellUnavailable):
    """The image a request named is not in containerd (it is not preloaded)."""


@dataclass(frozen=True)
class ContainerdRuntime:
    """``ctr run`` of the image's toolbox as the ops container.

    The toolbox (built by ``atoll compose`` from Debian packages, or the site's
    own) is an OCI archive in the image, named by ``toolbox.list``
    (:mod:`atoll.wire.imagelist`). :meth:`prepare` imports it with the preload
    script the first time a shell needs it, and again after an upgrade that
    changed it or when someone removed it from containerd (``imported`` keeps a
    copy of the list last imported).

    Isolation (an ops container is for looking at the host, not for changing it):
    the host's network and PID namespaces (joined by path: ``--net-host`` would also
    bind the host's /etc/hosts, which a node may not have; sockets, interfaces, processes are
    visible; ``ps``, ``ss`` work), the host's root bind-mounted read-only
    and recursively so (``rro``: /etc, /var, /sysroot too) at ``/host``, its own
    mount, UTS and IPC namespaces and root filesystem (the toolbox's tools, not the
    host's), and containerd's default capability set: no ``CAP_SYS_ADMIN``, so no
    remount, no module loading. Changes to the node go through the API. The
    toolbox's ``ctr`` (the host's, run by ``chroot /host``) reaches containerd's
    socket on the read-only mount (a connect writes nothing), which is root on
    the node, like the shell itself: the session is an admin's, limited in time
    and recorded. ``ctr run`` cannot work in here (ctr mounts the image on its
    own side); a request's ``image`` runs a preloaded image as the ops container
    instead, with the same isolation.
    """

    images: Path = Path("/") / DIRECTORY
    imported: Path = Path("/var/lib/atoll/toolbox.imported")
    preload: str = "/usr/lib/atoll/preload"
    namespace: str = "default"
    command: tuple[str, ...] = ("/bin/sh",)
    ctr: str = "ctr"
    _importing: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def toolbox(self) -> ListedImage:
        """The toolbox this deployment lists; :class:`ShellUnavailable` if there is none."""
        listed = self.images / TOOLBOX_LIST
        try:
            images = parse_list(listed.read_text(), str(listed))
        except FileNotFoundError:
            raise ShellUnavailable(
                f"this image has no ops toolbox ({listed} is missing: its manifest set "
                '[agent] toolbox = ""); operate the node through the API'
            ) from None
        except (OSError, UnicodeDecodeError, ImageListError) as e:
            raise ShellUnavailable(f"the ops toolbox list is unreadable: {e}") from e
        if len(images) != 1:
            raise ShellUnavailable(f"{listed}: expected one toolbox, found {len(images)}")
        return images[0]

    def prepare(self, image: str | None = None) -> None:
        if image is not None:
            if not self._has_image(image):
                raise ShellImageMissing(
                    f"image {image} is not in containerd: a diagnosis shell runs an image "
                    "the node already has (preloaded); `ctr images ls` in the ops shell lists them"
                )
            return
        toolbox = self.toolbox()
        with self._importing:
            listed = (self.images / TOOLBOX_LIST).read_text()
            if self._has_image(toolbox.reference) and self._imported_list() == listed:
                return
            archive = self.images / toolbox.archive
            if not archive.is_file():
                raise ShellUnavailable(
                    f"the ops toolbox image {toolbox.reference} is not in containerd and its "
                    f"archive {archive} is missing from this image"
                )
            env = {
                "ATOLL_PRELOAD_DIR": str(self.images),
                "ATOLL_PRELOAD_LIST": str(self.images / TOOLBOX_LIST),
                "ATOLL_PRELOAD_DONE": str(self.imported),
                "ATOLL_CTR": self.ctr,
            }
            try:
                command.run([self.preload], timeout=IMPORT_TIMEOUT, env=env)
            except command.CommandError as e:
                raise ShellUnavailable(
                    f"importing the ops toolbox image {toolbox.reference} from {archive} "
                    f"failed: {e}"
                ) from e
            if not self._has_image(toolbox.reference):
                raise ShellUnavailable(
                    f"the ops toolbox image {toolbox.reference} is not in containerd after "
                    f"importing {archive}"
                )

    def _has_image(self, reference: str) -> bool:
        problems: list[str] = []
        argv = [self.ctr, "-n", self.namespace, "images", "list", "--quiet", f"name=={reference}"]
        listed = self._run(argv, problems, quiet=False)
        if problems:
            raise ShellUnavailable(f"containerd cannot be asked for {reference}: {problems[0]}")
        return reference in listed.split()

    def _imported_list(self) -> str | None:
        try:
            return self.imported.read_text()
        except (OSError, UnicodeDecodeError):
            return None

    @staticmethod
    def container(session: SessionId) -> str:
        return CONTAINER_PREFIX + session

    def leftovers(self) -> list[SessionId]:
        problems: list[str] = []
        listed = self._run([self.ctr, "-n", self.namespace, "containers", "list", "--quiet"],
                           problems, quiet=False)  # fmt: skip
        return [
            SessionId(name.removeprefix(CONTAINER_PREFIX))
            for name in listed.split()
            if name.startswith(CONTAINER_PREFIX)
        ]

    def running(self, session: SessionId) -> bool:
        """The task is listed RUNNING. ``ctr run`` turns the end of its stdin into a
        CloseIO of the task; one that arrives while the task is still being created is
        lost and the container's stdin never ends (containerd/nerdctl#5042), so the
        session holds a script's end of input back until then."""
        listed = self._run([self.ctr, "-n", self.namespace, "tasks", "list"], [], quiet=True)
        name = self.container(session)
        return any(line.split()[:1] == [name] and "RUNNING" in line.split()
                   for line in listed.splitlines())  # fmt: skip

    def argv(self, session: SessionId, tty: bool, image: str | None = None) -> list[str]:
        return [
            self.ctr, "-n", self.namespace, "run", "--rm", *(["--tty"] if tty else []),
            "--with-ns", "network:/proc/1/ns/net", "--with-ns", "pid:/proc/1/ns/pid",
            "--mount", "type=bind,src=/,dst=/host,options=rbind:rro",
            "--env", f"ATOLL_SHELL={session}",
            image or self.toolbox().reference, self.container(session), *self.command,
        ]  # fmt: skip

    def stop(self, session: SessionId) -> list[str]:
        name = self.container(session)
        problems: list[str] = []
        base = [self.ctr, "-n", self.namespace]
        # The task may be gone already (ctr run --rm cleaned up): only the last
        # check counts, the container must not be listed any more.
        for argv in (
            [*base, "tasks", "kill", "--signal", "SIGKILL", name],
            [*base, "tasks", "delete", "--force", name],
            [*base, "containers", "delete", name],
        ):
            self._run(argv, problems, quiet=True)
        listed = self._run([*base, "containers", "list", "--quiet"], problems, quiet=False)
        if name in listed.split():
            problems.append(f"container {name} is still listed by ctr")
        return problems

    def _run(self, argv: list[str], problems: list[str], *, quiet: bool) -> str:
        try:
            done = command.run(argv, timeout=CTR_TIMEOUT, check=False)
        except command.CommandError as e:  # timed out, or no ctr
            problems.append(str(e))
            return ""
        if done.status != 0 and not quiet:
            problems.append(f"{' '.join(argv)}: exit {done.status}: {done.stderr_text.strip()}")
        return done.stdout_text


@dataclass(frozen=True)
class CommandRuntime:
    """A plain command on the pty (no container): hosts without containerd, tests."""

    command: tuple[str, ...] = ("/bin/sh",)

    def argv(self, session: SessionId, tty: bool, image: str | None = None) -> list[str]:
        return list(self.command)

    def stop(self, session: SessionId) -> list[str]:
        return []  # the process group is killed by the session itself

    def leftovers(self) -> list[SessionId]:
        return []  # nothing outlives the agent's own process groups

    def running(self, session: SessionId) -> bool:
        return True  # a plain process reads its stdin from the start

    def prepare(self, image: str | None = None) -> None:
        return  # nothing to import


@dataclass(frozen=True)
class ShellResult:
    session: SessionId
    end: End
    exit_status: int | None  # the command's exit code (negative: killed by that signal)
    transcript: Path
    transcript_sha256: str
    seconds: float
    bytes_in: int
    bytes_out: int
    problems: tuple[str, ...]

    def audit_fields(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "end": str(self.end),
            "exit_status": self.exit_status,
            "transcript": str(self.transcript),
            "transcript_sha256": self.transcript_sha256,
            "seconds": round(self.seconds, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "problems": list(self.problems),
        }


class Transcript:
    """An asciicast v2 recording, fsynced on close; ``sha256`` of the finished file."""

    def __init__(self, path: Path, header: dict[str, Any], clock: Clock) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._clock = clock
        self._start = clock()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._decoders = {
            kind: codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
            for kind in ("o", "i")
        }
        self._line(header)

    def _line(self, value: Any) -> None:
        self._file.write(json.dumps(value, ensure_ascii=False).encode() + b"\n")

    def event(self, kind: str, data: bytes | str) -> None:
        text = self._decoders[kind].decode(data) if isinstance(data, bytes) else data
        if text:
            self._line([round(self._clock() - self._start, 6), kind, text])

    def close(self, marker: str) -> str:
        for kind, decoder in self._decoders.items():
            self.event(kind, decoder.decode(b"", final=True))
        self._line([round(self._clock() - self._start, 6), "m", marker])
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        digest = hashlib.sha256()
        with self.path.open("rb") as f:
            for chunk in iter(lambda: f.read(65536), b""):
                digest.update(chunk)
        return digest.hexdigest()


def _spawn(argv: list[str], request: ShellRequest, session: SessionId) -> tuple[command.Child, int]:
    """Start ``argv`` on a new pty as its session leader; returns (the child, master fd)."""
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", request.rows, request.cols, 0, 0))
    if not request.tty:
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # output byte-exact (no \n -> \r\n)
        attrs[3] &= ~(termios.ECHO | termios.ECHONL)  # a script's input is not echoed back
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    env = {
        "TERM": "xterm-256color" if request.tty else "dumb",
        "HOME": "/root",
        "ATOLL_SHELL": session,
    }  # on top of command.environment(): PATH, LANG
    try:
        child = command.spawn(argv, terminal=slave, env=env)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return child, master


class ShellSession:
    """One session: spawn on a pty, relay frames on ``conn`` until the end, record everything."""

    def __init__(
        self,
        request: ShellRequest,
        runtime: Runtime,
        transcripts: Path,
        *,
        who: str,
        clock: Clock = time.monotonic,
        session: SessionId | None = None,
    ) -> None:
        self.request = request
        self.runtime = runtime
        self.id = session or new_session_id()
        self.transcript_path = transcripts / f"{self.id}.log"
        self.who = who
        self.clock = clock

    def run(
        self, conn: socket.socket, on_end: Callable[[ShellResult], None] | None = None
    ) -> ShellResult:
        """Relay until the end; ``on_end`` (the audit) runs before the client hears of it."""
        started = self.clock()
        deadline = started + self.request.ttl
        argv = self.runtime.argv(self.id, self.request.tty, self.request.image)
        transcript = Transcript(
            self.transcript_path,
            {
                "version": 2,
                "width": self.request.cols,
                "height": self.request.rows,
                "timestamp": int(time.time()),
                "env": {"TERM": "xterm-256color" if self.request.tty else "dumb"},
                "atoll": {
                    "session": self.id,
                    "who": self.who,
                    "reason": self.request.reason,
                    "ttl": self.request.ttl,
                    "tty": self.request.tty,
                    "command": argv,
                },
            },
            self.clock,
        )
        child, master = _spawn(argv, self.request, self.id)
        relay = _Relay(
            conn, master, child, transcript, lambda: self.runtime.running(self.id), self.clock
        )
        problems: list[str] = []
        try:
            end = relay.loop(lambda: deadline - self.clock())
        except (OSError, ValueError) as e:
            end = End.ERROR
            problems.append(f"relay: {e}")
        if end is not End.EXIT:
            # Kill the container first: ctr run then returns by itself (and --rm cleans up).
            self.runtime.stop(self.id)
        killed = end is not End.EXIT
        status = child.end(hangup=killed, grace=KILL_GRACE if killed else EXIT_GRACE)
        os.close(master)
        problems += self.runtime.stop(self.id)  # and check that nothing is left
        marker = f"end={end} exit_status={status}"
        digest = transcript.close(marker)
        result = ShellResult(
            session=self.id,
            end=end,
            exit_status=status,
            transcript=self.transcript_path,
            transcript_sha256=digest,
            seconds=self.clock() - started,
            bytes_in=relay.bytes_in,
            bytes_out=relay.bytes_out,
            problems=tuple(problems),
        )
        if on_end is not None:
            on_end(result)
        exit_frame = ExitFrame(self.id, str(end), status)
        with contextlib.suppress(OSError):  # the client gone: the audit record says the end
            conn.sendall(encode_frame(Frame.EXIT, exit_frame.to_json()))
        return result


class _Relay:
    def __init__(
        self,
        conn: socket.socket,
        master: int,
        child: command.Child,
        transcript: Transcript,
        running: Callable[[], bool],
        clock: Clock,
    ) -> None:
        self.conn = conn
        self.master = master
        self.child = child
        self.transcript = transcript
        self.frames = FrameReader()
        self.bytes_in = 0
        self.bytes_out = 0
        self._last_input = b"\n"
        self._running = running
        self._clock = clock
        self._started = False  # the runtime said its process runs
        self._eof_pending = False  # the client's stdin ended before that
        self._next_check = 0.0

    def _flush_eof(self) -> None:
        """Pass a held-back end of input on once the process runs (checked twice a second)."""
        if not self._eof_pending or self._clock() < self._next_check:
            return
        self._next_check = self._clock() + 0.5
        if self._started or self._running():
            self._started = True
            self._eof_pending = False
            self._write_eof()

    def _write_eof(self) -> None:
        # VEOF reads as end of file only at the start of a line: end a pending one first.
        eof = termios.tcgetattr(self.master)[6][termios.VEOF]
        eof_byte = eof if isinstance(eof, bytes) else bytes([eof])
        _write_all(self.master, (b"" if self._last_input == b"\n" else b"\n") + eof_byte)

    def loop(self, remaining: Callable[[], float]) -> End:
        try:
            return self._loop(remaining)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
            # The client went away while output was being sent to it.
            return End.DISCONNECT

    def _loop(self, remaining: Callable[[], float]) -> End:
        while True:
            left = remaining()
            if left <= 0:
                self._drain()
                return End.TTL
            # TLS may hold decrypted bytes that select() cannot see.
            pending = getattr(self.conn, "pending", lambda: 0)()
            ready: list[Any] = [self.conn] if pending else []
            if not ready:
                watch: list[Any] = [self.conn, self.master]
                ready = select.select(watch, [], [], min(left, 0.5))[0]
            if self.master in ready and not self._output():
                return End.EXIT
            if self.conn in ready:
                data = self.conn.recv(MAX_FRAME)
                if not data:
                    return End.DISCONNECT
                for kind, payload in self.frames.feed(data):
                    self._input(kind, payload)
            self._flush_eof()
            if not ready and self.child.exited():
                # The command is gone but something still holds the pty open.
                self._drain()
                return End.EXIT

    def _output(self) -> bool:
        try:
            data = os.read(self.master, MAX_FRAME)
        except OSError:  # EIO: every slave end is closed, the command exited
            return False
        if not data:
            return False
        self.bytes_out += len(data)
        self.transcript.event("o", data)
        self.conn.sendall(encode_frame(Frame.DATA, data))
        return True

    def _drain(self) -> None:
        while select.select([self.master], [], [], 0)[0] and self._output():
            pass

    def _input(self, kind: Frame, payload: bytes) -> None:
        if kind is Frame.DATA and payload:
            self.bytes_in += len(payload)
            self.transcript.event("i", payload)
            _write_all(self.master, payload)
            self._last_input = payload[-1:]
        elif kind is Frame.RESIZE and len(payload) == WINSIZE.size:
            rows, cols = WINSIZE.unpack(payload)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            self.transcript.event("r", f"{cols}x{rows}")
        elif kind is Frame.EOF:
            self._eof_pending = True
            self._next_check = 0.0
        elif kind is Frame.EXIT:
            raise ValueError("the client sent an EXIT frame")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

"""Node watches parked off the request threads: the controller pushes grants.

An agent waits for its grant state with ``GET /v1/nodes/NAME/desired?wait=ETAG``
(:meth:`atoll.wire.fleet.FleetClient.watch`). The HTTP server
(:mod:`atoll.fleet.server`, ``ThreadingHTTPServer``) gives every request a
thread; a watch whose answer is not ready does not keep it. The request's
thread checks the node's answer in the store and, when it still matches the
etag, hands the connection to the :class:`WatchHub`: one thread and one
selector (epoll) holding every parked watch as a socket, the node's name, the
grant it knows and a deadline. The request's thread then ends, so a parked
watch costs a socket and a small record, not a thread (10,000 idle threads
cost far more memory than 10,000 sockets: ``docs/fleet.md``, "Pushed grants").

After every plan the controller publishes how to compute any node's latest
answer (:meth:`WatchHub.publish`); the hub compares each parked watch with
it and answers the ones whose grant changed, at once, from its own thread
(``Connection: close``; the answer is a few hundred bytes). A watch whose
deadline passes is answered with the unchanged grant. A watch whose agent
hangs up is dropped. A publish that slipped between the request's read of
the store and its parking is caught by a generation count (a newer answer
wins at once) or, at worst, by the next plan (every tick).

Bounds: at most ``limit`` watches are parked at once; beyond, the request is
answered ``503`` with ``Retry-After`` (:func:`admit`), and the agent polls
meanwhile and comes back later with jitter. Parking costs no slot of the
server's ``max_in_flight``: only the short check in the request's thread does.

The wait is the server's choice (:func:`watch_seconds`): at most what the
agent asks and at most the server's own bound, spread by jitter so watches
opened together (after a restart) do not all end together.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from atoll.wire.fleet import WATCH_MAX, Desired

log = logging.getLogger(__name__)

DEFAULT_WATCH_SECONDS = WATCH_MAX
DEFAULT_MAX_WATCHES = 16_384
RETRY_AFTER = 10
"""Seconds a refused watch is told to wait (the agent adds jitter and polls meanwhile)."""
SEND_TIMEOUT = 1.0  # seconds to hand one answer to the kernel

Answers = Callable[[str], Desired | None]
"""A node's latest answer (tagged with its etag), or None for a node not known yet."""


def admit(parked: int, limit: int, *, stopping: bool = False) -> int | None:
    """None: park one more watch; else the ``Retry-After`` seconds of the 503."""
    if stopping:
        return 1
    if parked >= limit:
        return RETRY_AFTER
    return None


def watch_seconds(asked: float, bound: float, rand: float) -> float:
    """How long the server holds a watch: at most ``asked`` (the agent's wish),
    ``bound`` (the server's) and :data:`WATCH_MAX`, shortened by up to a quarter
    by ``rand`` in [0, 1) so watches opened together end apart."""
    longest = max(0.0, min(asked, bound, WATCH_MAX))
    return longest * (1.0 - 0.25 * rand)


@dataclass(eq=False)
class _Parked:
    sock: socket.socket
    node: str
    known: Desired
    deadline: float
    registered: bool = False
    done: bool = False


@dataclass
class _Queues:
    """What the hub's thread has to do next (filled under the hub's lock)."""

    incoming: list[_Parked] = field(default_factory=list)
    outgoing: list[tuple[_Parked, Desired]] = field(default_factory=list)


def http_answer(status: int, payload: object, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes its connection."""
    body = json.dumps(payload).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{key}: {value}" for key, value in (headers or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class WatchHub:
    """Parked watches and the thread that answers them (see the module docstring)."""

    def __init__(
        self, limit: int = DEFAULT_MAX_WATCHES, clock: Callable[[], float] = time.monotonic
    ):
        self.limit = limit
        self.clock = clock
        self.generation = 0
        """Publishes so far: a request notes it before reading the store."""
        self.answered = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._by_node: dict[str, list[_Parked]] = {}
        self._count = 0
        self._deadlines: list[tuple[float, int, _Parked]] = []
        self._order = itertools.count()
        self._queues = _Queues()
        self._answers: Answers = lambda _name: None
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Made by start(): a controller that never serves (tests) holds no sockets.
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    @property
    def parked(self) -> int:
        return self._count

    def start(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(
            target=self._run, args=(self._selector,), name="fleet-watches", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Hang up on every parked watch (its agent reconnects, with jitter) and end."""
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():  # still using the selector: leave it to the thread
                log.warning("watch hub: still running 10 s after stop; not closed")
                return
        for closeable in (self._selector, self._wake_r, self._wake_w):
            if closeable is not None:
                closeable.close()

    def park(
        self, sock: socket.socket, name: str, fresh: Desired, seconds: float, since: int
    ) -> int | None:
        """Hold ``sock``'s watch of node ``name`` for up to ``seconds``: None, the hub
        now answers it; else the ``Retry-After`` of a refusal (the caller answers 503).
        ``fresh`` is the node's answer as the request read it (its etag is the one
        the agent knows), ``since`` the :attr:`generation` noted before that read."""
        with self._lock:
            refused = admit(self._count, self.limit, stopping=self._stopping)
            if refused is not None:
                self.refused += 1
                return refused
            watch = _Parked(sock, name, fresh, self.clock() + seconds)
            self._by_node.setdefault(name, []).append(watch)
            self._count += 1
            heapq.heappush(self._deadlines, (watch.deadline, next(self._order), watch))
            self._queues.incoming.append(watch)
            latest = self._answers(name) if self.generation != since else None
            if latest is not None and latest.etag != fresh.etag:
                self._finish(watch, latest)  # a plan published meanwhile changed it
        self._wake()
        return None

    def publish(self, answers: Answers) -> None:
        """A plan was made: answer every parked watch whose grant it changed."""
        with self._lock:
            self.generation += 1
            self._answers = answers
            changed = [
                (watch, latest)
                for watches in self._by_node.values()
                for watch in watches
                if (latest := answers(watch.node)) is not None and latest.etag != watch.known.etag
            ]
            for watch, latest in changed:
                self._finish(watch, latest)
        if changed:
            self._wake()

    # the hub's thread ------------------------------------------------------

    def _finish(self, watch: _Parked, answer: Desired) -> None:
        """Take ``watch`` out of the parked ones and queue its answer (lock held)."""
        self._unpark(watch)
        self._queues.outgoing.append((watch, answer))

    def _unpark(self, watch: _Parked) -> None:
        watch.done = True
        self._count -= 1
        watches = self._by_node[watch.node]
        watches.remove(watch)
        if not watches:
            del self._by_node[watch.node]

    def _wake(self) -> None:
        if self._wake_w is None:
            return  # not started: nothing to wake
        with contextlib.suppress(OSError):  # already awake (buffer full), or stopped
            self._wake_w.send(b"x")

    def _run(self, selector: selectors.BaseSelector) -> None:
        while True:
            for key, _events in selector.select(self._timeout()):
                if key.data is None:
                    self._drain_wake()
                else:
                    self._hung_up(selector, key.data)
            if self._serve_queues(selector):
                return

    def _timeout(self) -> float | None:
        with self._lock:
            while self._deadlines and self._deadlines[0][2].done:
                heapq.heappop(self._deadlines)
            if not self._deadlines:
                return None
            return max(0.0, self._deadlines[0][0] - self.clock())

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _hung_up(self, selector: selectors.BaseSelector, watch: _Parked) -> None:
        """The agent closed (or spoke out of turn): drop its watch."""
        with self._lock:
            if not watch.done:
                self._unpark(watch)
        self._close(selector, watch)

    def _serve_queues(self, selector: selectors.BaseSelector) -> bool:
        """Register new watches, answer changed and expired ones; True once stopped."""
        now = self.clock()
        with self._lock:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, watch = heapq.heappop(self._deadlines)
                if not watch.done:
                    self._finish(watch, self._answers(watch.node) or watch.known)
            queues, self._queues = self._queues, _Queues()
            stopping = self._stopping
            if stopping:
                remaining = [w for ws in self._by_node.values() for w in ws]
                for watch in remaining:
                    self._unpark(watch)
        for watch in queues.incoming:
            if not watch.done:
                selector.register(watch.sock, selectors.EVENT_READ, watch)
                watch.registered = True
        for watch, answer in queues.outgoing:
            self._send(selector, watch, http_answer(200, answer.to_json()))
        if stopping:
            for watch in remaining:
                self._close(selector, watch)
        return stopping

    def _send(self, selector: selectors.BaseSelector, watch: _Parked, response: bytes) -> None:
        try:
            # A few hundred bytes into an idle socket's buffer: all of it or nothing,
            # and never long (the hub serves every other watch meanwhile).
            watch.sock.settimeout(SEND_TIMEOUT)
            watch.sock.sendall(response)
            self.answered += 1
        except OSError as e:
            log.debug("watch of %s: answer not sent: %s", watch.node, e)
        self._close(selector, watch)

    def _close(self, selector: selectors.BaseSelector, watch: _Parked) -> None:
        if watch.registered:
            selector.unregister(watch.sock)
            watch.registered = False
        with contextlib.suppress(OSError):  # the agent is gone already
            watch.sock.shutdown(socket.SHUT_RDWR)
        watch.sock.close()

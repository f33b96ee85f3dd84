"""The operator's grant, read from the node's own Kubernetes Node (node side, standard
library only).

On a cluster the update loop (:mod:`atoll.agent.update_loop`) follows the fleet
operator instead of a standalone controller: a node that joins a cluster (user
data ``[kubernetes]``) and names no ``[fleet].controller`` takes its grants from
its Node (docs/kubernetes.md, "The Node protocol"). :class:`NodeGrants` speaks
to the loop as :class:`atoll.wire.fleet.FleetClient` does:

* ``report`` hands what the loop found (healthy, failed, the step failure) to
  the :class:`~atoll.agent.kubenode.Publisher`, which is the one writer of the
  agent's annotations, publishes at once and reads the grant back;
* ``desired`` reads the operator's :class:`~atoll.wire.kubenode.Grant` from
  ``GET /api/v1/nodes/<node>`` and turns it into the loop's
  :class:`~atoll.wire.fleet.Desired` (:func:`desired_of`, pure), the pool's
  reboot policy (``atoll.dev/reboot``) with it: no grant yet (no NodePool
  selects the node) means "stay on what runs";
* ``watch`` waits on a Kubernetes watch of the Node
  (``?fieldSelector=metadata.name=<node>&watch=1&resourceVersion=...``) until
  the grant differs from the etag the loop holds, the watch's time runs out,
  or ``interrupted()``: the operator's grant reaches the node at once, without
  polling.

Everything is done as the node, with the kubelet's client certificate: the Node
authorizer lets a node read Nodes and change only its own.
"""

from __future__ import annotations

import http.client
import json
import re
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from atoll.agent import kubenode
from atoll.agent.kubenode import Join, NodeError, Publisher
from atoll.wire.fleet import Desired, FleetError, Restart, StepFailure
from atoll.wire.kubenode import Grant, NodeProtocolError, NodeState, one_line

CONTROLLER = "kubernetes"
"""The loop's controller on a cluster: the operator, through the node's own Node."""
WATCH_SECONDS = 55  # one watch's time on the server (it then ends the stream)
MAX_EVENT = 1 << 20  # bytes of one watch event (a Node is a few KiB)
NO_POOL = "no NodePool selects this node"
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")  # hex digits only: no sign, prefix or _


def desired_of(node: Mapping[str, Any], running: str) -> Desired:
    """What the operator's grant on ``node`` asks of the loop (with its etag);
    without a grant, stay on ``running``. Raises
    :class:`~atoll.wire.kubenode.NodeProtocolError` for a grant that breaks the
    protocol (it names the node and the key)."""
    grant = Grant.from_node(node)
    if grant is None:
        return Desired(running, False, False, NO_POOL, None).tagged()
    return grant.tagged()


class ChunkedLines:
    """The lines of an HTTP/1.1 chunked body, fed as it arrives (a watch's events are
    one JSON object per line). ``feed`` returns the complete lines so far; ``ended``
    turns true at the last chunk. Raises :class:`http.client.HTTPException` for a
    malformed chunk or a line longer than ``limit`` bytes."""

    def __init__(self, limit: int = MAX_EVENT) -> None:
        self.limit = limit
        self._raw = b""  # received, not yet parsed as chunks
        self._line = b""  # the body's current, unfinished line
        self._left = 0  # bytes of the current chunk still to come
        self._trailer = False  # the chunk's data is done: its CRLF comes next
        self.ended = False

    def feed(self, data: bytes) -> list[bytes]:
        self._raw += data
        lines: list[bytes] = []
        while not self.ended:
            if self._trailer:
                if len(self._raw) < 2:
                    break
                if self._raw[:2] != b"\r\n":
                    raise http.client.HTTPException("chunk not followed by CRLF")
                self._raw, self._trailer = self._raw[2:], False
            elif self._left:
                part, self._raw = self._raw[: self._left], self._raw[self._left :]
                self._left -= len(part)
                self._trailer = self._left == 0
                lines += self._body(part)
                if not part:
                    break
            else:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    if len(self._raw) > 1024:
                        raise http.client.HTTPException("chunk size line too long")
                    break
                size_text = self._raw[:end].split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_text):
                    raise http.client.HTTPException(f"bad chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                self._raw = self._raw[end + 2 :]
                if size == 0:
                    self.ended = True
                else:
                    self._left = size
        return lines

    def _body(self, data: bytes) -> list[bytes]:
        self._line += data
        *lines, self._line = self._line.split(b"\n")
        if len(self._line) > self.limit or any(len(line) > self.limit for line in lines):
            raise http.client.HTTPException(f"a watch event longer than {self.limit} bytes")
        return [line for line in lines if line.strip()]


class NodeGrants:
    """The update loop's controller on a cluster (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        publisher: Publisher,
        *,
        timeout: float = kubenode.TIMEOUT,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.root = root
        self.publisher = publisher
        self.timeout = timeout
        self.watch_seconds = watch_seconds
        self.base_url = CONTROLLER  # named in the loop's log lines
        self._running = ""  # the version the loop last reported
        self._wanted = ""  # the version the last grant asked for
        self._observed: str | None = None  # the etag of the last grant read
        self._last: Desired | None = None  # the last answer read
        # The last step failure and the grant it failed under: said on the Node until
        # the operator answers with another grant (it then knows: the standalone
        # controller keeps a failure in its store, the operator in its phase of the
        # node; a resume is a new grant, so the node tries again).
        self._failure: tuple[StepFailure, str | None] | None = None
        self._resource_version: str | None = None  # of the Node at the last read

    # -- the loop's calls -----------------------------------------------------------------

    def register(self, name: str, labels: Mapping[str, str], version: str, **_: Any) -> None:
        """Nothing: the kubelet registered the Node, and NodePools select it by its labels."""
        self._running = version

    def report(
        self,
        name: str,
        *,
        version: str,
        staged: str | None,
        healthy: bool,
        failed: bool,
        failure: StepFailure | None = None,
        restart: Restart | None = None,
    ) -> Desired:
        """Publish what the loop found (through the publisher: one writer of the agent's
        annotations), then read the grant. ``healthy`` and ``restart`` are the health
        record's and the restart record's, which the publisher reads itself (also
        between rounds); ``failed`` and the step failure are the loop's."""
        self._running = version
        with _told():
            return self._report(failed, failure)

    def _report(self, failed: bool, failure: StepFailure | None) -> Desired:
        if failure is not None:
            self._failure = (failure, self._observed)
        elif self._failure is not None and self._failure[1] != self._observed:
            self._failure = None  # the operator has answered it with another grant
        step = None if self._failure is None else self._failure[0]
        why = None
        if step is not None:
            why = one_line(f"{step.step} of {step.version} failed: {step.reason}")
        self._join()  # before the kubelet has joined there is nobody to tell
        self.publisher.adopt(
            failed=failed or step is not None, failure=why, observed=self._observed, step=step
        )
        self.publisher.once()
        return self._desired()

    def desired(self, name: str) -> Desired:
        with _told():
            return self._desired()

    def _desired(self) -> Desired:
        join = self._join()
        status, raw = self._get(join, f"/api/v1/nodes/{quote(self._node(), safe='')}")
        node = self._node_object(join, status, raw)
        self._resource_version = _resource_version(node)
        answer = self._answer(node)
        self._wanted = answer.version
        return answer

    def watch(
        self,
        name: str,
        etag: str,
        *,
        interrupted: Callable[[], bool] = lambda: False,
        check_every: float = 1.0,
    ) -> Desired | None:
        """Wait until the grant's etag differs from ``etag`` (the new answer), the
        watch's time runs out (an answer with ``etag``), or ``interrupted()``
        (None). Raises :class:`~atoll.wire.fleet.FleetError` when the watch cannot be had."""
        with _told():
            return self._watch(etag, interrupted, check_every)

    def _watch(
        self, etag: str, interrupted: Callable[[], bool], check_every: float
    ) -> Desired | None:
        join = self._join()
        if self._resource_version is None:
            current = self._desired()
            if current.etag != etag:
                return current
        node = quote(self._node(), safe="")
        path = (
            f"/api/v1/nodes?fieldSelector=metadata.name%3D{node}&watch=1"
            f"&resourceVersion={quote(self._resource_version or '')}"
            f"&timeoutSeconds={self.watch_seconds}&allowWatchBookmarks=true"
        )
        started = time.monotonic()
        deadline = started + self.watch_seconds + self.timeout
        where = f"{join.server}: watch of node {self._node()}"
        try:
            for event in _stream(join, path, deadline, interrupted, check_every, self.timeout):
                if event is None:
                    return None
                answer = self._event(event, where)
                if answer is not None and answer.etag != etag:
                    return answer
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            raise NodeError(f"{where}: {e}") from e
        lasted = time.monotonic() - started
        if lasted < self.watch_seconds / 2:
            # Ended long before its time (an API server restarting, a proxy): a failed
            # watch, so the loop backs off instead of watching again at once.
            raise NodeError(f"{where}: ended by the server after {lasted:.1f} s")
        # The watch's time ran out: the grant as last read (the loop's next round
        # reads it again with its report).
        return self._last if self._last is not None else self._desired()

    # -- the rest -------------------------------------------------------------------------

    def _event(self, event: Mapping[str, Any], where: str) -> Desired | None:
        kind, node = event.get("type"), event.get("object")
        if not isinstance(node, Mapping):
            raise NodeError(f"{where}: an event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            if node.get("code") == 410:  # Gone: the resource version is too old; read again
                self._resource_version = None
                return self._desired()
            message = str(node.get("message") or node)[:200]
            raise NodeError(f"{where}: the server ended the watch: {message}")
        self._resource_version = _resource_version(node) or self._resource_version
        if kind == "BOOKMARK":
            return None
        if kind == "DELETED":
            raise NodeError(f"{where}: the Node was deleted")
        answer = self._answer(node)
        self._wanted = answer.version
        return answer

    def _answer(self, node: Mapping[str, Any]) -> Desired:
        running = self._running
        if not running:
            state = NodeState.from_node(node)
            running = state.version if state is not None else ""
        try:
            answer = desired_of(node, running)
        except NodeProtocolError as e:
            raise NodeError(str(e)) from e
        self._observed, self._last = answer.etag, answer
        return answer

    def _node(self) -> str:
        return self.publisher.node()

    def _join(self) -> Join:
        join = kubenode.find_join(self.root)
        if join is None:
            raise NodeError(f"node {self._node()}: the kubelet has not joined yet")
        return join

    def _get(self, join: Join, path: str) -> tuple[int, bytes]:
        context = kubenode.client_context(join)
        try:
            return kubenode.request(join.server, context, "GET", path, timeout=self.timeout)
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            raise NodeError(f"{join.server}: node {self._node()}: {e}") from e

    def _node_object(self, join: Join, status: int, raw: bytes) -> Mapping[str, Any]:
        where = f"{join.server}: node {self._node()}"
        if status != 200:
            raise NodeError(f"{where}: HTTP {status}: {kubenode.message_of(raw)}")
        try:
            node = json.loads(raw)
        except ValueError as e:
            raise NodeError(f"{where}: not JSON: {e}") from e
        if not isinstance(node, dict):
            raise NodeError(f"{where}: not a Node object")
        return node


def _resource_version(node: Mapping[str, Any]) -> str | None:
    meta = node.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return version if isinstance(version, str) and version.isdigit() else None


def _stream(
    join: Join,
    path: str,
    deadline: float,
    interrupted: Callable[[], bool],
    check_every: float,
    timeout: float,
) -> Iterator[Mapping[str, Any] | None]:
    """The events of a watch, as they come; None once ``interrupted()`` (then it ends)."""
    context = kubenode.client_context(join)
    conn = kubenode.connection(join.server, context, timeout)
    try:
        # Connection: close: an answer that is not a watch (401, 429...) ends with
        # the connection instead of waiting out the watch's time.
        conn.request(
            "GET", kubenode.server_path(join.server, path), headers={"Connection": "close"}
        )
        assert conn.sock is not None  # request() connected it
        head = b""
        body: ChunkedLines | None = None
        for received in _received(conn.sock, deadline, interrupted, check_every):
            if received is None:
                yield None
                return
            data = received
            if body is None:
                head += data
                if b"\r\n\r\n" not in head:
                    if len(head) > 65536:
                        raise http.client.HTTPException("answer head too long")
                    continue
                head, data = head.split(b"\r\n\r\n", 1)
                body = _start(head, data, conn.sock, deadline)
            for line in body.feed(data):
                try:
                    event = json.loads(line)
                except ValueError as e:
                    raise http.client.HTTPException(f"a watch event is not JSON: {e}") from e
                if isinstance(event, dict):
                    yield event
            if body.ended:
                return
    finally:
        conn.close()


def _received(
    sock: socket.socket, deadline: float, interrupted: Callable[[], bool], check_every: float
) -> Iterator[bytes | None]:
    """What arrives on ``sock`` until the server closes it; None (then the end) once
    ``interrupted()``, asked every ``check_every`` seconds. ``TimeoutError`` past
    ``deadline``.

    The socket is read without blocking (as :meth:`atoll.wire.fleet.FleetClient.watch`
    does): over TLS 1.3 the server's session tickets make it readable long before
    an event, and a blocking read would then wait with the connection's timeout."""
    sock.setblocking(False)
    next_check = time.monotonic() + check_every
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now >= next_check:  # on a clock: also while events keep coming
                if interrupted():
                    yield None
                    return
                next_check = now + check_every
            left = deadline - now
            if left <= 0:
                raise TimeoutError("the watch outlived its time")
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
            if not pending and not selector.select(min(next_check - now, left)):
                continue
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue  # a TLS record without data (a ticket)
            except ssl.SSLWantWriteError:
                time.sleep(0.01)  # TLS wants to write first (a key update): try again
                continue
            if not data:
                return  # the server ended the watch
            yield data


def _start(head: bytes, data: bytes, sock: socket.socket, deadline: float) -> ChunkedLines:
    """Check the answer's head: a 200 with a chunked body, else the server's message."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise http.client.HTTPException(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    if status != 200:
        # The server's message: up to its close (Connection: close), 4 KiB, or a
        # connection timeout.
        rest, until = data, min(deadline, time.monotonic() + 10.0)
        while len(rest) < 4096 and time.monotonic() < until:
            try:
                more = sock.recv(4096)
            except (ssl.SSLWantReadError, BlockingIOError):
                time.sleep(0.05)
                continue
            if not more:
                break
            rest += more
        if "chunked" in headers.get("transfer-encoding", ""):
            rest = rest.split(b"\r\n", 1)[-1]  # the first chunk's size line
        text = rest
        raise http.client.HTTPException(f"HTTP {status}: {kubenode.message_of(text)}")
    if headers.get("transfer-encoding", "").lower() != "chunked":
        raise http.client.HTTPException("a watch answer that is not chunked")
    return ChunkedLines()


@contextmanager
def _told() -> Iterator[None]:
    """A Node that cannot be read or written is, to the loop, a controller it cannot reach."""
    try:
        yield
    except NodeError as e:
        raise FleetError(str(e)) from e

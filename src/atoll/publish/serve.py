"""``atoll serve``: a plain HTTP update server for a published directory.

Static files only (any web server works as well): the ostree repository and
the channel documents. What it adds over ``python -m http.server``:

* ``Range`` requests (single ranges, ``206 Partial Content``), so an
  interrupted download resumes instead of starting over;
* ``HEAD``, ``Content-Length`` on everything, no directory listings, and
  nothing outside the served directory (``..`` and symlinks out refused);
* a thread per connection (``ThreadingHTTPServer``) and counters of requests
  and bytes sent, which the benchmark reads.

It listens where it is told; the CLI accepts only loopback addresses unless
``--public`` is given, since the files are public but the machine may not be.
"""

from __future__ import annotations

import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 16


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes_sent = 0
        self.errors = 0

    def add(self, sent: int, error: bool = False) -> None:
        with self.lock:
            self.requests += 1
            self.bytes_sent += sent
            self.errors += int(error)


class UpdateServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], root: Path) -> None:
        self.root = root.resolve()
        self.counters = Counters()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: UpdateServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: object) -> None:
        pass  # counters instead of a line per object

    def _resolve(self) -> Path | None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        candidate = (self.server.root / path.lstrip("/")).resolve()
        if candidate != self.server.root and self.server.root not in candidate.parents:
            return None
        return candidate if candidate.is_file() else None

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _fail(self, status: HTTPStatus) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.counters.add(0, error=status >= 500)

    def _serve(self, body: bool) -> None:
        path = self._resolve()
        if path is None:
            self._fail(HTTPStatus.NOT_FOUND)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        header = self.headers.get("Range")
        if header:
            match = _RANGE.match(header.strip())
            if not match or (not match.group(1) and not match.group(2)):
                self._fail(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                return
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else size - 1
            else:
                start = max(0, size - int(match.group(2)))
            end = min(end, size - 1)
            if start > end or start >= size:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.server.counters.add(0)
                return
            status = HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status is HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        sent = 0
        if body and length:
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    while sent < length:
                        chunk = f.read(min(_CHUNK, length - sent))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away; it resumes with a Range
        self.server.counters.add(sent)


def make_server(root: Path, host: str, port: int) -> UpdateServer:
    if not root.is_dir():
        raise FileNotFoundError(root)
    return UpdateServer((host, port), root)


def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0) -> UpdateServer:
    """Start a server in a daemon thread (tests, benchmark, demo); stop with ``shutdown()``."""
    server = make_server(root, host, port)
    thread = threading.Thread(target=server.serve_forever, name="atoll-serve", daemon=True)
    thread.start()
    return server


def url_of(server: UpdateServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host!s}:{port}"


def is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")

"""The fleet client (atoll.wire.fleet, the agent's and the CLI's) against a scripted
HTTP server: Retry-After, which answers are retried, replicas. (The backoff schedule
and the URL checks, which need no socket: tests/unit/test_fleet_client.py.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from atoll.wire.fleet import Backoff, FleetClient, FleetError, request_json


class _Scripted(BaseHTTPRequestHandler):
    script: ClassVar[list[tuple[int, dict[str, str], Any]]] = []
    seen: ClassVar[list[tuple[str, str, Any]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append((self.command, self.path, body))
        status, headers, payload = self.script.pop(0)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("H", (_Scripted,), {"script": [], "seen": []})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


DESIRED = {"version": "v2", "stage": True, "may_reboot": False, "reason": "", "pool": "web"}


def test_429_retry_after_is_honoured(server: tuple[str, type[_Scripted]]) -> None:
    url, handler = server
    handler.script += [(429, {"Retry-After": "2"}, {"error": "busy"}), (200, {}, DESIRED)]
    slept: list[float] = []
    client = FleetClient(url, backoff=Backoff(sleep=slept.append, rand=lambda: 0.0))
    desired = client.report("n 1", version="v1", staged=None, healthy=True)
    assert desired.version == "v2" and desired.stage and not desired.may_reboot
    assert slept == [2.0]
    assert handler.seen[-1] == (
        "POST",
        "/v1/nodes/n%201/report",
        {"version": "v1", "staged": None, "healthy": True, "failed": False},
    )


def test_client_errors_are_not_retried(server: tuple[str, type[_Scripted]]) -> None:
    url, handler = server
    handler.script += [(404, {}, {"error": "node 'x' is not registered"})]
    slept: list[float] = []
    with pytest.raises(FleetError, match="404: node 'x' is not registered") as info:
        FleetClient(url, backoff=Backoff(sleep=slept.append)).desired("x")
    assert info.value.status == 404 and slept == []


def test_gives_up_naming_the_url() -> None:
    slept: list[float] = []
    policy = Backoff(attempts=3, sleep=slept.append, rand=lambda: 1.0, base=0.1)
    with pytest.raises(FleetError, match=r"GET http://127\.0\.0\.1:9/x: gave up after 3"):
        request_json("GET", "http://127.0.0.1:9/x", timeout=1, backoff=policy)
    assert slept == [0.1, 0.2]


def test_replicas_fail_over_and_stick(server: tuple[str, type[_Scripted]]) -> None:
    url, handler = server
    handler.script += [(200, {}, DESIRED), (200, {}, DESIRED)]
    slept: list[float] = []
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    client = FleetClient(f"{dead}, {url}/", backoff=Backoff(sleep=slept.append, rand=lambda: 0))
    assert client.desired("a").version == "v2"  # the dead replica, then the live one
    assert client.base_url == url and len(slept) == 1
    assert client.desired("a").version == "v2"  # straight to the replica that answered
    assert len(slept) == 1 and len(handler.seen) == 2
    with pytest.raises(FleetError, match="empty"):
        FleetClient(" , ")

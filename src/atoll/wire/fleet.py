"""The node side of the fleet protocol: register, report, ask for the desired version.

Standard library only (it runs on the node with Debian's python3). The agent
daemon calls :class:`FleetClient`; the operator CLI reuses :func:`request_json`.

Protocol (JSON over HTTP, documented in ``docs/fleet.md``):

* ``POST /v1/nodes/register`` ``{"name", "labels", "version", "healthy"}``
* ``POST /v1/nodes/{name}/report`` ``{"version", "staged", "healthy", "failed"}``
  -> the same answer as ``desired``
* ``GET /v1/nodes/{name}/desired`` -> ``{"version", "stage", "may_reboot",
  "reason", "pool"}``: stage ``version`` ahead of time when ``stage`` is true;
  switch to it and reboot only when ``may_reboot`` is true (the controller has
  then already counted this node as unavailable).

Controller replicas: ``FleetClient("http://a:9443,http://b:9443")`` knows
several replicas (``docs/fleet.md``: any replica answers); each retry goes to
the next one, and the client stays with the replica that answered last.

Overload protection: a 429 or 503 answer, a 5xx or a connection error is
retried with exponential backoff and full jitter (``uniform(0, min(cap,
base * 2**attempt))``), never sooner than the server's ``Retry-After``; other
4xx answers are the caller's mistake and raise at once. Clock, sleep and the
random source are injectable so the schedule is testable without waiting.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class FleetError(Exception):
    """The controller could not be reached or refused the request (message names the URL)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Desired:
    version: str
    stage: bool
    may_reboot: bool
    reason: str
    pool: str | None


@dataclass
class Backoff:
    """Exponential backoff with full jitter; ``delays`` records what was slept (for tests)."""

    base: float = 0.2
    cap: float = 30.0
    attempts: int = 8
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random
    delays: list[float] = field(default_factory=list)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        jittered = float(self.rand()) * min(self.cap, self.base * (2**attempt))
        if retry_after is not None:
            # Honour the server's hint and still spread the herd behind it.
            return float(retry_after + jittered)
        return float(jittered)

    def wait(self, attempt: int, retry_after: float | None) -> None:
        seconds = self.delay(attempt, retry_after)
        self.delays.append(seconds)
        self.sleep(seconds)


def _retry_after(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def request_json(
    method: str,
    url: str,
    body: Mapping[str, Any] | None = None,
    *,
    timeout: float = 10.0,
    backoff: Backoff | None = None,
) -> Any:
    """One JSON request with retries per the module docstring; returns the decoded body."""
    return request_replicas(method, [url], body, timeout=timeout, backoff=backoff)[0]


def request_replicas(
    method: str,
    urls: Sequence[str],
    body: Mapping[str, Any] | None,
    *,
    timeout: float,
    backoff: Backoff | None,
) -> tuple[Any, int]:
    """:func:`request_json` over replicas: attempt N goes to ``urls[N % len(urls)]``.

    Returns the body and the index of the URL that answered."""
    if not urls:
        raise FleetError("no controller URL given")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise FleetError(f"{url}: only http:// and https:// controller URLs are supported")
    policy = backoff or Backoff()
    data = None if body is None else json.dumps(body).encode()
    last = ""
    for attempt in range(policy.attempts):
        index = attempt % len(urls)
        url = urls[index]
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked
        req.add_header("Content-Type", "application/json")
        retry_after: float | None = None
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) URL from config
                return json.loads(resp.read() or b"null"), index
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                message = str(json.loads(text).get("error", text))
            except (ValueError, AttributeError):
                message = text
            if e.code not in RETRY_STATUSES and e.code < 500:
                raise FleetError(f"{method} {url}: HTTP {e.code}: {message}", status=e.code) from e
            last = f"HTTP {e.code}: {message}"
            retry_after = _retry_after(e.headers.get("Retry-After"))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            last = str(getattr(e, "reason", e))
        if attempt + 1 < policy.attempts:
            policy.wait(attempt, retry_after)
    raise FleetError(
        f"{method} {', '.join(urls)}: gave up after {policy.attempts} attempts: {last}"
    )


def _desired(raw: Any, url: str) -> Desired:
    try:
        return Desired(
            version=str(raw["version"]),
            stage=bool(raw["stage"]),
            may_reboot=bool(raw["may_reboot"]),
            reason=str(raw.get("reason", "")),
            pool=None if raw.get("pool") is None else str(raw["pool"]),
        )
    except (KeyError, TypeError) as e:
        raise FleetError(f"{url}: unexpected answer {raw!r}") from e


class FleetClient:
    """What the agent daemon uses; ``base_url`` like ``http://127.0.0.1:9443``, or
    several controller replicas separated by commas."""

    def __init__(self, base_url: str, *, backoff: Backoff | None = None, timeout: float = 10.0):
        self.base_urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()]
        if not self.base_urls:
            raise FleetError(f"controller URL {base_url!r}: empty")
        self.base_url = self.base_urls[0]
        self.backoff = backoff or Backoff()
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        answer, index = request_replicas(
            method,
            [u + path for u in self.base_urls],
            body,
            timeout=self.timeout,
            backoff=self.backoff,
        )
        if index:  # stay with the replica that answered
            self.base_urls = self.base_urls[index:] + self.base_urls[:index]
            self.base_url = self.base_urls[0]
        return answer

    def register(
        self, name: str, labels: Mapping[str, str], version: str, *, healthy: bool = True
    ) -> None:
        self._call(
            "POST",
            "/v1/nodes/register",
            {"name": name, "labels": dict(labels), "version": version, "healthy": healthy},
        )

    def report(
        self,
        name: str,
        *,
        version: str,
        staged: str | None,
        healthy: bool,
        failed: bool = False,
    ) -> Desired:
        path = f"/v1/nodes/{quote(name, safe='')}/report"
        body = {"version": version, "staged": staged, "healthy": healthy, "failed": failed}
        return _desired(self._call("POST", path, body), self.base_url + path)

    def desired(self, name: str) -> Desired:
        path = f"/v1/nodes/{quote(name, safe='')}/desired"
        return _desired(self._call("GET", path), self.base_url + path)

"""The fleet protocol: what the controller and the nodes say to each other, typed.

JSON over HTTP (documented in ``docs/fleet.md``). The controller
(:mod:`atoll.fleet.server`) parses requests and serialises answers with these
types, the node's update loop (:mod:`atoll.agent.update_loop`) and the
simulated agents of the benchmark (:mod:`atoll.bench.fleet`) send requests
and parse answers with them through :class:`FleetClient`. Every ``from_json``
validates what it parses and raises :class:`ProtocolError` naming the field;
keys it does not know are ignored, so either side may add one first.

* ``POST /v1/nodes/register`` :class:`Registration` -> :class:`NodeRecord`
* ``POST /v1/nodes/{name}/report`` :class:`Report` -> :class:`Desired`
* ``GET /v1/nodes/{name}/desired`` -> :class:`Desired`: stage ``version`` ahead
  of time when ``stage`` is true; switch to it and reboot only when
  ``may_reboot`` is true (the controller has then already counted this node
  as unavailable)
* ``GET /v1/nodes/{name}/desired?wait=ETAG[&timeout=S]`` -> :class:`Desired`,
  a watch (:meth:`FleetClient.watch`): answered when the node's grant differs
  from ``ETAG`` (:func:`grant_etag`), or unchanged after the controller's wait
  (at most ``S`` and :data:`WATCH_MAX`); ``503`` with ``Retry-After`` when the
  controller holds too many. :class:`WatchSchedule` is how a node waits
  between rounds (watch, or poll a controller without watches; jittered backoff)
* ``GET /v1/nodes`` -> a list of :class:`NodeRecord`

The operator's side of the API (pools, events) is read by ``atoll fleet``
(:mod:`atoll.fleet.cli`) as the controller's views; it shares only the HTTP
client below with the nodes.

**The HTTP client** (:func:`request_json`, :func:`request_replicas`), used by
the agent, the fleet CLI, the benchmarks and the demo; standard library only
(it runs on the node with Debian's python3). Controller replicas:
``FleetClient("http://a:9443,http://b:9443")`` knows several replicas
(``docs/fleet.md``: any replica answers); each retry goes to the next one, and
the client stays with the replica that answered last. Overload protection: a
429 or 503 answer, a 5xx or a connection error is retried with exponential
backoff and full jitter (``uniform(0, min(cap, base * 2**attempt))``), never
sooner than the server's ``Retry-After``; other 4xx answers are the caller's
mistake and raise at once. Clock, sleep and the random source are injectable
so the schedule is testable without waiting.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import io
import json
import random
import re
import selectors
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit

RETRY_STATUSES = frozenset({429, 502, 503, 504})
ETAG = re.compile(r"[0-9a-z]{1,64}")
WATCH_MAX = 60.0
MAX_WATCH_ANSWER = 1 << 20  # bytes of a watch's whole answer (a few hundred, really)
"""The longest a controller holds a watch (``?wait=``) before it answers unchanged:
a client's read timeout is longer than this."""
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
REASON_MAX = 500
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
VERSION_MAX = 128
VERSION = re.compile(rf"[\x20-\x7e]{{1,{VERSION_MAX}}}")
"""A version an operator names (a pool's target): printable ASCII, at most
:data:`VERSION_MAX` characters, matched whole (:func:`check_version`)."""


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the message names the field."""


class FleetError(Exception):
    """The controller could not be reached or refused the request (message names the URL)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _body(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ProtocolError(f"expected a JSON object, not {type(raw).__name__}")
    return raw


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string, not {value!r}")
    return value


def _optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string or null, not {value!r}")
    return value


def _flag(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{key} must be true or false")
    return value


def _labels(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = body.get(key, {})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ProtocolError(f"{key} must map str to str")
    return dict(value)


@dataclass(frozen=True)
class Registration:
    """``POST /v1/nodes/register``: a node says who it is and what it runs."""

    name: str
    labels: Mapping[str, str]
    version: str
    healthy: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": dict(self.labels),
            "version": self.version,
            "healthy": self.healthy,
        }

    @classmethod
    def from_json(cls, raw: object) -> Registration:
        body = _body(raw)
        name = body.get("name")
        if not isinstance(name, str) or not NODE_NAME.match(name):
            raise ProtocolError(f"bad name {name!r}: 1-63 of A-Z a-z 0-9 . _ -")
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise ProtocolError(f"bad version {version!r}: a non-empty string")
        return cls(
            name=name,
            labels=_labels(body, "labels"),
            version=version,
            healthy=_flag(body, "healthy", True),
        )


def check_version(key: str, value: object) -> str:
    """``value`` if it is a version by :data:`VERSION`; else :class:`ProtocolError`
    naming ``key``."""
    if not isinstance(value, str) or not value.strip():
        raise ProtocolError(f"{key}: expected a non-empty string, got {value!r}")
    if not VERSION.fullmatch(value):
        raise ProtocolError(
            f"{key}: expected printable ASCII without control characters, "
            f"at most {VERSION_MAX} characters, got {value!r}"
        )
    return value


class Step(StrEnum):
    """A step of a node's update round that can fail (:class:`StepFailure`)."""

    FETCH = "fetch"
    VERIFY = "verify"
    DEPLOY = "deploy"
    BOOT_ENTRIES = "boot-entries"
    REBOOT = "reboot"


class By(StrEnum):
    """Who recorded a :class:`StepFailure`: the node's agent reports its own; the
    controller records one for a node it gave up on (its reboot timeout)."""

    NODE = "node"
    CONTROLLER = "controller"


def _one_line(key: str, value: object, *, limit: int = REASON_MAX) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{key} must be a non-empty string, not {value!r}")
    if CONTROL.search(value):
        raise ProtocolError(f"{key} must be one line without control characters: {value!r}")
    if len(value) > limit:
        raise ProtocolError(f"{key} is {len(value)} characters long, at most {limit} allowed")
    return value


@dataclass(frozen=True)
class StepFailure:
    """A step of an update round that failed on the node: which step, staging or
    booting which version, why (one line), and the resource when one ran out
    (e.g. ``"ESP (/boot/efi)"``). The node undid anything half-staged before
    it reports one. ``by`` says who recorded it (:class:`By`); its JSON key is
    left out for the default, ``"node"``."""

    step: Step
    version: str
    reason: str
    resource: str | None = None
    by: By = By.NODE

    def __post_init__(self) -> None:
        if not isinstance(self.step, Step):
            raise ProtocolError(f"failure.step must be a Step, not {self.step!r}")
        if not isinstance(self.by, By):
            raise ProtocolError(f"failure.by must be a By, not {self.by!r}")
        _one_line("failure.version", self.version, limit=200)
        _one_line("failure.reason", self.reason)
        if self.resource is not None:
            _one_line("failure.resource", self.resource, limit=200)

    @classmethod
    def summarise(
        cls, step: Step, version: str, reason: str, resource: str | None = None
    ) -> StepFailure:
        """A failure from any error text: control characters and runs of white
        space become one space, and a reason longer than the limit is cut
        (ending in an ellipsis)."""
        line = " ".join(CONTROL.sub(" ", reason).split()) or "failed (no reason given)"
        if len(line) > REASON_MAX:
            line = line[: REASON_MAX - 1] + "\u2026"
        return cls(step, version, line, resource)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "step": self.step.value,
            "version": self.version,
            "reason": self.reason,
            "resource": self.resource,
        }
        if self.by is not By.NODE:
            body["by"] = self.by.value
        return body

    @classmethod
    def from_json(cls, raw: object) -> StepFailure:
        if not isinstance(raw, dict):
            raise ProtocolError(f"failure must be a JSON object, not {type(raw).__name__}")
        step = raw.get("step")
        # A list or object is unhashable: checked as "not a string", not by the set.
        if not isinstance(step, str) or step not in {s.value for s in Step}:
            names = ", ".join(s.value for s in Step)
            raise ProtocolError(f"failure.step must be one of {names}, not {step!r}")
        resource = raw.get("resource")
        if resource is not None and not isinstance(resource, str):
            raise ProtocolError(f"failure.resource must be a string or null, not {resource!r}")
        by = raw.get("by", By.NODE.value)
        if not isinstance(by, str) or by not in {b.value for b in By}:
            names = ", ".join(b.value for b in By)
            raise ProtocolError(f"failure.by must be one of {names}, not {by!r}")
        return cls(
            step=Step(step),
            version=_one_line("failure.version", raw.get("version"), limit=200),
            reason=_one_line("failure.reason", raw.get("reason")),
            resource=resource,
            by=By(by),
        )


def _optional_failure(body: Mapping[str, Any]) -> StepFailure | None:
    raw = body.get("failure")
    return None if raw is None else StepFailure.from_json(raw)


class RestartKind(StrEnum):
    """How a node restarted into a version (:class:`Restart`)."""

    SOFT = "soft"  # systemctl soft-reboot: userspace only, same kernel
    FULL = "full"  # firmware, boot loader, kernel


RESTART_AT_MAX = 64


@dataclass(frozen=True)
class Restart:
    """The last restart of a node into a version (an upgrade's or a rollback's), as its
    agent recorded it: ``kind`` soft or full, ``reason`` why that kind (one line, e.g.
    ``"same kernel and arguments"``, ``"policy full"``), the ``version`` it restarted
    into (the commit when the deployment has no version) and ``at``, when (ISO 8601)."""

    kind: RestartKind
    reason: str
    version: str
    at: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, RestartKind):
            raise ProtocolError(f"restart.kind must be a RestartKind, not {self.kind!r}")
        _one_line("restart.reason", self.reason)
        _one_line("restart.version", self.version, limit=200)
        _one_line("restart.at", self.at, limit=RESTART_AT_MAX)
        try:
            datetime.datetime.fromisoformat(self.at)
        except ValueError:
            raise ProtocolError(f"restart.at must be an ISO 8601 time, not {self.at!r}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "reason": self.reason,
            "version": self.version,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, raw: object) -> Restart:
        if not isinstance(raw, dict):
            raise ProtocolError(f"restart must be a JSON object, not {type(raw).__name__}")
        kind = raw.get("kind")
        if not isinstance(kind, str) or kind not in {k.value for k in RestartKind}:
            names = ", ".join(k.value for k in RestartKind)
            raise ProtocolError(f"restart.kind must be one of {names}, not {kind!r}")
        return cls(
            kind=RestartKind(kind),
            reason=_one_line("restart.reason", raw.get("reason")),
            version=_one_line("restart.version", raw.get("version"), limit=200),
            at=_one_line("restart.at", raw.get("at"), limit=RESTART_AT_MAX),
        )


def _optional_restart(body: Mapping[str, Any]) -> Restart | None:
    raw = body.get("restart")
    return None if raw is None else Restart.from_json(raw)


@dataclass(frozen=True)
class Report:
    """``POST /v1/nodes/{name}/report``: what a node runs, has staged, and how it fares.

    ``healthy: false, failed: false`` while its health trial of a new version
    runs; ``failed: true`` when it rolled back by itself or is unhealthy
    outside a trial. ``failure`` when a step of its last update round
    failed (``staged`` is then None: the node undid what it had half-staged);
    the key is left out when there is none. A node reports only its own
    failures: one claiming ``"by": "controller"`` is refused. ``restart`` is the
    last restart its agent recorded (:class:`Restart`); left out when none (and by
    an agent from before it)."""

    version: str
    staged: str | None
    healthy: bool = True
    failed: bool = False
    failure: StepFailure | None = None
    restart: Restart | None = None

    def __post_init__(self) -> None:
        if self.failure is not None and self.staged is not None:
            raise ProtocolError(
                f"staged must be null with a failure (the node undoes what it half-staged), "
                f"not {self.staged!r}"
            )
        if self.failure is not None and self.failure.by is not By.NODE:
            raise ProtocolError(
                f"failure.by must be {By.NODE.value!r} in a node's report "
                f"(only the controller records {self.failure.by.value!r} failures)"
            )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "version": self.version,
            "staged": self.staged,
            "healthy": self.healthy,
            "failed": self.failed,
        }
        if self.failure is not None:
            body["failure"] = self.failure.to_json()
        if self.restart is not None:
            body["restart"] = self.restart.to_json()
        return body

    @classmethod
    def from_json(cls, raw: object) -> Report:
        body = _body(raw)
        version = body.get("version")
        if not isinstance(version, str):
            raise ProtocolError(f"bad version {version!r}: a string")
        staged = body.get("staged")
        if staged is not None and not isinstance(staged, str):
            raise ProtocolError(f"bad staged {staged!r}: a string or null")
        return cls(
            version=version,
            staged=staged,
            healthy=_flag(body, "healthy", True),
            failed=_flag(body, "failed", False),
            failure=_optional_failure(body),
            restart=_optional_restart(body),
        )


class RebootPolicy(StrEnum):
    """How a pool's nodes restart into a new version (the grant's ``reboot``). A pool
    says ``auto`` unless it asks otherwise (:mod:`atoll.fleet.pool`); on the wire an
    absent value is ``full``, what a controller from before the key meant."""

    AUTO = "auto"  # a userspace-only soft-reboot when the kernel and its arguments stay
    FULL = "full"  # always a full reboot: firmware, boot loader, kernel


@dataclass(frozen=True)
class Desired:
    """The controller's answer to a report or ``GET /v1/nodes/{name}/desired``.

    ``pool`` is None when no pool selects the node (``version`` is then what it
    runs); ``reason`` says why it waits. ``etag`` (:func:`grant_etag`) names the
    grant state (pool, version, stage, may_reboot; not the reason): a controller
    that sends it takes watches (``?wait=ETAG``, :meth:`FleetClient.watch`); the
    key is left out when None (a controller without watches)."""

    version: str
    stage: bool
    may_reboot: bool
    reason: str
    pool: str | None
    etag: str | None = None
    reboot: RebootPolicy = RebootPolicy.FULL  # the pool's: how the node restarts into it

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "pool": self.pool,
            "version": self.version,
            "stage": self.stage,
            "may_reboot": self.may_reboot,
            "reason": self.reason,
            "reboot": self.reboot.value,
        }
        if self.etag is not None:
            body["etag"] = self.etag
        return body

    @classmethod
    def from_json(cls, raw: object) -> Desired:
        body = _body(raw)
        for key in ("version", "stage", "may_reboot"):
            if key not in body:
                raise ProtocolError(f"{key} is missing")
        etag = _optional_text(body, "etag")
        if etag is not None and not ETAG.fullmatch(etag):
            raise ProtocolError(f"etag must be 1-64 of 0-9 a-z, not {etag!r}")
        return cls(
            version=_text(body, "version"),
            stage=_flag(body, "stage", False),
            may_reboot=_flag(body, "may_reboot", False),
            reason=_optional_text(body, "reason") or "",
            pool=_optional_text(body, "pool"),
            etag=etag,
            reboot=_reboot_policy(body),
        )

    def grant(self) -> tuple[str | None, str, bool, bool]:
        """What a watch waits on: everything but the reason and the etag."""
        return (self.pool, self.version, self.stage, self.may_reboot)

    def tagged(self) -> Desired:
        """This answer with its :func:`grant_etag` (what a controller with watches sends)."""
        return replace(self, etag=grant_etag(self.grant()))


def _reboot_policy(body: Mapping[str, Any]) -> RebootPolicy:
    """``reboot`` of a grant; absent (a controller from before pools chose): full."""
    raw = body.get("reboot", RebootPolicy.FULL.value)
    try:
        return RebootPolicy(raw)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in RebootPolicy)
        raise ProtocolError(f"reboot must be one of {choices}, not {raw!r}") from None


def grant_etag(grant: Sequence[str | bool | None]) -> str:
    """The etag of a grant state (:meth:`Desired.grant`; the Node protocol's grant adds
    the pool's resume, :meth:`atoll.wire.kubenode.Grant.etag`): 16 hex digits of a digest."""
    text = json.dumps(list(grant), separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class NodeRecord:
    """A node as the controller knows it (answer to a registration, ``GET /v1/nodes``).

    ``failure`` is the last step failure the controller recorded for it,
    ``retry_at`` when the controller lets it stage again (seconds since the
    epoch), ``restart`` the last restart its agent reported (:class:`Restart`);
    each key is left out when None."""

    name: str
    labels: Mapping[str, str]
    current: str
    staged: str | None
    healthy: bool
    phase: str  # idle, staging, staged, rebooting, failed
    last_transition: float
    failure: StepFailure | None = None
    retry_at: float | None = None
    restart: Restart | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "labels": dict(self.labels),
            "current": self.current,
            "staged": self.staged,
            "healthy": self.healthy,
            "phase": self.phase,
            "last_transition": self.last_transition,
        }
        if self.failure is not None:
            body["failure"] = self.failure.to_json()
        if self.retry_at is not None:
            body["retry_at"] = self.retry_at
        if self.restart is not None:
            body["restart"] = self.restart.to_json()
        return body

    @classmethod
    def from_json(cls, raw: object) -> NodeRecord:
        body = _body(raw)
        moment = body.get("last_transition")
        if isinstance(moment, bool) or not isinstance(moment, int | float):
            raise ProtocolError(f"last_transition must be a number, not {moment!r}")
        if "healthy" not in body:
            raise ProtocolError("healthy is missing")
        retry_at = body.get("retry_at")
        if retry_at is not None and (
            isinstance(retry_at, bool) or not isinstance(retry_at, int | float)
        ):
            raise ProtocolError(f"retry_at must be a number or null, not {retry_at!r}")
        return cls(
            name=_text(body, "name"),
            labels=_labels(body, "labels"),
            current=_text(body, "current"),
            staged=_optional_text(body, "staged"),
            healthy=_flag(body, "healthy", True),
            phase=_text(body, "phase"),
            last_transition=float(moment),
            failure=_optional_failure(body),
            retry_at=None if retry_at is None else float(retry_at),
            restart=_optional_restart(body),
        )


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


class WatchRefused(FleetError):
    """The controller would not hold another watch (503, or 429 when busy): poll
    meanwhile and watch again no sooner than ``retry_after`` seconds (plus jitter)."""

    def __init__(self, message: str, *, status: int, retry_after: float | None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class Watched(StrEnum):
    """How a watch (:meth:`FleetClient.watch`) ended."""

    CHANGED = "changed"  # the grant state differs from the etag the node knew
    UNCHANGED = "unchanged"  # the controller's wait ran out
    INTERRUPTED = "interrupted"  # the node gave up waiting (something changed on the node)
    REFUSED = "refused"  # 503/429: too many watches
    FAILED = "failed"  # no answer: connection refused or cut (a controller restarting)


@dataclass(frozen=True)
class Wait:
    """How a node waits before its next round: ``watch`` the controller (``seconds`` 0),
    or sleep ``seconds`` and poll."""

    watch: bool
    seconds: float


@dataclass
class WatchSchedule:
    """How a node waits between rounds (the agent's update loop and the benchmark's
    simulated agents).

    A controller that sends an etag (:class:`Desired`) takes watches: the node
    waits on one, and a round follows at once whatever ended it, but for a
    refused or failed watch: then the next round comes after ``delay``, exponential
    with full jitter (``uniform(0, min(cap, base * 2**n))`` for the n-th failure
    in a row, after the controller's ``Retry-After`` for a refusal), so the
    agents of a restarted controller do not reconnect all at once; until
    then the node polls every ``interval``. A controller without an etag (older)
    is polled every ``interval``. ``now`` is passed in, ``rand`` injected."""

    interval: float
    base: float = 1.0
    cap: float = 60.0
    rand: Callable[[], float] = random.random
    failures: int = 0
    watch_from: float = 0.0

    def next(self, etag: str | None, now: float) -> Wait:
        if etag is None:
            return Wait(False, self.interval)
        if now < self.watch_from:
            return Wait(False, min(self.interval, self.watch_from - now))
        return Wait(True, 0.0)

    def ended(self, outcome: Watched, now: float, retry_after: float | None = None) -> float:
        """Seconds to wait before the next round, after a watch ended so."""
        if outcome not in (Watched.REFUSED, Watched.FAILED):
            self.failures, self.watch_from = 0, 0.0
            return 0.0
        jitter = float(self.rand()) * min(self.cap, self.base * 2.0**self.failures)
        self.failures += 1
        refused = outcome is Watched.REFUSED
        delay = jitter + ((retry_after or 0.0) if refused else 0.0)
        self.watch_from = now + delay
        return min(delay, self.interval) if refused else delay


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
            message = _error_text(e.read().decode(errors="replace"))
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


class FleetClient:
    """A node's client of the protocol (the agent's update loop, the benchmark's
    simulated agents); ``base_url`` like ``http://127.0.0.1:9443``, or several
    controller replicas separated by commas."""

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

    def _desired(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Desired:
        answer = self._call(method, path, body)
        try:
            return Desired.from_json(answer)
        except ProtocolError as e:
            raise FleetError(f"{self.base_url + path}: unexpected answer {answer!r}: {e}") from e

    def register(
        self, name: str, labels: Mapping[str, str], version: str, *, healthy: bool = True
    ) -> None:
        registration = Registration(name, dict(labels), version, healthy)
        self._call("POST", "/v1/nodes/register", registration.to_json())

    def report(
        self,
        name: str,
        *,
        version: str,
        staged: str | None,
        healthy: bool,
        failed: bool = False,
        failure: StepFailure | None = None,
        restart: Restart | None = None,
    ) -> Desired:
        report = Report(version, staged, healthy, failed, failure, restart)
        return self._desired("POST", node_path(name, "report"), report.to_json())

    def desired(self, name: str) -> Desired:
        return self._desired("GET", node_path(name, "desired"))

    def watch(
        self,
        name: str,
        etag: str,
        *,
        timeout: float = WATCH_MAX,
        interrupted: Callable[[], bool] = lambda: False,
        check_every: float = 1.0,
    ) -> Desired | None:
        """Wait until the node's grant state differs from ``etag``: one long poll
        (``GET /v1/nodes/{name}/desired?wait=ETAG&timeout=S``), no retry.

        Returns the answer: its etag differs on a change, or is ``etag`` when the
        controller's wait (``timeout`` at most; it may choose less, never more than
        :data:`WATCH_MAX`) ran out. None when ``interrupted()`` (asked every
        ``check_every`` seconds) turned true first: the request is dropped.
        Raises :class:`WatchRefused` for 503/429, :class:`FleetError` for anything
        else; a request that got no answer moves to the next replica."""
        base = self.base_urls[0]
        parts = urlsplit(base)
        seconds = max(0.0, min(timeout, WATCH_MAX))
        path = f"{parts.path}{node_path(name, 'desired')}?wait={quote(etag)}&timeout={seconds:g}"
        url = base + path[len(parts.path) :]
        https = parts.scheme == "https"
        connection = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = connection(parts.hostname or "", parts.port, timeout=self.timeout)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            assert conn.sock is not None  # request() connected it
            answer = _read_answer(conn.sock, seconds + self.timeout, interrupted, check_every)
            if answer is None:
                return None
            response = http.client.HTTPResponse(_Answered(answer), method="GET")  # type: ignore[arg-type]
            response.begin()
            status, raw = response.status, response.read()
            retry_after = _retry_after(response.getheader("Retry-After"))
        except (OSError, http.client.HTTPException) as e:
            self.base_urls = self.base_urls[1:] + self.base_urls[:1]
            self.base_url = self.base_urls[0]
            raise FleetError(f"GET {url}: {e}") from e
        finally:
            conn.close()
        return _watch_answer(url, status, raw, retry_after)


def _read_answer(
    sock: socket.socket,
    seconds: float,
    interrupted: Callable[[], bool],
    check_every: float,
) -> bytes | None:
    """The whole answer to a ``Connection: close`` request (up to the server's close);
    None when ``interrupted()`` turned true before any of it came. ``TimeoutError``
    after ``seconds``; :class:`http.client.HTTPException` beyond
    :data:`MAX_WATCH_ANSWER` bytes.

    The socket is read without blocking: over TLS 1.3 the server's session tickets
    make it readable long before the answer, and a blocking read would then wait
    with the client's short timeout instead of the watch's."""
    deadline = time.monotonic() + seconds
    chunks: list[bytes] = []
    size = 0
    sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer in {seconds:g} s")
            if not selector.select(min(check_every, left)):
                if not chunks and interrupted():
                    return None
                continue
            while True:  # what is there now (TLS may hold more than one record)
                try:
                    data = sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break  # a TLS record without data (a ticket), or nothing yet
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
                size += len(data)
                if size > MAX_WATCH_ANSWER:
                    raise http.client.HTTPException(f"answer larger than {MAX_WATCH_ANSWER} bytes")


class _Answered:
    """An answer already read, as :class:`http.client.HTTPResponse` reads a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def _watch_answer(url: str, status: int, raw: bytes, retry_after: float | None) -> Desired:
    text = raw.decode(errors="replace")
    if status in (429, 503):
        raise WatchRefused(
            f"GET {url}: HTTP {status}: {_error_text(text)}", status=status, retry_after=retry_after
        )
    if status != 200:
        raise FleetError(f"GET {url}: HTTP {status}: {_error_text(text)}", status=status)
    try:
        return Desired.from_json(json.loads(text or "null"))
    except (ValueError, ProtocolError) as e:
        raise FleetError(f"{url}: unexpected answer {text[:200]!r}: {e}") from e


def _error_text(text: str) -> str:
    try:
        return str(json.loads(text).get("error", text))
    except (ValueError, AttributeError):
        return text


def node_path(name: str, verb: str) -> str:
    """``/v1/nodes/{name}/{verb}`` with the name quoted."""
    return f"/v1/nodes/{quote(name, safe='')}/{verb}"

"""The few Kubernetes API requests ``atoll fleet operator`` makes itself (aiohttp).

kopf watches and patches the NodePools for its handlers; listing Nodes and
pods, annotating and cordoning Nodes, evicting pods and writing a pool's status
are done here, with the :class:`kopf.ConnectionInfo` that kopf's login produced,
so there is one source of credentials (token, basic auth, client certificate,
CA, as in a kubeconfig). Merge patches only: they need no resourceVersion and
touch only the keys they name.

**Backing off.** An API server under load answers 429 (its in-flight limit or
API Priority and Fairness, with a ``Retry-After``), and 5xx while it or etcd
restarts. Each request is then retried after :func:`retry_delay` (pure, table-
tested): exponential from :attr:`Backoff.first`, never shorter than the
server's ``Retry-After``, stretched by a random fraction (jitter: replicas and
requests do not come back in step), never longer than :attr:`Backoff.cap`;
after :attr:`Backoff.attempts` retries the error goes to the reconcile (kopf
retries it after ``--interval``). Each retry is logged (a warning naming the
request, the status and the wait) and counted (:attr:`KubeApi.retried`). A 429
refusing an Eviction because of a PodDisruptionBudget is an answer, not
overload: it is never retried here (:func:`budget_refusal`). The sleep and the
random source are injected.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import math
import random
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from atoll.durable import write_atomic
from atoll.fleet.preflight import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

RETRIED = frozenset({429, 500, 502, 503, 504})
"""Statuses a request is retried on: overload, and a server or its etcd restarting."""


class KubeError(Exception):
    """A Kubernetes API request failed; the message names the method and path."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status
        self.budget = status == 429 and budget_refusal(body)
        """An Eviction refused by a PodDisruptionBudget (not overload)."""


@dataclass(frozen=True)
class Backoff:
    """How the operator's own requests are retried on 429 and 5xx."""

    first: float = 0.5
    """Seconds before the first retry, doubled for each next one (unless the server asks more)."""
    cap: float = 30.0
    """No wait is longer, a longer ``Retry-After`` included."""
    attempts: int = 6
    """Retries of one request before its error goes to the reconcile."""
    jitter: float = 0.25
    """Each wait is stretched by up to this fraction, at random."""


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (what the API server sends); ``None`` if absent or
    not a number of seconds >= 0 (an HTTP date, which it never sends, is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_delay(
    status: int, retry_after: str | None, retry: int, policy: Backoff, spread: float
) -> float | None:
    """Seconds to wait before retry number ``retry`` (0 for the first) of a request that
    was answered ``status``; ``None``: do not retry (not overload or a server error, or
    the retries are spent). ``spread`` in [0, 1) picks the jitter (pure)."""
    if status not in RETRIED or retry >= policy.attempts:
        return None
    asked = parse_retry_after(retry_after) or 0.0
    backoff: float = policy.first * 2.0**retry
    wait = max(backoff, asked) * (1 + policy.jitter * spread)
    return min(policy.cap, wait)


def budget_refusal(body: str) -> bool:
    """Is this 429 an Eviction refused by a PodDisruptionBudget? (a ``Status`` whose
    ``details.causes`` has reason ``DisruptionBudget``, as the API server writes it)"""
    try:
        status = json.loads(body)
    except ValueError:
        return False
    details = status.get("details") if isinstance(status, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    return any(isinstance(c, dict) and c.get("reason") == "DisruptionBudget" for c in causes or [])


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: str | None
    text: str


class KubeApi:
    """The few requests the operator makes itself, with kopf's credentials.

    kopf watches and patches the NodePools for its handlers; listing Nodes,
    annotating them and writing a pool's status from the timer are done here,
    with the :class:`kopf.ConnectionInfo` that kopf's login produced, so there
    is one source of credentials.
    """

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        spread: Callable[[], float] = random.random,
    ) -> None:
        self._info = info
        self._tmp = tempfile.TemporaryDirectory(prefix="atoll-operator-")
        self._session: aiohttp.ClientSession | None = None
        self.backoff = backoff
        self._sleep = sleep
        self._spread = spread
        self.retried: collections.Counter[int] = collections.Counter()
        """Retries made, by the status that caused them."""

    def _ssl(self) -> ssl.SSLContext | bool:
        info = self._info
        if info.insecure:
            return False
        cadata = None
        if info.ca_data is not None:
            raw = info.ca_data.encode() if isinstance(info.ca_data, str) else info.ca_data
            cadata = base64.b64decode(raw).decode("ascii")
        context = ssl.create_default_context(
            cafile=str(info.ca_path) if info.ca_path is not None else None, cadata=cadata
        )
        cert, key = info.certificate_path, info.private_key_path
        tmp = Path(self._tmp.name)
        # ssl loads a client certificate and key from files only: they go to a
        # private directory that close() removes; the key is never readable by others.
        if info.certificate_data is not None:
            cert = tmp / "client.crt"
            write_atomic(cert, _decode(info.certificate_data), mode=0o644)
        if info.private_key_data is not None:
            key = tmp / "client.key"
            write_atomic(key, _decode(info.private_key_data), mode=0o600)
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
        return context

    def _headers(self) -> dict[str, str]:
        info = self._info
        if info.token:
            return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
        if info.username and info.password:
            pair = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return {}

    async def _send(self, method: str, path: str, body: object, content_type: str | None) -> Answer:
        """One HTTP request, as it was answered."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers(),
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        url = self._info.server.rstrip("/") + path
        headers = {"Content-Type": content_type} if content_type else {}
        async with self._session.request(method, url, json=body, headers=headers) as response:
            text = await response.text()
            return Answer(response.status, response.headers.get("Retry-After"), text)

    async def _request(
        self, method: str, path: str, body: object = None, content_type: str | None = None
    ) -> Any:
        retry = 0
        while True:
            answer = await self._send(method, path, body, content_type)
            if answer.status < 400:
                return json.loads(answer.text) if answer.text else None
            error = KubeError(method, path, answer.status, answer.text)
            delay = None if error.budget else self._delay(answer, retry)
            if delay is None:
                raise error
            retry += 1
            self.retried[answer.status] += 1
            log.warning(
                "%s %s: HTTP %d, retry %d of %d in %.2f s (Retry-After: %s)",
                method,
                path,
                answer.status,
                retry,
                self.backoff.attempts,
                delay,
                answer.retry_after if answer.retry_after is not None else "none",
            )
            await self._sleep(delay)

    def _delay(self, answer: Answer, retry: int) -> float | None:
        return retry_delay(answer.status, answer.retry_after, retry, self.backoff, self._spread())

    async def list_nodes(self) -> list[dict[str, Any]]:
        answer = await self._request("GET", "/api/v1/nodes")
        return list(answer.get("items") or [])

    async def list_pools(self) -> list[dict[str, Any]]:
        answer = await self._request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}")
        return list(answer.get("items") or [])

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> None:
        await self._request("PATCH", f"/api/v1/nodes/{name}", patch, "application/merge-patch+json")

    async def list_pods(self, node: str) -> list[dict[str, Any]]:
        answer = await self._request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
        # Filter here too: the selector is an optimisation the API server may not apply.
        return [
            p for p in answer.get("items") or [] if (p.get("spec") or {}).get("nodeName") == node
        ]

    async def evict(self, namespace: str, pod: str) -> int:
        """POST an Eviction; returns the HTTP status (429: refused by a PodDisruptionBudget;
        a 429 of an overloaded server is retried, then raised)."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
        try:
            await self._request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", body)
        except KubeError as e:
            if e.status == 404 or e.budget:
                return e.status
            raise
        return 201

    async def list_budgets(self, namespace: str) -> list[dict[str, Any]]:
        """The PodDisruptionBudgets of ``namespace`` (to name the one that refused an eviction)."""
        path = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets"
        answer = await self._request("GET", path)
        return list(answer.get("items") or [])

    async def delete_pod(self, namespace: str, pod: str) -> None:
        """DELETE a pod, bypassing its budget (a drain timeout's ``onTimeout: delete``)."""
        try:
            await self._request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{pod}")
        except KubeError as e:
            if e.status != 404:
                raise

    async def create_event(self, event: Mapping[str, Any]) -> None:
        namespace = event["metadata"]["namespace"]
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", event)

    async def discovery(self, group_version: str) -> dict[str, Any] | None:
        """The API group version's discovery document; ``None`` if it is not served."""
        try:
            answer = await self._request("GET", f"/apis/{group_version}")
        except KubeError as e:
            if e.status == 404:
                return None
            raise
        return dict(answer)

    async def allowed(self, review: Mapping[str, Any]) -> bool:
        """POST a SelfSubjectAccessReview: may this identity do what it asks?"""
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        answer = await self._request("POST", path, review)
        return bool((answer.get("status") or {}).get("allowed"))

    async def whoami(self) -> str:
        """The user name the API server sees (a SelfSubjectReview), for messages."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            answer = await self._request(
                "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body
            )
        except KubeError:
            return "this identity"
        user = ((answer.get("status") or {}).get("userInfo") or {}).get("username")
        return str(user) if user else "this identity"

    async def patch_pool_status(self, name: str, status: Mapping[str, Any]) -> None:
        await self._request(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/{PLURAL}/{name}/status",
            {"status": status},
            "application/merge-patch+json",
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._tmp.cleanup()


def _decode(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64decode(raw)

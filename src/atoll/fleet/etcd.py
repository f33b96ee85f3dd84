"""A small etcd v3 client over the JSON gRPC gateway, and leader election by lease.

Why the gateway: etcd 3.4 (Debian's ``etcd-server``) serves ``/v3/kv/*`` and
``/v3/lease/*`` as JSON over plain HTTP next to gRPC, so the controller needs no
gRPC stack; keys and values are base64 in the payloads. The client tries the
endpoints in order and moves to the next one when a member is down, so a
three-member cluster survives the loss of any one member.

Leader election: every controller replica grants itself a lease (TTL seconds)
and tries a transaction "create ``key`` = my identity, attached to my lease, if
``key`` does not exist (create_revision == 0)". The winner keeps the lease alive;
when it dies its lease expires, etcd deletes the key, and the next campaign of
another replica wins. Time is not read here: the caller drives ``campaign`` and
``keep_alive`` from its own loop (and clock).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from atoll.fleet.store import StoreError


class EtcdError(StoreError):
    """No endpoint answered, or etcd rejected a request; the message names the URL."""


def _b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


def _unb64(raw: str) -> str:
    return base64.b64decode(raw).decode()


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int


Compare = dict[str, str]
"""One raw ``compare`` of a transaction; build it with the helpers below."""


def mod_revision_is(key: str, revision: int) -> Compare:
    """True while ``key`` was last written at ``revision`` (0: the key does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def value_is(key: str, value: str) -> Compare:
    """True while ``key`` exists and holds ``value`` (a missing key never compares equal)."""
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def parse_endpoints(url: str) -> list[str]:
    """``etcd://h1:p1,h2:p2`` -> ``["http://h1:p1", "http://h2:p2"]``."""
    if not url.startswith("etcd://") or not url[len("etcd://") :].strip(","):
        raise EtcdError(f"store URL {url!r}: expected etcd://host:port[,host:port...]")
    return [f"http://{hostport}" for hostport in url[len("etcd://") :].split(",") if hostport]


class EtcdClient:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        rounds: int = 5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not endpoints:
            raise EtcdError("etcd: no endpoints given")
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._rounds = rounds
        self._sleep = sleep
        self._rotate = threading.Lock()  # the HTTP server's threads share one client

    def _next_endpoint(self) -> None:
        with self._rotate:
            self._endpoints.append(self._endpoints.pop(0))

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        failures: list[str] = []
        # Start with the endpoint that answered last; rotate past dead members.
        # A 503 ("leader changed", during an election) is transient: go round
        # the members again after a short pause, a bounded number of times.
        for attempt in range(len(self._endpoints) * self._rounds):
            if attempt and attempt % len(self._endpoints) == 0:
                self._sleep(0.2 * attempt / len(self._endpoints))
            url = self._endpoints[0] + path
            # Endpoints are always http:// (built by parse_endpoints or the caller).
            request = urllib.request.Request(  # noqa: S310
                url, data=data, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                    answer: dict[str, Any] = json.loads(response.read())
                    return answer
            except urllib.error.HTTPError as e:
                detail = f"{url}: HTTP {e.code}: {e.read()[:300]!r}"
                if e.code != 503:
                    raise EtcdError(detail) from e
                failures.append(detail)
                self._next_endpoint()
            except (urllib.error.URLError, OSError) as e:
                failures.append(f"{url}: {e}")
                self._next_endpoint()
        raise EtcdError("etcd: no endpoint answered: " + "; ".join(failures[-3:]))

    def put(self, key: str, value: str, *, lease: int | None = None) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        self._call("/v3/kv/put", body)

    def get(self, key: str) -> str | None:
        answer = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = answer.get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        limit: int = 0,
        newest_first: bool = False,
        oldest_first: bool = False,
        keys_only: bool = False,
        max_create_revision: int = 0,
    ) -> list[KeyValue]:
        """The key, or every key under ``prefix``; ``newest_first``/``oldest_first``
        sort by creation; ``max_create_revision`` keeps keys created at or before it."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if limit:
            body["limit"] = str(limit)
        if newest_first or oldest_first:
            body["sort_order"] = "DESCEND" if newest_first else "ASCEND"
            body["sort_target"] = "CREATE"
        if keys_only:
            body["keys_only"] = True
        if max_create_revision:
            body["max_create_revision"] = str(max_create_revision)
        answer = self._call("/v3/kv/range", body)
        return [
            KeyValue(
                _unb64(kv["key"]),
                _unb64(kv.get("value", "")),
                int(kv.get("create_revision", 0)),
                int(kv.get("mod_revision", 0)),
            )
            for kv in answer.get("kvs", [])
        ]

    def txn(self, compares: Sequence[Compare], puts: Sequence[tuple[str, str]]) -> bool:
        """Write every ``(key, value)`` of ``puts`` at once if all ``compares`` hold."""
        answer = self._call(
            "/v3/kv/txn",
            {
                "compare": list(compares),
                "success": [
                    {"request_put": {"key": _b64(key), "value": _b64(value)}} for key, value in puts
                ],
            },
        )
        return bool(answer.get("succeeded", False))

    def count(self, key: str, *, prefix: bool = False) -> int:
        """How many keys ``key`` (or the prefix) names, without reading them."""
        body: dict[str, Any] = {"key": _b64(key), "count_only": True}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return int(self._call("/v3/kv/range", body).get("count", 0))

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these keys (in transactions of at most 100 operations, etcd's default cap
        is 128)."""
        for start in range(0, len(keys), 100):
            chunk = keys[start : start + 100]
            self._call(
                "/v3/kv/txn",
                {"success": [{"request_delete_range": {"key": _b64(k)}} for k in chunk]},
            )

    def put_if_absent(self, key: str, value: str, *, lease: int | None = None) -> bool:
        """Create ``key`` only if it does not exist (one transaction); True if created."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            put["lease"] = str(lease)
        answer = self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "target": "CREATE",
                        "result": "EQUAL",
                        "create_revision": "0",
                    }
                ],
                "success": [{"request_put": put}],
            },
        )
        return bool(answer.get("succeeded", False))

    def grant(self, ttl: int) -> int:
        answer = self._call("/v3/lease/grant", {"TTL": str(ttl)})
        if "ID" not in answer:
            raise EtcdError(f"etcd: lease grant answered without an ID: {answer!r}")
        return int(answer["ID"])

    def keep_alive(self, lease: int) -> bool:
        """Refresh a lease once; False when it has already expired."""
        answer = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = answer.get("result", answer)
        return int(result.get("TTL", 0)) > 0

    def revoke(self, lease: int) -> None:
        self._call("/v3/lease/revoke", {"ID": str(lease)})


class LeaderElection:
    """One replica's side of the election for ``key`` (see the module docstring)."""

    def __init__(self, client: EtcdClient, key: str, identity: str, *, ttl: int = 5) -> None:
        self._client = client
        self._key = key
        self.identity = identity
        self.ttl = ttl
        self._lease: int | None = None

    def campaign(self) -> bool:
        """Try to become (or stay) leader; True while this replica leads.

        Call it more often than ``ttl``: a leader's call refreshes its lease."""
        if self._lease is not None and not self._client.keep_alive(self._lease):
            self._lease = None  # expired while we were away: we are not leader any more
        if self._lease is None:
            self._lease = self._client.grant(self.ttl)
        if self._client.put_if_absent(self._key, self.identity, lease=self._lease):
            return True
        return self._client.get(self._key) == self.identity

    def leader(self) -> str | None:
        return self._client.get(self._key)

    def resign(self) -> None:
        if self._lease is not None:
            self._client.revoke(self._lease)
            self._lease = None

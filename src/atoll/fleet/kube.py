"""The few Kubernetes API requests ``atoll fleet operator`` makes itself (aiohttp).

kopf watches and patches the NodePools for its handlers; listing Nodes and
pods, annotating and cordoning Nodes, evicting pods and writing a pool's status
are done here, with the :class:`kopf.ConnectionInfo` that kopf's login produced,
so there is one source of credentials (token, basic auth, client certificate,
CA, as in a kubeconfig). Merge patches only: they need no resourceVersion and
touch only the keys they name.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf

from atoll.durable import write_atomic

GROUP = "atoll.dev"
VERSION = "v1alpha1"
PLURAL = "nodepools"


class KubeError(Exception):
    """A Kubernetes API request failed; the message names the method and path."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status


class KubeApi:
    """The few requests the operator makes itself, with kopf's credentials.

    kopf watches and patches the NodePools for its handlers; listing Nodes,
    annotating them and writing a pool's status from the timer are done here,
    with the :class:`kopf.ConnectionInfo` that kopf's login produced, so there
    is one source of credentials.
    """

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self._info = info
        self._tmp = tempfile.TemporaryDirectory(prefix="atoll-operator-")
        self._session: aiohttp.ClientSession | None = None

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

    async def _request(
        self, method: str, path: str, body: object = None, content_type: str | None = None
    ) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers(),
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        url = self._info.server.rstrip("/") + path
        headers = {"Content-Type": content_type} if content_type else {}
        async with self._session.request(method, url, json=body, headers=headers) as response:
            if response.status >= 400:
                raise KubeError(method, path, response.status, await response.text())
            return await response.json(content_type=None)

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
        """POST an Eviction; returns the HTTP status (429: refused by a PodDisruptionBudget)."""
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
        try:
            await self._request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", body)
        except KubeError as e:
            if e.status in (404, 429):
                return e.status
            raise
        return 201

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

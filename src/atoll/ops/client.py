"""The client of one node's agent API, over mutual TLS.

Standard library HTTP (``http.client`` + ``ssl``): the client presents its
certificate (whose OU is its role) and verifies the agent's certificate
against the fleet CA, including its SAN. One JSON request per call
(:meth:`NodeClient.request`); a refusal or an unreachable agent is a
:class:`NodeError` naming the URL. The verbs of ``atoll node`` are
:mod:`atoll.ops.cli`; the ops shell's session is :mod:`atoll.ops.shell`.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from atoll.errors import AtollError, InputError

TIMEOUT = 30.0


class NodeError(AtollError):
    """The agent refused the request or could not be reached (message names the URL)."""


class NodeClient:
    """One agent endpoint and the client's credentials."""

    def __init__(self, endpoint: str, ca: Path, cert: Path | None, key: Path | None) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            raise InputError(f"--endpoint {endpoint!r}: expected https://HOST:PORT")
        self.endpoint = endpoint.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 443
        try:
            self.context = ssl.create_default_context(cafile=str(ca))
            if cert is not None:
                self.context.load_cert_chain(str(cert), str(key) if key else None)
        except (OSError, ssl.SSLError) as e:
            raise InputError(f"cannot load TLS material (--ca {ca}, --cert {cert}): {e}") from e

    def request(self, method: str, path: str, body: object | None = None) -> Any:
        url = self.endpoint + path
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=self.context, timeout=TIMEOUT
        )
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, ssl.SSLError, http.client.HTTPException) as e:
            raise NodeError(f"{method} {url}: {e}") from e
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError as e:
            raise NodeError(f"{method} {url}: answer is not JSON: {raw[:200]!r}") from e
        if response.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else payload
            raise NodeError(f"{method} {url}: HTTP {response.status}: {message}")
        return payload

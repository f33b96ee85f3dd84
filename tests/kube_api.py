"""Just enough HTTPS to a test's own API server (``atoll cluster up``), as a given
identity: a client certificate, a bearer token, or the cluster's admin. Shared by the
integration tests that talk to a real kube-apiserver."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from atoll.cluster.up import ControlPlane


class Api:
    """Requests to ``plane``'s API server (always its own https:// URL: S310 does not apply)."""

    def __init__(
        self, plane: ControlPlane, *, token: str | None = None, cert: Path | None = None
    ) -> None:
        self.server = plane.server
        self.context = ssl.create_default_context(cafile=os.fspath(plane.ca_file))
        if cert is not None:
            self.context.load_cert_chain(cert.with_suffix(".crt"), cert.with_suffix(".key"))
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            patch = "application/merge-patch+json"
            headers["Content-Type"] = patch if method == "PATCH" else "application/json"
        request = urllib.request.Request(  # noqa: S310
            self.server + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def ok(self, method: str, path: str, body: object = None) -> Any:
        code, answer = self.call(method, path, body)
        assert code < 400, f"{method} {path}: {code} {answer}"
        return answer

    def items(self, path: str) -> list[dict[str, Any]]:
        return list(self.ok("GET", path).get("items") or [])

    def lines(self, path: str) -> Iterator[dict[str, Any]]:
        request = urllib.request.Request(self.server + path, headers=self.headers)  # noqa: S310
        with urllib.request.urlopen(request, timeout=15, context=self.context) as answer:  # noqa: S310
            for line in answer:
                yield json.loads(line)


def admin_api(plane: ControlPlane) -> Api:
    """The cluster's admin (system:masters), with the certificate ``up`` made."""
    return Api(plane, cert=plane.layout.pki / "admin.crt")

"""The node's OS state on its own Kubernetes Node object (node side, standard library only).

A node that joined a cluster (user data ``[kubernetes]``, :mod:`atoll.agent.provision`)
runs a kubelet that asks for its client certificate with a CSR and keeps the
current one in :data:`CLIENT_CERT` (certificate and key in one file). With that
certificate, the node's own identity, the agent patches its Node (a JSON merge
patch of labels and annotations): the Node authorizer and NodeRestriction
admission let a node change its own Node and no other, so the agent holds no
cluster credential of its own.

What it writes is the agent's half of the Node protocol, owned by
:mod:`atoll.wire.kubenode` (the operator reads it from there too):
:func:`node_state` (pure) turns ``ostree admin status``, the health record and
the facts the fleet hears (:func:`atoll.agent.update_loop.health_facts`) into a
:class:`~atoll.wire.kubenode.NodeState`, whose ``patch()`` is the JSON merge
patch sent: label ``atoll.dev/version`` (when the version is a valid label
value), annotations ``current-version``, ``commit``, ``staged-version``,
``healthy``, ``failed`` (+ ``failure``), ``health`` and ``restart`` (the last
restart into a version: soft or full, and why).

:class:`Publisher` patches when the state differs from what it last published,
and again after a failure, at most every ``interval`` seconds; it does nothing
on a node without join data. A pre-issued client certificate (user data
``certificate`` and ``key``) is used once the kubelet keeps it in
:data:`CLIENT_CERT` (at its first rotation).

A condition on the Node's status, :data:`CONDITION` (``AtollUpdate``,
:func:`node_condition`, pure): ``True`` with reason ``Staged`` while a
deployment waits for a reboot, ``True`` with reason ``Failed`` after an update
failed its health check and was rolled back, ``False`` (reason ``Idle``)
otherwise; the message names the version or the commit. It is sent as a
strategic merge patch of ``nodes/<name>/status``, which merges conditions by
type, so the kubelet's own conditions stay as they are.

Before the kubelet has its certificate, :class:`JoinWatch` checks the join data
itself (:func:`probe_join`, verdicts in :mod:`atoll.agent.kubejoin`) and keeps
the verdict for the agent's API.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from atoll.agent import kubejoin
from atoll.agent.kubejoin import JoinData, JoinReport, JoinState
from atoll.wire import kubelet
from atoll.wire import kubenode as protocol
from atoll.wire.fleet import Restart, StepFailure
from atoll.wire.kubenode import Health, NodeState

CLIENT_CERT = kubejoin.CLIENT_CERT  # kept by the kubelet
LABEL_VERSION = protocol.LABEL_VERSION
CONDITION = "AtollUpdate"  # the Node condition while an update is staged or has failed
INTERVAL = 30.0  # seconds between looks at the state
TIMEOUT = 10.0  # seconds for one request to the API server
MAX_ANSWER = 1 << 20  # bytes of an answer read (for its message)
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# A question every authenticated user may ask (system:basic-user): who am I?
SELF_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
_NODE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


class NodeError(Exception):
    """The Node could not be patched; the message names the server and the node."""


@dataclass(frozen=True)
class Facts:
    """What the fleet hears about the node's health (:func:`update_loop.health_facts`)."""

    healthy: bool
    unhealthy: bool  # unhealthy outside a health trial
    rolled_back_from: str | None  # the commit the last automatic rollback left


def node_state(
    deployments: Iterable[Mapping[str, Any]],
    record: Mapping[str, Any] | None,
    facts: Facts,
    restart: Restart | None = None,
) -> NodeState | None:
    """The state from ``ostree admin status`` (as :meth:`Deployment.as_dict`), the
    health record (:func:`atoll.agent.health.read_record`), ``facts`` and the last
    restart (:func:`atoll.agent.update_loop.last_restart`); ``None`` when no
    deployment is booted (nothing to say)."""
    found = list(deployments)
    booted = next((d for d in found if d.get("booted")), None)
    if booted is None:
        return None
    pending = next((d for d in found if d.get("pending") or d.get("staged")), None)
    if facts.rolled_back_from is not None:
        failure: str | None = f"rolled back from {facts.rolled_back_from}: its health trial failed"
    elif facts.unhealthy:
        failure = "unhealthy outside a health trial"
    else:
        failure = None
    commit = str(booted.get("checksum") or "") or None
    return NodeState(
        version=str(booted.get("version") or commit or ""),
        staged=None if pending is None else str(pending.get("version") or pending["checksum"]),
        healthy=facts.healthy,
        failed=failure is not None,
        failure=failure,
        commit=commit,
        health=_health(record),
        restart=restart,
    )


def _health(record: Mapping[str, Any] | None) -> Health:
    if record is None:
        return Health.UNKNOWN
    if record.get("rolled_back") and isinstance(record.get("rollback"), Mapping):
        return Health.ROLLED_BACK
    if record.get("trial"):
        return Health.TRIAL
    return Health.HEALTHY if record.get("healthy") else Health.UNHEALTHY


def node_condition(state: NodeState) -> dict[str, str]:
    """The :data:`CONDITION` that says ``state`` (without its times)."""
    if state.staged is not None:
        status, reason = "True", "Staged"
        message = f"version {state.staged} is staged and waits for a reboot"
    elif state.health is Health.ROLLED_BACK:
        status, reason = "True", "Failed"
        message = f"an update failed: {state.failure or 'rolled back by its health trial'}"
    else:
        status, reason = "False", "Idle"
        message = f"running {state.version}, no update staged or failed"
    return {"type": CONDITION, "status": status, "reason": reason, "message": message}


def condition_patch(condition: Mapping[str, str], now: float) -> dict[str, Any]:
    """The strategic merge patch of the Node's status that sets ``condition``, changed
    at ``now`` (seconds since the epoch); other conditions are merged by type, so they stay."""
    moment = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamped = {**condition, "lastHeartbeatTime": moment, "lastTransitionTime": moment}
    return {"status": {"conditions": [stamped]}}


@dataclass(frozen=True)
class Join:
    """Where the API server is and how this node proves who it is."""

    server: str  # https URL
    ca: Path
    client_cert: Path  # certificate and key, one PEM file


def find_join(root: Path) -> Join | None:
    """The join data first boot wrote, once the kubelet holds a client certificate;
    None before (or on a node that never joins)."""
    cert = root / CLIENT_CERT
    if not cert.exists():
        return None
    for name in (kubelet.BOOTSTRAP_KUBECONFIG, kubelet.KUBECONFIG):
        try:  # the agent writes JSON; a kubeconfig the kubelet wrote (YAML) is skipped
            config = json.loads((root / name).read_text())
            server = config["clusters"][0]["cluster"]["server"]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
        if isinstance(server, str) and server.startswith("https://"):
            return Join(server, root / kubelet.CA, cert)
    return None


@dataclass(frozen=True)
class _Call:
    method: str
    path: str  # under the server's URL
    body: Mapping[str, Any]
    content_type: str = "application/json"


def _context(ca: Path, client_cert: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=os.fspath(ca))
    if client_cert is not None:
        context.load_cert_chain(os.fspath(client_cert))
    return context


def client_context(join: Join) -> ssl.SSLContext:
    """TLS as the node: the cluster's CA, the kubelet's client certificate."""
    return _context(join.ca, join.client_cert)


def connection(server: str, context: ssl.SSLContext, timeout: float) -> http.client.HTTPSConnection:
    """A connection to the API server at ``server`` (an https URL), not yet opened."""
    parts = urlsplit(server)
    return http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, timeout=timeout, context=context
    )


def server_path(server: str, path: str) -> str:
    """``path`` (``/api/...``) under the server's URL (which may carry a path prefix)."""
    return f"{urlsplit(server).path.rstrip('/')}{path}"


def request(
    server: str, context: ssl.SSLContext, method: str, path: str, *, timeout: float = TIMEOUT
) -> tuple[int, bytes]:
    """One HTTPS request without a body (a GET); the answer's status and (the start
    of) its body. Raises OSError, ssl.SSLError or http.client.HTTPException."""
    conn = connection(server, context, timeout)
    try:
        conn.request(method, server_path(server, path))
        answer = conn.getresponse()
        return answer.status, answer.read(MAX_ANSWER)
    finally:
        conn.close()


def _send(
    server: str,
    context: ssl.SSLContext,
    call: _Call,
    headers: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> tuple[int, bytes]:
    """One HTTPS request with a JSON body; the answer's status and (the start of) its
    body. Raises OSError, ssl.SSLError or http.client.HTTPException."""
    conn = connection(server, context, timeout)
    try:
        conn.request(
            call.method,
            server_path(server, call.path),
            body=json.dumps(call.body).encode(),
            headers={"Content-Type": call.content_type, **(headers or {})},
        )
        answer = conn.getresponse()
        return answer.status, answer.read(MAX_ANSWER)
    finally:
        conn.close()


def _patch_as_node(join: Join, node: str, call: _Call) -> None:
    if not _NODE_NAME.fullmatch(node):
        raise NodeError(f"node name {node!r} is not a Kubernetes node name")
    where = f"{join.server}: node {node}"
    try:
        status, raw = _send(join.server, client_context(join), call)
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        raise NodeError(f"{where}: {e}") from e
    if status != 200:
        raise NodeError(f"{where}: HTTP {status}: {message_of(raw)}")


def patch_node(join: Join, node: str, body: Mapping[str, Any]) -> None:
    """PATCH ``/api/v1/nodes/<node>`` (merge patch) as the node; :class:`NodeError`."""
    _patch_as_node(join, node, _Call("PATCH", f"/api/v1/nodes/{node}", body, MERGE_PATCH))


def patch_node_status(join: Join, node: str, body: Mapping[str, Any]) -> None:
    """PATCH ``/api/v1/nodes/<node>/status`` (strategic merge patch) as the node."""
    call = _Call("PATCH", f"/api/v1/nodes/{node}/status", body, STRATEGIC_MERGE_PATCH)
    _patch_as_node(join, node, call)


def message_of(raw: bytes) -> str:
    """The API server's ``message`` in an answer (else its first 200 bytes)."""
    try:
        message = json.loads(raw).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else raw[:200].decode(errors="replace")


Patch = Callable[[Join, str, Mapping[str, Any]], None]


class Publisher:
    """Keeps the Node's labels, annotations and :data:`CONDITION` in step with the
    node's OS state."""

    def __init__(
        self,
        root: Path,
        state: Callable[[], NodeState | None],
        *,
        node: Callable[[], str] = lambda: socket.gethostname().lower(),
        patch: Patch = patch_node,
        patch_status: Patch = patch_node_status,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = print,
    ) -> None:
        self.root = root
        self.state = state
        self.node = node
        self.patch = patch
        self.patch_status = patch_status
        self.clock = clock
        self.log = log
        self.published: dict[str, Any] | None = None
        self.condition: dict[str, str] | None = None  # the last one the Node took
        self._last_error = ""
        # adopt(): failed, failure, observed, step
        self._heard: tuple[bool, str | None, str | None, StepFailure | None] | None = None
        self._lock = threading.Lock()  # the publisher's thread and the update loop

    def adopt(
        self,
        *,
        failed: bool,
        failure: str | None,
        observed: str | None = None,
        step: StepFailure | None = None,
    ) -> None:
        """What the update loop reported last (:mod:`atoll.agent.kubegrant`): it knows
        more than the health record whether the node failed (a failed step, a
        rollback that a fix has superseded), so ``failed`` and ``failure`` replace
        the record's from now on, ``step`` is the step failure itself (for the
        operator's ``onStepFailure``), and ``observed`` says which grant they answer
        (the etag of the grant it read). Health stays the record's, always fresh."""
        with self._lock:
            self._heard = (failed, failure, observed, step)

    def once(self) -> bool:
        """Publish what changed (or what failed last time); whether anything was sent."""
        with self._lock:
            return self._once()

    def _once(self) -> bool:
        join = find_join(self.root)
        if join is None:
            return False
        state = self.state()
        if state is None:  # nothing booted (ostree could not say): nothing to publish
            return False
        if self._heard is not None:
            failed, failure, observed, step = self._heard
            failure = (failure or state.failure) if failed else None
            step = step if failed else None
            state = replace(
                state, failed=failed, failure=failure, observed=observed, step_failure=step
            )
        body, condition = state.patch(), node_condition(state)
        sent = False
        try:
            if body != self.published:
                self.patch(join, self.node(), body)
                self.published, sent = body, True
            if condition != self.condition:
                patch = condition_patch(condition, self.clock())
                self.patch_status(join, self.node(), patch)
                self.condition, sent = condition, True
        except NodeError as e:
            if str(e) != self._last_error:  # said once, not every interval
                self.log(f"kubernetes node: {e}")
                self._last_error = str(e)
            return sent
        self._last_error = ""
        return sent

    def run_forever(self, stop: threading.Event, interval: float = INTERVAL) -> None:
        while not stop.is_set():
            try:
                self.once()
            except Exception as e:  # a bug here must not end the thread: say it, go on
                self.log(f"kubernetes node: {type(e).__name__}: {e}")
            stop.wait(interval)


# --- Before the kubelet has its certificate: does the join data work? ---------------


def probe_join(data: JoinData, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Ask ``data.server`` who it takes these credentials for (a SelfSubjectReview);
    the HTTP status and the user name (or the server's message). Raises
    :class:`atoll.agent.kubejoin.JoinDataError` for unusable join data, else what
    the connection raised (OSError, ssl.SSLError, http.client.HTTPException)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    call = _Call("POST", SELF_REVIEW, body)
    if data.token is not None:
        context = _join_context(data, None)
        status, raw = _send(
            data.server, context, call, {"Authorization": f"Bearer {data.token}"}, timeout
        )
    else:
        with tempfile.TemporaryDirectory(prefix="atoll-join-") as private:  # 0700
            pem = Path(private) / "client.pem"
            pem.write_bytes((data.certificate or b"") + b"\n" + (data.key or b""))
            status, raw = _send(data.server, _join_context(data, pem), call, timeout=timeout)
    return status, _who(raw) if 200 <= status < 300 else message_of(raw)


def _join_context(data: JoinData, client_cert: Path | None) -> ssl.SSLContext:
    try:
        return _context(data.ca, client_cert)
    except (OSError, ssl.SSLError) as e:
        what = "cluster CA" if client_cert is None else "cluster CA or client certificate"
        raise kubejoin.JoinDataError(f"{what} ({data.ca}, {data.source}): {e}") from e


def _who(raw: bytes) -> str:
    try:
        user = json.loads(raw)["status"]["userInfo"]
        groups = ", ".join(g for g in user.get("groups", []) if isinstance(g, str))
        return f"{user['username']} (groups {groups})" if groups else str(user["username"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


Probe = Callable[[JoinData], tuple[int, str]]


class JoinWatch:
    """Checks the join data until the kubelet has joined; keeps the verdict
    (:func:`atoll.agent.kubejoin.write_report`) and logs each change once."""

    def __init__(
        self,
        root: Path,
        *,
        probe: Probe = probe_join,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = print,
    ) -> None:
        self.root = root
        self.probe = probe
        self.clock = clock
        self.log = log
        self.report: JoinReport | None = None
        self.failures = 0  # failed probes in a row

    def once(self) -> float:
        """Look once; the seconds until the next look (:func:`kubejoin.retry_delay`)."""
        try:
            data = kubejoin.find_join_data(self.root)
        except kubejoin.JoinDataError as e:
            self._keep(JoinState.INVALID, "", f"join data: {e}")
            return kubejoin.retry_delay(JoinState.INVALID, self.failures)
        if data is None:
            return kubejoin.JOINED_DELAY  # never joins (or not yet provisioned): nothing said
        if kubejoin.joined(self.root):
            if self.report is None or self.report.state is not JoinState.JOINED:
                self._keep(JoinState.JOINED, data.server, f"{data.server}: the kubelet has joined")
            return kubejoin.retry_delay(JoinState.JOINED, 0)
        try:
            outcome: int | BaseException
            outcome, said = self.probe(data)
        except Exception as e:  # classified: every failure is a verdict, never a crash
            outcome, said = e, ""
        state, message = kubejoin.classify(outcome, server=data.server, ca=data.ca, said=said)
        self._keep(state, data.server, message)
        return kubejoin.retry_delay(state, self.failures)

    def _keep(self, state: JoinState, server: str, message: str) -> None:
        ok = state in (JoinState.OK, JoinState.JOINED)
        self.failures = 0 if ok else self.failures + 1
        before = self.report
        changed = before is None or (before.state, before.message) != (state, message)
        self.report = JoinReport(state, server, message, self.clock())
        if changed:
            self.log(f"kubernetes join: {state.value}: {message}")
        kubejoin.write_report(self.root, self.report)

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                delay = self.once()
            except Exception as e:  # a bug here must not end the thread: say it, go on
                self.log(f"kubernetes join: {type(e).__name__}: {e}")
                delay = kubejoin.MAX_DELAY
            stop.wait(delay)

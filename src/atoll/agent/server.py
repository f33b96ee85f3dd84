"""The agent's HTTPS API: mutual TLS, roles from the client certificate, every request audited.

:mod:`socketserver` + ``ssl`` (standard library only; runs on the node), with
the requests read, framed and answered by :mod:`atoll.agent.connection` and
:mod:`atoll.agent.framing` (strict HTTP/1.1, bounded in size, time and number
of connections; every refusal audited). The TLS handshake is done per
connection in the worker thread (not in ``accept``), so a refused client (no
certificate, another CA, expired, revoked via the CRL) is *audited* with its
address and OpenSSL's reason instead of vanishing inside socketserver.

Authorisation: the certificate's subject ``OU`` is the role (issued by
``atoll pki``); each route names the least role allowed (viewer < operator <
admin). A request from a role below it gets 403, audited. Bodies are JSON
objects (``Content-Type: application/json``, decoded strictly by
:mod:`atoll.agent.jsonbody`) validated completely before any change; bad input
is a 4xx whose ``error`` names the field, and a handler bug is a 500 that is
still audited.

Routes (``ROUTES`` drives dispatch and the OpenAPI document):
``GET /v1/status`` (with ``kubernetes``: the verdict of
:mod:`atoll.agent.kubejoin` on the join data, or null), ``GET /v1/health``
(the last record of :mod:`atoll.agent.health`), ``GET /v1/settings``, ``PATCH /v1/settings``,
``GET /v1/audit``, ``GET /v1/audit/verify``, ``GET /v1/openapi.json``,
``POST /v1/upgrade`` (``{"to"?: commit|ref, "reboot"?: bool}``),
``POST /v1/rollback`` (``{"reboot"?: bool}``) and ``POST /v1/reboot`` (``{}``):
the deployment routes run ``ostree admin`` through
:class:`atoll.agent.deployments.Deployments` (injected command runner, then
the boot entries sync) and answer with the deployments after the change.
A reboot is queued with ``systemctl reboot``, which returns at once, so the
answer still reaches the client.

``GET /v1/logs?unit=U&lines=N`` (operator) reads the journal
(:mod:`atoll.agent.logs`). ``POST /v1/shell`` (admin) upgrades the connection
to the ops shell (:mod:`atoll.agent.shell`): the request is validated and
audited like any other, answered ``101 Switching Protocols``, relayed until it
ends, and its end (exit status, transcript digest) audited as ``shell end``.
"""

from __future__ import annotations

import os
import socket
import socketserver
import ssl
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from atoll.agent import bootentries, command, health, kubejoin, softreboot
from atoll.agent.audit import AuditLog
from atoll.agent.connection import (
    Connection,
    Gone,
    HttpLimits,
    Listener,
    Log,
    json_body,
    log_to_stderr,
)
from atoll.agent.deployments import (
    COMMIT,
    REF,
    CommandRunner,
    DeploymentError,
    Deployments,
    SyncHook,
)
from atoll.agent.framing import MAX_BODY, RequestError, RequestHead, is_json, shown
from atoll.agent.jsonbody import BodyError, decode_object
from atoll.agent.logs import MAX_LINES, LogsInputError, parse_export, parse_query
from atoll.agent.settings import ApplyError, Runner, SettingsError, SettingsStore
from atoll.agent.shell import (
    TRANSCRIPT_DIR,
    Clock,
    ContainerdRuntime,
    Runtime,
    ShellImageMissing,
    ShellInputError,
    ShellResult,
    ShellSession,
    ShellUnavailable,
    parse_request,
)
from atoll.wire.shellframe import PROTOCOL

SHELL_SOCKET_TIMEOUT = 30.0  # a blocked write to a shell client gives up after this
DEFAULT_LIMITS = HttpLimits()
JOURNAL_TIMEOUT = 60.0  # seconds for journalctl to export up to MAX_LINES entries


class Role(IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role | None

    @property
    def role_name(self) -> str | None:
        return self.role.name.lower() if self.role else None


class ApiError(Exception):
    """A request refused with ``status``; ``fields`` go into the answer's head (``Allow``)."""

    def __init__(
        self, status: HTTPStatus, message: str, fields: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields


@dataclass(frozen=True)
class Reply:
    """A handler's answer with header fields of its own (200, ``payload`` as the body)."""

    payload: Any
    fields: tuple[tuple[str, str], ...] = ()


IGNORED_SETTINGS = "Atoll-Ignored-Settings"  # settings.json keys this agent does not know


@dataclass(frozen=True)
class AgentConfig:
    root: Path  # "/" on a node
    audit_path: Path
    cert: Path
    key: Path
    ca: Path
    crl: Path | None
    runner: Runner
    commands: CommandRunner = command.output  # ostree admin, systemctl reboot, journalctl
    sync: SyncHook = bootentries.sync_node  # boot entries onto the ESP after a deploy
    shell_runtime: Runtime = field(default_factory=ContainerdRuntime)  # on a shell's pty
    shell_clock: Clock = time.monotonic  # measures a shell's TTL
    max_shells: int = 4  # concurrent ops shells


def identity_from_peer(peer: dict[str, Any] | None) -> Identity:
    """Name and role from ``SSLSocket.getpeercert()`` (subject CN and OU)."""
    subject: dict[str, str] = {}
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            subject[key] = value
    role_name = subject.get("organizationalUnitName", "")
    role = Role[role_name.upper()] if role_name.upper() in Role.__members__ else None
    return Identity(subject.get("commonName", "?"), role)


def _read_os_release(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for candidate in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / candidate).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip()] = value.strip().strip('"')
        break
    return out


class Agent:
    """The request handlers, independent of HTTP plumbing."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.audit = AuditLog(config.audit_path)
        self.settings = SettingsStore(config.root, config.runner)
        self.deployments = Deployments(config.commands, config.sync, root=config.root)
        self.started = time.monotonic()
        self.shell_slots = threading.BoundedSemaphore(config.max_shells)
        self.shells_ready = threading.Event()  # cleared while reap_shells runs
        self.shells_ready.set()

    def status(self, _: Identity, __: dict[str, Any], ___: dict[str, list[str]]) -> Any:
        release = _read_os_release(self.config.root)
        return {
            "hostname": self._hostname(),
            "image": release.get("IMAGE_ID", ""),
            "version": release.get("IMAGE_VERSION", release.get("VERSION_ID", "")),
            "agent_uptime_seconds": round(time.monotonic() - self.started, 3),
            **self._deployments(),
            "health": self._health_summary(),
            # Whether the join data works (atoll.agent.kubejoin); None: no verdict (yet).
            "kubernetes": kubejoin.read_report(self.config.root),
            # The restart the last upgrade or rollback used: soft or full, and why.
            "restart": softreboot.read_last_restart(self.config.root),
        }

    def _hostname(self) -> str:
        try:
            return str(self.settings.current()["hostname"])
        except SettingsError:  # an unusable settings.json: status still answers
            try:
                return (self.config.root / "etc/hostname").read_text().strip()
            except (OSError, UnicodeDecodeError):
                return ""

    def _health_summary(self) -> dict[str, Any] | None:
        record = health.read_record(self.config.root)
        if record is None:
            return None
        keys = ("healthy", "checked_at", "rolled_back", "rollback", "trial")
        return {key: record.get(key) for key in keys}

    def health(self, _: Identity, __: dict[str, Any], ___: dict[str, list[str]]) -> Any:
        record = health.read_record(self.config.root)
        if record is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "health: no check has run yet")
        return record

    def _deployments(self) -> dict[str, Any]:
        try:
            return {"deployments": [d.as_dict() for d in self.deployments.status()]}
        except DeploymentError as e:
            return {"deployments": None, "deployments_error": str(e)}

    def upgrade(self, _: Identity, body: dict[str, Any], __: dict[str, list[str]]) -> Any:
        _check_fields(body, {"to": str, "reboot": bool})
        to = body.get("to")
        if to is not None and not (COMMIT.fullmatch(to) or REF.fullmatch(to)):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"to: {to!r} is neither a commit nor a ref")
        return self._deploy(
            lambda: self.deployments.upgrade(to), bool(body.get("reboot")), "upgrade"
        )

    def rollback(self, _: Identity, body: dict[str, Any], __: dict[str, list[str]]) -> Any:
        _check_fields(body, {"reboot": bool})
        return self._deploy(self.deployments.rollback, bool(body.get("reboot")), "rollback")

    def reboot(self, _: Identity, body: dict[str, Any], __: dict[str, list[str]]) -> Any:
        _check_fields(body, {})
        return self._deploy(lambda: {}, True, "reboot")

    def _deploy(self, action: Callable[[], dict[str, Any]], reboot: bool, why: str) -> Any:
        try:
            result = action()
            if reboot:
                # Into a pending deployment: recorded as the last restart (restart.json),
                # so GET /v1/status, the fleet, and a rollback of it know how it went.
                restarter = softreboot.Restarter(self.deployments.run, root=self.config.root)
                try:
                    current = self.deployments.status()
                except DeploymentError:
                    current = []  # the reboot asked for still happens; nothing known to record
                argv: list[str] = []
                restarter.full_reboot(
                    current,
                    f"{why} through the API",
                    lambda: argv.extend(self.deployments.reboot()),
                )
                result["reboot"] = argv
        except DeploymentError as e:
            raise ApiError(HTTPStatus.CONFLICT, str(e)) from e
        return result

    def settings_get(self, _: Identity, __: dict[str, Any], ___: dict[str, list[str]]) -> Any:
        try:
            values = self.settings.current()
        except SettingsError as e:  # settings.json itself, not the request: fix it by a PATCH
            raise ApiError(HTTPStatus.CONFLICT, str(e)) from e
        ignored = self.settings.ignored()  # stored by another agent version; a PATCH drops them
        return Reply(values, ((IGNORED_SETTINGS, ", ".join(ignored)),) if ignored else ())

    def settings_patch(self, _: Identity, body: dict[str, Any], __: dict[str, list[str]]) -> Any:
        try:
            return self.settings.set(body)
        except SettingsError as e:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, str(e)) from e
        except ApplyError as e:
            raise ApiError(HTTPStatus.CONFLICT, str(e)) from e

    def audit_list(self, _: Identity, __: dict[str, Any], query: dict[str, list[str]]) -> Any:
        try:
            since = int(query.get("since", ["0"])[0])
            limit = int(query.get("limit", ["100"])[0])
        except ValueError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, "since/limit: expected integers") from e
        if since < 0 or not 1 <= limit <= 1000:
            raise ApiError(HTTPStatus.BAD_REQUEST, "since >= 0 and 1 <= limit <= 1000")
        return {"records": self.audit.records(since=since, limit=limit)}

    def audit_verify(self, _: Identity, __: dict[str, Any], ___: dict[str, list[str]]) -> Any:
        verdict = self.audit.verify()
        return {"ok": verdict.ok, "records": verdict.records, "problems": list(verdict.problems)}

    def openapi(self, _: Identity, __: dict[str, Any], ___: dict[str, list[str]]) -> Any:
        return openapi_document()

    def logs(self, _: Identity, __: dict[str, Any], query: dict[str, list[str]]) -> Any:
        try:
            wanted = parse_query(query)
        except LogsInputError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(e)) from e
        try:
            export = self.config.commands(wanted.argv(), timeout=JOURNAL_TIMEOUT)
        except (DeploymentError, RuntimeError, OSError) as e:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"journalctl: {e}") from e
        return {"unit": wanted.unit, "lines": wanted.lines, "entries": parse_export(export)}

    def reap_shells(self) -> None:
        """Remove the ops containers a previous agent left behind, each one audited.

        The daemon clears ``shells_ready`` before it serves and runs this in a
        thread; new shells wait for it, so a fresh session is never taken for a leftover.
        """
        try:
            runtime = self.config.shell_runtime
            for session in runtime.leftovers():
                problems = runtime.stop(session)
                self.audit.append(
                    who="agent", role=None, what="shell reaped", session=session, problems=problems
                )
        finally:
            self.shells_ready.set()

    def shell(self, who: Identity, body: dict[str, Any], __: dict[str, list[str]]) -> Any:
        """Validate only; the session starts once the connection is upgraded."""
        try:
            request = parse_request(body)
        except ShellInputError as e:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(e)) from e
        return ShellSession(
            request,
            self.config.shell_runtime,
            self.config.root / TRANSCRIPT_DIR,
            who=who.name,
            clock=self.config.shell_clock,
        )


def _check_fields(body: dict[str, Any], allowed: dict[str, type]) -> None:
    """Refuse unknown fields and wrongly typed values (the message names the field)."""
    for key, value in body.items():
        if key not in allowed:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{key}: unknown field")
        kind = allowed[key]
        # bool is an int in Python; only JSON true/false count as booleans
        if type(value) is not kind:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{key}: expected {kind.__name__}")


Handler = Callable[[Agent, Identity, dict[str, Any], dict[str, list[str]]], Any]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    role: Role
    handler: Handler
    summary: str
    has_body: bool = False
    schema: dict[str, Any] | None = None  # the request body's schema (settings when None)
    query: tuple[dict[str, Any], ...] = ()  # OpenAPI query parameters
    upgrade: str | None = None  # the protocol a 101 switches to


_REBOOT = {"reboot": {"type": "boolean"}}


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/status", Role.VIEWER, Agent.status, "Version, host name, agent uptime"),
    Route(
        "GET",
        "/v1/health",
        Role.VIEWER,
        Agent.health,
        "The last health checks (systemd, containerd, /var space, agent, user checks), "
        "the upgrade on trial and the last automatic rollback",
    ),
    Route("GET", "/v1/settings", Role.VIEWER, Agent.settings_get, "All settings (dotted keys)"),
    Route(
        "PATCH",
        "/v1/settings",
        Role.OPERATOR,
        Agent.settings_patch,
        "Change settings (validated as a whole, applied atomically)",
        has_body=True,
    ),
    Route("GET", "/v1/audit", Role.VIEWER, Agent.audit_list, "Audit records"),
    Route("GET", "/v1/audit/verify", Role.VIEWER, Agent.audit_verify, "Verify the audit chain"),
    Route("GET", "/v1/openapi.json", Role.VIEWER, Agent.openapi, "This document"),
    Route(
        "POST",
        "/v1/upgrade",
        Role.OPERATOR,
        Agent.upgrade,
        "Deploy a commit or ref (default: the origin's newest) beside the running one",
        has_body=True,
        schema={"properties": {"to": {"type": "string"}, **_REBOOT}},
    ),
    Route(
        "POST",
        "/v1/rollback",
        Role.OPERATOR,
        Agent.rollback,
        "Cancel a pending deployment or make the previous one the default",
        has_body=True,
        schema={"properties": _REBOOT},
    ),
    Route(
        "POST",
        "/v1/reboot",
        Role.OPERATOR,
        Agent.reboot,
        "Reboot the node (queued; the answer is sent first)",
        has_body=True,
        schema={"properties": {}},
    ),
    Route(
        "GET",
        "/v1/logs",
        Role.OPERATOR,
        Agent.logs,
        "The journal's last lines, of one unit or all (journalctl -o json)",
        query=(
            {"name": "unit", "in": "query", "schema": {"type": "string", "maxLength": 255}},
            {
                "name": "lines",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LINES},
            },
        ),
    ),
    Route(
        "POST",
        "/v1/shell",
        Role.ADMIN,
        Agent.shell,
        "Open an ops shell: with Connection: Upgrade and Upgrade: atoll-shell/1, "
        "101 then framed terminal bytes on this connection until exit, TTL or disconnect",
        has_body=True,
        schema={
            "properties": {
                "reason": {"type": "string", "minLength": 1, "maxLength": 500},
                "ttl": {"type": "integer", "minimum": 1, "maximum": 14400},
                "tty": {"type": "boolean"},
                "rows": {"type": "integer", "minimum": 1, "maximum": 1000},
                "cols": {"type": "integer", "minimum": 1, "maximum": 1000},
                "image": {
                    "type": "string",
                    "maxLength": 255,
                    "description": "a preloaded image instead of the toolbox (diagnosis)",
                },
            },
            "required": ["reason"],
        },
        upgrade=PROTOCOL,
    ),
)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``ROUTES`` (also kept as docs/agent-openapi.json)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        op: dict[str, Any] = {
            "summary": route.summary,
            "x-atoll-role": route.role.name.lower(),
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                "400": {"description": "Bad input; `error` names the field"},
                "403": {"description": "The certificate's role may not do this"},
            },
        }
        if route.path == "/v1/health":
            op["responses"]["404"] = {"description": "No health check has run yet"}
        if route.path == "/v1/settings" and route.method == "GET":
            op["responses"]["409"] = {"description": "settings.json unusable; `error` names why"}
        if route.path == "/v1/audit":
            op["parameters"] = [
                {"name": n, "in": "query", "schema": {"type": "integer", "minimum": lo}}
                for n, lo in (("since", 0), ("limit", 1))
            ]
        if route.query:
            op["parameters"] = list(route.query)
        if route.has_body:
            schema: dict[str, Any] = {"type": "object", "minProperties": 1}
            if route.schema is not None:
                schema = {"type": "object", "additionalProperties": False, **route.schema}
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
            op["responses"]["413"] = {"description": f"Body over {MAX_BODY} bytes"}
            op["responses"]["415"] = {"description": "Body not sent as application/json"}
            if route.schema is None:
                op["responses"]["422"] = {"description": "Invalid setting; `error` names the key"}
                op["responses"]["409"] = {"description": "Apply failed; previous settings restored"}
            elif route.upgrade is not None:
                op["responses"]["101"] = {"description": f"Switched to {route.upgrade}"}
                op["responses"]["409"] = {"description": "Too many shell sessions"}
                op["responses"]["426"] = {"description": f"Needs Upgrade: {route.upgrade}"}
                op["responses"]["404"] = {"description": "The image asked for is not on the node"}
                op["responses"]["503"] = {
                    "description": "No ops toolbox on this node, or its import failed"
                }
            else:
                op["responses"]["409"] = {"description": "ostree failed or nothing to roll back"}
        if route.path == "/v1/logs":
            op["responses"]["503"] = {"description": "journalctl failed"}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "atoll agent", "version": "1"},
        "paths": paths,
    }


UNIX_ROOT = Identity("unix:root", Role.ADMIN)  # the root-only Unix socket
_REASON_SHOWN = 1000  # characters of a refusal's reason kept in its audit record


def _route(method: str, path: str) -> Route:
    matches = [r for r in ROUTES if r.path == path]
    if not matches:
        raise ApiError(HTTPStatus.NOT_FOUND, f"{shown(path)}: no such endpoint")
    route = next((r for r in matches if r.method == method), None)
    if route is None:
        allow = ", ".join(r.method for r in matches)
        raise ApiError(
            HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {path}: not allowed", (("Allow", allow),)
        )
    return route


def _authorise(who: Identity, route: Route) -> None:
    if who.role is None or who.role < route.role:
        raise ApiError(
            HTTPStatus.FORBIDDEN,
            f"{route.method} {route.path}: needs role {route.role.name.lower()}",
        )


def _body(conn: Connection[Identity], head: RequestHead, route: Route) -> dict[str, Any]:
    """The request's JSON object: read and decoded only for a route that takes one."""
    if not route.has_body:
        if head.content_length:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body: {route.method} {route.path} takes none")
        return {}
    if head.content_length == 0:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"body: expected 1..{MAX_BODY} bytes of JSON")
    if not is_json(head.field("content-type")):
        raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type: expected application/json")
    if head.expect_continue:
        conn.send_continue()
    try:
        return decode_object(conn.read_body(head.content_length))
    except BodyError as e:
        raise ApiError(HTTPStatus.BAD_REQUEST, str(e)) from e


@dataclass
class _Outcome:
    """What one request comes to: audited first, then answered."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    payload: Any = None
    params: Any = None
    reason: str | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def refused(
        self, status: HTTPStatus, reason: str, fields: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.status, self.payload, self.fields = status, {"error": reason}, fields
        self.reason = reason if len(reason) <= _REASON_SHOWN else reason[:_REASON_SHOWN] + "..."


def serve_request(agent: Agent, conn: Connection[Identity], head: RequestHead) -> bool:
    """Route, authorise, read the body, run the handler; audit, then answer.

    Returns whether the connection may carry another request (not after a body
    left unread, a ``Connection: close`` or an upgrade to the shell).
    """
    conn.what = f"{head.method} {head.path}"
    outcome = _Outcome()
    try:
        route = _route(head.method, head.path)
        _authorise(conn.peer, route)
        body = _body(conn, head, route)
        outcome.params = body if route.has_body else None
        result = route.handler(agent, conn.peer, body, parse_qs(head.query))
        if isinstance(result, ShellSession):
            _open_shell(agent, conn, head, route, result)
            return False
        if isinstance(result, Reply):
            result, outcome.fields = result.payload, result.fields
        outcome.status, outcome.payload = HTTPStatus.OK, result
    except RequestError as e:  # the body did not arrive in time: framing, not the handler's
        return conn.refuse(e)
    except Gone:
        raise
    except ApiError as e:
        outcome.refused(e.status, str(e), e.fields)
    except Exception as e:  # a bug: answered and audited, never a dropped connection
        outcome.refused(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")
        outcome.reason = f"{type(e).__name__}: {e}"[:_REASON_SHOWN]
        conn.log(f"atoll-agent: {conn.what}: internal error\n{traceback.format_exc()}")
    return _finish(conn, head, outcome)


def _finish(conn: Connection[Identity], head: RequestHead, outcome: _Outcome) -> bool:
    try:
        body = json_body(outcome.payload)
    except (TypeError, ValueError) as e:
        outcome.refused(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(e).__name__}")
        body = json_body(outcome.payload)
    close = not head.keep_alive or conn.body_pending
    extra = {"reason": outcome.reason} if outcome.reason is not None else {}
    try:
        # Audited (and fsynced) before the client sees the answer.
        conn.record(what=conn.what, params=outcome.params, result=int(outcome.status), **extra)
    except Exception as e:  # the disk, not the request: say so rather than answer unrecorded
        conn.log(f"atoll-agent: audit log: cannot record {conn.what} ({type(e).__name__}: {e})")
        message = f"audit log: cannot record this request (status {int(outcome.status)})"
        outcome.status, body, close = (
            HTTPStatus.SERVICE_UNAVAILABLE, json_body({"error": message}), True
        )  # fmt: skip
    conn.answer(
        outcome.status, body, close=close, fields=outcome.fields, head_only=head.method == "HEAD"
    )
    return not close


def _open_shell(
    agent: Agent, conn: Connection[Identity], head: RequestHead, route: Route, session: ShellSession
) -> None:
    """Upgrade to the shell protocol, run the session, audit its start and its end."""
    if (
        head.field("upgrade").strip().lower() != (route.upgrade or "").lower()
        or "upgrade" not in head.field("connection").lower()
    ):
        raise ApiError(
            HTTPStatus.UPGRADE_REQUIRED,
            f"{route.path}: needs Connection: Upgrade and Upgrade: {route.upgrade}",
        )
    try:  # the toolbox (or the image asked for) is there, imported now if it was not
        agent.config.shell_runtime.prepare(session.request.image)
    except ShellImageMissing as e:
        raise ApiError(HTTPStatus.NOT_FOUND, f"ops shell: {e}") from e
    except ShellUnavailable as e:
        raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"ops shell: {e}") from e
    agent.shells_ready.wait(60)
    if not agent.shell_slots.acquire(blocking=False):
        raise ApiError(HTTPStatus.CONFLICT, f"{agent.config.max_shells} shells already open")
    request = session.request
    try:
        conn.record(
            what=f"POST {route.path}",
            params={
                "reason": request.reason,
                "ttl": request.ttl,
                "tty": request.tty,
                **({"image": request.image} if request.image else {}),
            },
            result=int(HTTPStatus.SWITCHING_PROTOCOLS),
            session=session.id,
            transcript=str(session.transcript_path),
        )
        conn.send(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            f"Upgrade: {route.upgrade or ''}\r\nX-Atoll-Shell: {session.id}\r\n\r\n".encode()
        )
        conn.sock.settimeout(SHELL_SOCKET_TIMEOUT)

        def audit_end(result: ShellResult) -> None:
            conn.record(
                what="shell end", reason=request.reason, ttl=request.ttl, **result.audit_fields()
            )

        try:
            session.run(conn.sock, on_end=audit_end)
        except Exception as e:  # after the 101 there is no HTTP answer left to give
            conn.record(
                what="shell end",
                session=session.id,
                reason=request.reason,
                ttl=request.ttl,
                end="error",
                problems=[f"{type(e).__name__}: {e}"],
            )
    finally:
        agent.shell_slots.release()


def tls_context(config: AgentConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.cert, config.key)
    ctx.load_verify_locations(config.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if config.crl is not None:
        ctx.load_verify_locations(config.crl)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


class _AgentListener(Listener[Identity]):
    """What both listeners share: the agent's routes and its audit log."""

    agent: Agent

    def record(self, **fields: Any) -> object:
        return self.agent.audit.append(**fields)

    def dispatch(self, conn: Connection[Identity], head: RequestHead) -> bool:
        return serve_request(self.agent, conn, head)


class AgentServer(_AgentListener, socketserver.TCPServer):
    """HTTPS on a TCP address; handshakes in the worker thread so refusals get audited."""

    allow_reuse_address = True
    # socketserver's default backlog is 5: a burst of clients overflowed it and the
    # kernel dropped their SYNs, which came back a second later (p99 over 1 s).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        agent: Agent,
        *,
        limits: HttpLimits = DEFAULT_LIMITS,
        log: Log = log_to_stderr,
    ) -> None:
        self.agent = agent
        self.tls = tls_context(agent.config)
        self.bound(limits, log)
        super().__init__(address, socketserver.BaseRequestHandler)

    def accept_peer(self, request: Any, address: Any) -> tuple[socket.socket, Identity] | None:
        request.settimeout(self.limits.head_seconds)
        # headers and body are two TLS records: with Nagle on, the body waited for
        # the client's delayed ACK of the headers (44 ms per kept-alive request)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            tls = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            reason = getattr(e, "verify_message", "") or getattr(e, "reason", "") or str(e)
            self.record(
                who=f"tls:{address[0]}",
                role=None,
                what="TLS handshake",
                result="refused",
                reason=str(reason),
            )
            return None
        return tls, identity_from_peer(tls.getpeercert())


class UnixAgentServer(_AgentListener, socketserver.UnixStreamServer):
    """The on-node socket: mode 0600 owned by root, so only root reaches it (acts as admin)."""

    def __init__(
        self,
        path: Path,
        agent: Agent,
        *,
        limits: HttpLimits = DEFAULT_LIMITS,
        log: Log = log_to_stderr,
    ) -> None:
        self.agent = agent
        self.bound(limits, log)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            super().__init__(str(path), socketserver.BaseRequestHandler)
        finally:
            os.umask(old)

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)

    def accept_peer(self, request: Any, address: Any) -> tuple[socket.socket, Identity] | None:
        return request, UNIX_ROOT


def serve_in_thread(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="atoll-agent", daemon=True)
    thread.start()
    return thread

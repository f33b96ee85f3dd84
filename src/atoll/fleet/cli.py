"""``atoll fleet``: run the controller and talk to it.

::

    atoll fleet serve --store sqlite:///var/lib/atoll/fleet.db --listen 127.0.0.1:9443
    atoll fleet serve --store etcd://127.0.0.1:2379,127.0.0.1:22379 [--replica NAME] [--lease-ttl 5]
    atoll fleet apply pool.toml        [--server URL]
    atoll fleet status [POOL] [--json] [--server URL]
    atoll fleet status POOL --watch [--until-done]   # reprint on every change
    atoll fleet pause|resume|rollback POOL [--server URL]
    atoll fleet nodes [--selector zone=a] [--json] [--server URL]
    atoll fleet events [--pool POOL] [--node NODE] [--limit N] [--json] [--server URL]
    atoll fleet operator [--kubeconfig PATH]   # as a Kubernetes operator (operator_cli.py)

``serve`` prints one JSON line ``{"listen": "127.0.0.1:PORT", "store": ...,
"replica": ...}`` once it accepts connections (``--listen 127.0.0.1:0`` picks a
free port) and runs until SIGTERM/SIGINT. The other verbs are thin clients of the HTTP API
(:func:`atoll.wire.fleet.request_replicas`, the client the agents use too);
``nodes`` reads the protocol's :class:`~atoll.wire.fleet.NodeRecord`; ``status`` and
``nodes`` show each node's last step failure (step, version, reason, resource) and when
it retries, and the kind of its last restart (soft or full) and why; ``apply`` validates
``pool.toml`` locally first so errors name the file and key.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from atoll.errors import AtollError, InputError
from atoll.fleet.etcd_store import open_replica
from atoll.fleet.operator_cli import nodepool_views, register_operator
from atoll.fleet.pool import load_pool_file, spec_to_dict
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore, store_path
from atoll.fleet.store import Election, FleetStore
from atoll.wire.fleet import (
    Backoff,
    FleetError,
    NodeRecord,
    ProtocolError,
    Restart,
    StepFailure,
    request_replicas,
)

DEFAULT_SERVER = "http://127.0.0.1:9443"


def _listen(raw: str) -> tuple[str, int]:
    host, sep, port = raw.rpartition(":")
    if not sep or host != "127.0.0.1" or not port.isdigit() or int(port) > 65535:
        raise InputError(f"--listen {raw!r}: expected 127.0.0.1:PORT (loopback only)")
    return host, int(port)


def _call(
    args: argparse.Namespace, method: str, path: str, body: Any = None, *, timeout: float = 10.0
) -> Any:
    servers = [u.strip().rstrip("/") for u in args.server.split(",") if u.strip()]
    if not servers:
        raise InputError(f"--server {args.server!r}: expected a controller URL")
    try:
        answer, index = request_replicas(
            method,
            [server + path for server in servers],
            body,
            timeout=timeout,
            backoff=Backoff(attempts=max(3, len(servers) + 1)),
        )
        if index:  # --watch: stay with the replica that answered
            args.server = ",".join(servers[index:] + servers[:index])
        return answer
    except FleetError as e:
        if e.status is not None and 400 <= e.status < 500:
            raise InputError(str(e)) from e
        raise AtollError(str(e)) from e


def _open_store(args: argparse.Namespace) -> tuple[FleetStore, Election | None]:
    """The store ``--store`` names (etcd: with this replica's side of the election)."""
    if args.store.startswith("etcd://"):
        if args.lease_ttl < 2:
            raise InputError(f"--lease-ttl {args.lease_ttl}: etcd grants leases of 2 s or more")
        replica = args.replica or f"{socket.gethostname()}-{os.getpid()}"
        return open_replica(args.store, replica, ttl=args.lease_ttl)
    return SqliteStore(store_path(args.store)), None


def _serve(args: argparse.Namespace) -> int:
    host, port = _listen(args.listen)
    store, election = _open_store(args)
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    try:
        service = FleetService(
            store,
            host,
            port,
            max_in_flight=args.max_in_flight,
            tick=args.tick,
            election=election,
        )
        service.start()
        previous = signal.signal(signal.SIGTERM, _on_signal)
        try:
            bound = service.address
            ready = {
                "listen": f"{bound[0]}:{bound[1]}",
                "store": args.store,
                "replica": service.controller.replica,
            }
            print(json.dumps(ready), flush=True)
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            service.stop()
    finally:
        store.close()
    return 0


def _apply(args: argparse.Namespace) -> int:
    spec = load_pool_file(args.pool_file)
    view = _call(args, "PUT", f"/v1/pools/{spec.name}", spec_to_dict(spec))
    print(json.dumps(view, indent=2) if args.json else f"pool {spec.name}: applied")
    return 0


def rollout_phase(status: dict[str, Any]) -> str:
    """``complete``, ``failed``, ``stalled``, ``paused`` or ``rolling``.

    ``failed``: the failure budget paused the pool, or nothing is left to do but
    some nodes failed (within the budget: they are not retried until a resume).
    ``stalled``: failed nodes that are down hold every reboot slot while others
    wait for one (``stalled_reason``): nothing moves until a resume."""
    total = int(status.get("total") or 0)
    failed = int(status.get("failed") or 0)
    settled = int(status.get("updated") or 0) + int(status.get("held") or 0) + failed
    reason = status.get("paused_reason")
    if total and settled == total and not status.get("updating"):
        return "failed" if failed else "complete"
    if reason and str(reason).startswith("failure budget"):
        return "failed"
    if status.get("stalled_reason"):
        return "stalled"
    if reason:
        return "paused"
    return "rolling"


def _pool_lines(view: dict[str, Any]) -> list[str]:
    spec = view["spec"]["pool"]
    status = view.get("status", {})
    paused = status.get("paused_reason")
    lines = [
        f"pool {spec['name']} -> {spec['version']}: {rollout_phase(status)}: "
        f"updated {status.get('updated')} "
        f"updating {status.get('updating')} pending {status.get('pending')} "
        f"failed {status.get('failed')} held {status.get('held')} of {status.get('total')}"
        f" (unavailable {status.get('unavailable')}/{status.get('max_unavailable')})"
    ]
    controller = view.get("controller") or {}
    if controller.get("replica", "standalone") != "standalone":
        lines.append(f"  controller: {controller['replica']}, leader {controller.get('leader')}")
    if paused:
        lines.append(f"  paused: {paused}")
    stalled = status.get("stalled_reason")
    if stalled:
        lines.append(f"  stalled: {stalled}")
    if view.get("drain_blocked"):
        lines.append(f"  drain blocked: {', '.join(view['drain_blocked'])}")
    for node in view.get("nodes", []):
        reason = f"  {node['reason']}" if node["reason"] else ""
        health = "" if node.get("healthy", True) else " UNHEALTHY"
        lines.append(
            f"  {node['name']:<24} {node['current']} -> {node['desired']} "
            f"{node['phase']}{health}{reason}"
        )
        failure = _view_failure(node)
        if failure is not None:
            lines.append(f"    {failure}")
        restart = _view_restart(node)
        if restart is not None:
            lines.append(f"    {restart}")
    return lines


def restart_line(restart: Restart | None) -> str | None:
    """``last restart: soft into 2.0 at 2026-12-07T07:00:00+00:00 (same kernel and
    arguments)``: which kind of restart a node's last upgrade (or rollback) used, and why."""
    if restart is None:
        return None
    return f"last restart: {restart.kind} into {restart.version} at {restart.at} ({restart.reason})"


def _view_restart(node: dict[str, Any]) -> str | None:
    raw = node.get("restart")
    if raw is None:
        return None
    if isinstance(raw, str):  # the error that names why a Node's annotation is no restart
        return f"last restart: unreadable ({raw})"
    try:
        return restart_line(Restart.from_json(raw))
    except ProtocolError as e:
        return f"last restart: unreadable ({e})"


def _failure_line(failure: StepFailure | None, retry_at: float | None) -> str | None:
    """``last failure: deploy of v2: <reason> (resource: ...); retries at ...``."""
    if failure is None:
        return None
    where = f" (resource: {failure.resource})" if failure.resource else ""
    line = f"last failure: {failure.step} of {failure.version}: {failure.reason}{where}"
    if retry_at is not None:
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(retry_at))
        line += f"; retries at {at}"
    return line


def _view_failure(node: dict[str, Any]) -> str | None:
    raw = node.get("failure")
    if raw is None:
        return None
    try:
        failure = StepFailure.from_json(raw)
    except ProtocolError as e:
        return f"last failure: unreadable ({e})"
    retry_at = node.get("retry_at")
    return _failure_line(failure, float(retry_at) if isinstance(retry_at, int | float) else None)


def _print_pool(view: dict[str, Any]) -> None:
    print("\n".join(_pool_lines(view)))


def _watch(args: argparse.Namespace, read: Callable[[str | None], dict[str, Any]]) -> int:
    """Reprint the pool's view whenever it changes. ``read(etag)`` returns the view: a
    controller's long poll (the view carries its ``etag``), or a cluster's NodePool
    read again every ``--interval`` seconds (no etag)."""
    if not args.pool:
        raise InputError("--watch: name the POOL to watch")
    if not 0 < args.wait <= 60 or not args.interval > 0:
        raise InputError(f"--wait {args.wait:g} / --interval {args.interval:g}: out of range")
    tty = sys.stdout.isatty()
    etag: str | None = None
    shown: list[str] | None = None
    while True:
        view = read(etag)
        lines = [json.dumps(view, sort_keys=True)] if args.json else _pool_lines(view)
        if lines != shown:
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # redraw in place
            elif shown is not None and not args.json:
                print()
            print("\n".join(lines), flush=True)
            shown = lines
        phase = rollout_phase(view.get("status", {}))
        if args.until_done and phase == "complete":
            return 0
        if args.until_done and phase in ("failed", "stalled"):
            raise AtollError(f"pool {args.pool}: {_why_done(view['status'], phase)}")
        etag = view.get("etag")
        if etag is None:
            time.sleep(args.interval)  # a controller without long polls, or a cluster: poll


def _long_poll(args: argparse.Namespace) -> Callable[[str | None], dict[str, Any]]:
    def read(etag: str | None) -> dict[str, Any]:
        path = f"/v1/pools/{args.pool}"
        if etag is not None:
            path += f"?wait={etag}&timeout={args.wait:g}"
        view: dict[str, Any] = _call(args, "GET", path, timeout=args.wait + 10)
        return view

    return read


def _why_done(status: dict[str, Any], phase: str) -> str:
    """Why a watched rollout ended without completing."""
    if phase == "stalled":
        return f"stalled: {status['stalled_reason']}"
    return str(status["paused_reason"] or f"{status['failed']} node(s) failed")


def _status(args: argparse.Namespace) -> int:
    if args.kubeconfig is not None:
        if args.watch:
            return _watch(args, lambda _: nodepool_views(args.kubeconfig, args.pool)[0])
        views = nodepool_views(args.kubeconfig, args.pool)
    elif args.watch:
        return _watch(args, _long_poll(args))
    else:
        views = (
            [_call(args, "GET", f"/v1/pools/{args.pool}")]
            if args.pool
            else _call(args, "GET", "/v1/pools")
        )
    if args.json:
        print(json.dumps(views, indent=2))
    else:
        for view in views:
            _print_pool(view)
    return 0


def _pool_verb(verb: str) -> Any:
    def handler(args: argparse.Namespace) -> int:
        view = _call(args, "POST", f"/v1/pools/{args.pool}/{verb}")
        if args.json:
            print(json.dumps(view, indent=2))
        else:
            _print_pool(view)
        return 0

    return handler


def _nodes(args: argparse.Namespace) -> int:
    selector: dict[str, str] = {}
    for item in args.selector or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--selector {item!r}: expected KEY=VALUE")
        selector[key] = value
    try:
        records = [NodeRecord.from_json(raw) for raw in _call(args, "GET", "/v1/nodes")]
    except ProtocolError as e:
        raise AtollError(f"GET {args.server}/v1/nodes: unexpected answer: {e}") from e
    nodes = [n for n in records if all(n.labels.get(k) == v for k, v in selector.items())]
    if args.json:
        print(json.dumps([n.to_json() for n in nodes], indent=2))
    else:
        for n in nodes:
            labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
            health = "healthy" if n.healthy else "UNHEALTHY"
            print(f"{n.name:<24} {n.current:<12} {n.phase:<10} {health:<9} {labels}")
            failure = _failure_line(n.failure, n.retry_at)
            if failure is not None:
                print(f"  {failure}")
            restart = restart_line(n.restart)
            if restart is not None:
                print(f"  {restart}")
    return 0


def _events(args: argparse.Namespace) -> int:
    if not 0 < args.limit <= 200:
        raise InputError(f"--limit {args.limit}: expected 1..200 (the controller keeps 200)")
    raw = _call(args, "GET", "/v1/events")
    if not isinstance(raw, list):
        raise AtollError(f"GET {args.server}/v1/events: unexpected answer {raw!r}")
    events = [
        e
        for e in raw
        if isinstance(e, dict)
        and (args.pool is None or e.get("pool") == args.pool)
        and (args.node is None or e.get("node") == args.node)
    ][-args.limit :]
    if args.json:
        print(json.dumps(events, indent=2))
        return 0
    for e in events:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(e.get("at") or 0)))
        where = " ".join(str(x) for x in (e.get("pool"), e.get("node")) if x)
        print(f"{at} {e.get('kind', '?'):<12} {where:<24} {e.get('message', '')}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fleet", help="roll OS versions across pools of nodes")
    verbs = p.add_subparsers(dest="fleet_verb", required=True, metavar="VERB")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        v = verbs.add_parser(name, help=help_text)
        v.add_argument(
            "--server",
            default=DEFAULT_SERVER,
            help="controller URL (several replicas: comma-separated)",
        )
        v.add_argument("--json", action="store_true", help="print JSON")
        return v

    serve = verbs.add_parser("serve", help="run the controller")
    serve.add_argument(
        "--store",
        required=True,
        help="sqlite:///path/to/fleet.db, or etcd://host:port[,host:port...] for replicas",
    )
    serve.add_argument(
        "--replica", help="this replica's name in the etcd election (default: host-pid)"
    )
    serve.add_argument(
        "--lease-ttl", type=int, default=5, help="etcd leader lease, seconds (failover time)"
    )
    serve.add_argument("--listen", default="127.0.0.1:9443", help="127.0.0.1:PORT")
    serve.add_argument("--max-in-flight", type=int, default=64, help="requests served at once")
    serve.add_argument("--tick", type=float, default=1.0, help="seconds between plans")
    serve.set_defaults(handler=_serve)

    apply = client("apply", "declare or update a pool from pool.toml")
    apply.add_argument("pool_file", type=Path, metavar="POOL_TOML")
    apply.set_defaults(handler=_apply)

    status = client("status", "per-pool progress and why nodes wait")
    status.add_argument("pool", nargs="?", metavar="POOL")
    status.add_argument(
        "--kubeconfig",
        type=Path,
        help="read the NodePools of a cluster (the operator's) instead of a controller",
    )
    status.add_argument(
        "--watch", action="store_true", help="reprint the pool whenever it changes (Ctrl-C ends)"
    )
    status.add_argument(
        "--until-done",
        action="store_true",
        help="with --watch: exit 0 once the rollout is complete, 1 if it failed",
    )
    status.add_argument(
        "--wait", type=float, default=30.0, help="seconds one long poll may wait (0..60)"
    )
    status.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between polls of a controller without long polls, or of a cluster",
    )
    status.set_defaults(handler=_status)

    for verb, text in (
        ("pause", "pause a pool's rollout"),
        ("resume", "resume a pool (releases the canary, retries failed nodes)"),
        ("rollback", "swap the pool's target back to its previous version"),
    ):
        v = client(verb, text)
        v.add_argument("pool", metavar="POOL")
        v.set_defaults(handler=_pool_verb(verb))

    nodes = client("nodes", "list registered nodes")
    nodes.add_argument("--selector", action="append", metavar="KEY=VALUE")
    nodes.set_defaults(handler=_nodes)

    events = client("events", "the controller's newest events (step failures, grants, pauses)")
    events.add_argument("--pool", metavar="POOL", help="only this pool's events")
    events.add_argument("--node", metavar="NODE", help="only this node's events")
    events.add_argument("--limit", type=int, default=50, help="at most this many (1..200)")
    events.set_defaults(handler=_events)

    register_operator(verbs)  # `operator`: imports kopf only when it runs


__all__ = ["register"]

"""Verb ``atoll node``: operate one node through its agent's API (host side).

Each action is one request of :class:`atoll.ops.client.NodeClient` (mutual
TLS), except ``shell``, an interactive session (:mod:`atoll.ops.shell`).
``settings set KEY=VALUE...`` sends the keys given as one ``PATCH
/v1/settings``; the agent merges them onto the current settings and validates
the result as a whole (all or nothing). A VALUE is parsed as JSON when it is
valid JSON (``'["a","b"]'``, ``3``), else taken as a string. ``logs`` prints
the journal entries one per line (:func:`atoll.wire.logentry.format_entry`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from atoll.errors import InputError
from atoll.ops.client import NodeClient
from atoll.ops.shell import run_shell
from atoll.wire.logentry import format_entry

_DURATION = re.compile(r"(?P<n>[0-9]+)(?P<unit>[smh]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_ttl(text: str) -> int:
    """``90``, ``90s``, ``15m``, ``1h`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InputError(f"--ttl {text!r}: expected seconds or N[smh], e.g. 15m")
    return int(match["n"]) * _UNITS[match["unit"]]


def parse_assignment(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, JSON value or the raw string)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InputError(f"settings set {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="operate one node through its agent API (mutual TLS)")
    p.add_argument("--endpoint", required=True, help="https://HOST:PORT of the agent")
    p.add_argument("--ca", type=Path, required=True, help="the fleet CA certificate")
    p.add_argument("--cert", type=Path, help="your client certificate")
    p.add_argument("--key", type=Path, help="your client key")
    actions = p.add_subparsers(dest="node_verb", metavar="ACTION", required=True)
    actions.add_parser("status", help="version, deployments, uptime")
    settings = actions.add_parser("settings", help="get or set typed settings")
    sv = settings.add_subparsers(dest="settings_verb", metavar="get|set", required=True)
    sv.add_parser("get")
    sset = sv.add_parser("set")
    sset.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    up = actions.add_parser("upgrade", help="stage a new deployment")
    up.add_argument("--to", help="version or commit (default: the channel's latest)")
    up.add_argument("--reboot", action="store_true")
    rb = actions.add_parser("rollback", help="make the previous deployment the default")
    rb.add_argument("--reboot", action="store_true")
    actions.add_parser("reboot")
    logs = actions.add_parser("logs", help="the journal's last lines (role operator)")
    logs.add_argument("unit", nargs="?", help="a systemd unit (default: the whole journal)")
    logs.add_argument("-n", "--lines", type=int, default=100)
    logs.add_argument("--json", action="store_true", help="the entries as JSON")
    shell = actions.add_parser("shell", help="an ops container on the node (role admin, recorded)")
    shell.add_argument("--ttl", default="15m", help="session lifetime: seconds or N[smh] (15m)")
    shell.add_argument("--reason", required=True, help="why (goes into the audit log)")
    shell.add_argument(
        "--image", help="a preloaded image to run instead of the toolbox (diagnosis)"
    )
    audit = actions.add_parser("audit", help="the audit log")
    audit.add_argument("--verify", action="store_true", help="verify the hash chain")
    audit.add_argument("--limit", type=int, default=100)
    p.set_defaults(handler=_run)


def _logs(node: NodeClient, args: argparse.Namespace) -> int:
    query = urlencode({"lines": args.lines, **({"unit": args.unit} if args.unit else {})})
    result = node.request("GET", f"/v1/logs?{query}")
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        for entry in result["entries"]:
            print(format_entry(entry))
    return 0


def _run(args: argparse.Namespace) -> int:
    node = NodeClient(args.endpoint, args.ca, args.cert, args.key)
    verb: str = args.node_verb
    result: Any
    if verb == "status":
        result = node.request("GET", "/v1/status")
    elif verb == "settings" and args.settings_verb == "get":
        result = node.request("GET", "/v1/settings")
    elif verb == "settings":
        change = dict(map(parse_assignment, args.assignments))
        result = node.request("PATCH", "/v1/settings", change)
    elif verb == "upgrade":
        body: dict[str, object] = {"reboot": bool(args.reboot)}
        if args.to:
            body["to"] = args.to
        result = node.request("POST", "/v1/upgrade", body)
    elif verb == "rollback":
        result = node.request("POST", "/v1/rollback", {"reboot": bool(args.reboot)})
    elif verb == "reboot":
        result = node.request("POST", "/v1/reboot", {})
    elif verb == "logs":
        return _logs(node, args)
    elif verb == "shell":
        return run_shell(node, parse_ttl(args.ttl), args.reason, args.image)
    elif args.verify:
        result = node.request("GET", "/v1/audit/verify")
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0 if result.get("ok") else 1
    else:
        result = node.request("GET", f"/v1/audit?limit={int(args.limit)}")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0

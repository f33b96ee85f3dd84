"""Verbs of the publish stage: ``keys``, ``publish``, ``serve``, ``channel``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atoll.errors import InputError
from atoll.progress import reporter_for
from atoll.publish.channels import list_channels, read_unverified
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import DEFAULT_DELTAS, promote, prune, publish, rollback
from atoll.publish.serve import is_loopback, make_server


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="signing keys for published updates")
    keys = p.add_subparsers(dest="keys_verb", metavar="VERB", required=True)
    k = keys.add_parser("init", help="create an Ed25519 key pair")
    k.add_argument("directory", type=Path)
    k.set_defaults(handler=_keys_init)

    p = sub.add_parser("publish", help="sign a commit, make deltas, advance a channel")
    p.add_argument("repo", type=Path, help="the build repository (atoll compose --repo)")
    p.add_argument("ref", help="ref or commit, e.g. atoll/x86_64/minimal")
    p.add_argument("--to", type=Path, required=True, help="the served update directory")
    p.add_argument("--channel", default="stable")
    p.add_argument("--key", type=Path, required=True, help="private key (atoll keys init)")
    p.add_argument("--deltas", type=int, default=DEFAULT_DELTAS, help="from the last N versions")
    p.add_argument("--prune", type=int, metavar="N", help="then keep N versions per channel")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_publish)

    p = sub.add_parser("serve", help="serve an update directory over HTTP")
    p.add_argument("directory", type=Path)
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    p.add_argument("--public", action="store_true", help="allow a non-loopback address")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("channel", help="list, show, promote or roll back channels")
    verbs = p.add_subparsers(dest="channel_verb", metavar="VERB", required=True)
    c = verbs.add_parser("list")
    c.add_argument("--to", type=Path, required=True)
    c.set_defaults(handler=_channel_list)
    c = verbs.add_parser("show")
    c.add_argument("channel")
    c.add_argument("--to", type=Path, required=True)
    c.set_defaults(handler=_channel_show)
    c = verbs.add_parser("promote", help="point TARGET at what SOURCE points to")
    c.add_argument("source")
    c.add_argument("target")
    c.add_argument("--to", type=Path, required=True)
    c.add_argument("--key", type=Path, required=True)
    c.set_defaults(handler=_channel_promote)
    c = verbs.add_parser("rollback", help="signed move back to the previous version")
    c.add_argument("channel")
    c.add_argument("--to", type=Path, required=True)
    c.add_argument("--key", type=Path, required=True)
    c.set_defaults(handler=_channel_rollback)


def _keys_init(args: argparse.Namespace) -> int:
    private, public, key_id = init_keys(args.directory)
    print(f"key {key_id}\n  private {private} (keep it secret)\n  public  {public}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    reporter = reporter_for(json_lines=args.json)
    try:
        result = publish(
            args.repo, args.ref, args.to, args.channel, key, reporter, deltas=args.deltas
        )
        pruned = prune(args.to, args.prune, key, reporter) if args.prune else None
    finally:
        reporter.close()
    summary = {
        "channel": result.channel,
        "commit": result.commit,
        "version": result.version,
        "serial": result.serial,
        "deltas": result.deltas,
        "pruned": pruned,
    }
    if args.json:
        print(json.dumps({"event": "result", "result": summary}, sort_keys=True))
    else:
        print(f"{result.channel} -> {result.version} {result.commit} (serial {result.serial})")
        for delta in result.deltas:
            print(f"  delta {delta[:12]}...->{result.commit[:12]}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--listen {args.listen}: expected HOST:PORT")
    if not is_loopback(host) and not args.public:
        raise InputError(f"--listen {args.listen}: not a loopback address (use --public)")
    if not args.directory.is_dir():
        raise InputError(f"{args.directory}: no such directory")
    server = make_server(args.directory, host, int(port))
    print(f"serving {args.directory} on http://{host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _channel_list(args: argparse.Namespace) -> int:
    for name in list_channels(args.to):
        payload = read_unverified(args.to, name)
        commit = str(payload["commit"])[:12]
        print(f"{name}\t{payload['version']}\t{commit}\tserial {payload['serial']}")
    return 0


def _channel_show(args: argparse.Namespace) -> int:
    payload = read_unverified(args.to, args.channel)
    print(json.dumps(payload, indent=1, sort_keys=True))
    return 0


def _channel_promote(args: argparse.Namespace) -> int:
    reporter = reporter_for()
    try:
        result = promote(args.to, args.source, args.target, load_private_key(args.key), reporter)
    finally:
        reporter.close()
    print(f"{result.channel} -> {result.version} {result.commit} (serial {result.serial})")
    return 0


def _channel_rollback(args: argparse.Namespace) -> int:
    reporter = reporter_for()
    try:
        result = rollback(args.to, args.channel, load_private_key(args.key), reporter)
    finally:
        reporter.close()
    print(
        f"{result.channel} rolled back to {result.version} {result.commit} (serial {result.serial})"
    )
    return 0

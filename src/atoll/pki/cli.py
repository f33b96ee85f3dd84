"""``atoll pki``: create the fleet CA, issue and revoke agent credentials (host side)."""

from __future__ import annotations

import argparse
from pathlib import Path

from atoll.errors import InputError
from atoll.pki import Kind, Role, init, issue, revoke


def _init(args: argparse.Namespace) -> int:
    ca = init(Path(args.dir))
    print(ca)
    return 0


def _issue(args: argparse.Namespace) -> int:
    if (args.client is None) == (args.node is None):
        raise InputError("pki issue: give exactly one of --client NAME or --node NAME")
    if args.client is not None:
        done = issue(Path(args.dir), args.client, kind=Kind.CLIENT, role=args.role)
    else:
        done = issue(Path(args.dir), args.node, kind=Kind.NODE, role=args.role)
    print(f"{done.cert}\n{done.key}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    kind = Kind.NODE if args.node else Kind.CLIENT
    for serial in revoke(Path(args.dir), args.name, kind=kind):
        print(f"revoked {kind.value} {args.name} serial {serial:x}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pki = sub.add_parser("pki", help="the fleet CA and the agent's client/node certificates")
    verbs = pki.add_subparsers(dest="pki_verb", metavar="ACTION", required=True)

    p = verbs.add_parser("init", help="create a CA in a new directory")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=_init)

    p = verbs.add_parser("issue", help="issue a client (with a role) or node certificate")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--client", metavar="NAME")
    p.add_argument("--node", metavar="NAME")
    p.add_argument("--role", type=Role, choices=list(Role), default=None)
    p.set_defaults(handler=_issue)

    p = verbs.add_parser("revoke", help="revoke a name's certificates (rewrites crl.pem)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--node", action="store_true", help="revoke a node certificate")
    p.set_defaults(handler=_revoke)

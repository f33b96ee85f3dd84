"""Verbs of the cluster stage: ``atoll cluster build``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atoll.cache import default_cache
from atoll.cluster.build import build, copy_out
from atoll.process import interrupt_on_sigterm
from atoll.progress import reporter_for


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cluster", help="Kubernetes for atoll nodes: build its binaries")
    verbs = p.add_subparsers(dest="cluster_verb", metavar="VERB", required=True)
    b = verbs.add_parser(
        "build",
        help="build kubelet, kube-apiserver, kube-controller-manager, kube-scheduler and "
        "kubectl at the pinned release (cached by content)",
    )
    b.add_argument("--output", type=Path, help="also copy the five binaries into this directory")
    b.add_argument("--cache", type=Path, help=f"cache directory (default {default_cache()})")
    b.add_argument("--json", action="store_true", help="progress and result as JSON lines")
    b.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    reporter = reporter_for(json_lines=args.json)
    try:
        with interrupt_on_sigterm():
            built = build(reporter, cache=args.cache)
    finally:
        reporter.close()
    if args.output is not None:
        built = copy_out(built, args.output)
    if args.json:
        print(json.dumps({"event": "result", "result": built.as_dict()}, sort_keys=True))
        return 0
    state = " (cached)" if built.from_cache else ""
    print(f"kubernetes {built.version}{state}")
    print(f"  key  {built.key}")
    for name, path in built.binaries.items():
        print(f"  {name:<24} {path}")
    return 0

"""Verbs of the cluster stage: ``atoll cluster build``."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from atoll.cluster.build import build, copy_out, default_cache
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


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job's timeout) ends a build the way Ctrl-C does: go is stopped and the
    partial entry removed. SIGINT gets Python's handler back too: a shell script's
    background job starts with SIGINT ignored (as compose's verb does)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def _build(args: argparse.Namespace) -> int:
    reporter = reporter_for(json_lines=args.json)
    try:
        with _terminate_as_interrupt():
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

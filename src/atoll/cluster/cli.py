"""Verbs of the cluster stage: ``atoll cluster build``, and ``up``/``down``/``status`` of
a local control plane (:mod:`atoll.cluster.up`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atoll.cache import default_cache
from atoll.cluster import up as control_plane
from atoll.cluster.build import build, copy_out
from atoll.process import interrupt_on_sigterm
from atoll.progress import reporter_for

DIR_HELP = f"the cluster's directory (default {control_plane.DEFAULT_DIR})"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cluster",
        help="Kubernetes for atoll nodes: build its binaries, run a local control plane",
    )
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

    u = verbs.add_parser(
        "up",
        help="start etcd, kube-apiserver, kube-controller-manager and kube-scheduler on "
        "127.0.0.1 (PKI, kubeconfig and bootstrap token set up on first use)",
    )
    u.add_argument("--dir", type=Path, default=control_plane.DEFAULT_DIR, help=DIR_HELP)
    u.add_argument("--cache", type=Path, help=f"cache directory (default {default_cache()})")
    u.add_argument("--etcd", help="the etcd binary (default: etcd on PATH, Debian's etcd-server)")
    u.add_argument(
        "--timeout",
        type=float,
        default=control_plane.READY_TIMEOUT,
        help="seconds each component has to become healthy (default %(default)g)",
    )
    u.add_argument(
        "--apiserver-arg",
        metavar="--NAME=VALUE",
        action="append",
        default=[],
        help="an extra kube-apiserver flag, after atoll's (repeatable), "
        "e.g. --apiserver-arg=--max-requests-inflight=10",
    )
    u.set_defaults(handler=_up)
    d = verbs.add_parser("down", help="stop the processes `atoll cluster up` started")
    d.add_argument("--dir", type=Path, default=control_plane.DEFAULT_DIR, help=DIR_HELP)
    d.set_defaults(handler=_down)
    s = verbs.add_parser("status", help="what runs, whether it is healthy, its memory")
    s.add_argument("--dir", type=Path, default=control_plane.DEFAULT_DIR, help=DIR_HELP)
    s.add_argument("--json", action="store_true", help="one JSON document")
    s.set_defaults(handler=_status)


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


def _up(args: argparse.Namespace) -> int:
    reporter = reporter_for(json_lines=False)
    try:
        with interrupt_on_sigterm():
            built = build(reporter, cache=args.cache)
            plane = control_plane.up(
                args.dir,
                built.binaries,
                etcd=args.etcd,
                timeout=args.timeout,
                apiserver_args=args.apiserver_arg,
            )
    finally:
        reporter.close()
    layout = plane.layout
    print(f"cluster up in {plane.directory}")
    print(f"  server      {plane.server}")
    print(f"  kubeconfig  {plane.kubeconfig}")
    print(f"  join file   {plane.join_file} (guests: {plane.config.guest_server})")
    print(f"  logs        {layout.root / 'logs'}")
    print(f"  kubectl     KUBECONFIG={plane.kubeconfig} {built.binaries['kubectl']} get nodes")
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = control_plane.down(args.dir)
    if not stopped:
        print(f"nothing running in {args.dir}")
    for recorded in stopped:
        print(f"stopped {recorded.component} (pid {recorded.pid})")
    return 0


def _status(args: argparse.Namespace) -> int:
    components = control_plane.status(args.dir)
    if args.json:
        print(json.dumps([vars(c) for c in components], sort_keys=True))
    else:
        for c in components:
            state = "healthy" if c.healthy else "running, not healthy" if c.running else "stopped"
            memory = f"  {c.rss_kib // 1024} MiB" if c.rss_kib is not None else ""
            pid = f"pid {c.pid}" if c.running else ""
            print(f"{c.component:<24} {state:<21} {pid:<10}{memory}".rstrip())
    return 0 if all(c.healthy for c in components) else 1

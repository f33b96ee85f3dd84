"""Verbs of the compose stage: ``atoll compose``, ``atoll inspect``, ``atoll oci``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from atoll.cache import default_cache
from atoll.compose.inspect import inspect
from atoll.compose.oci import PAUSE_REFERENCE, write_busybox_archive, write_pause_archive
from atoll.compose.pipeline import compose
from atoll.durable import write_atomic
from atoll.process import interrupt_on_sigterm
from atoll.progress import reporter_for

# What `atoll oci KIND` writes by default: the reference, and the writer.
OCI_DEFAULTS: dict[str, tuple[str, Callable[[Path, str], str]]] = {
    "busybox": ("docker.io/library/busybox:atoll", write_busybox_archive),
    "pause": (PAUSE_REFERENCE, write_pause_archive),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("compose", help="compose an image from a manifest into an ostree repo")
    p.add_argument("manifest", type=Path, help="the image manifest (TOML)")
    p.add_argument("--repo", type=Path, required=True, help="ostree repository (created if new)")
    p.add_argument("--report", type=Path, help="write a JSON report with the SBOM here")
    p.add_argument("--cache", type=Path, help=f"cache directory (default {default_cache()})")
    p.add_argument(
        "--no-cache", action="store_true", help="rebuild the root filesystem and recommit"
    )
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    p.add_argument(
        "--allow-source-outside",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="also take [[files]].source, and [[containers.preload]].archive without the OCI "
        "archive check, from DIR (repeatable); by default a source must lie in the directory "
        "of the manifest that names it",
    )
    p.set_defaults(handler=_compose)

    p = sub.add_parser("inspect", help="describe a composed commit and what changed")
    p.add_argument("repo", type=Path)
    p.add_argument("ref", help="ref or commit, e.g. atoll/x86_64/minimal")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--packages", action="store_true", help="list every package")
    p.set_defaults(handler=_inspect)

    p = sub.add_parser("oci", help="build a local OCI archive to preload into images")
    p.add_argument(
        "kind", choices=sorted(OCI_DEFAULTS), help="busybox, or atoll's pause (a pod's sandbox)"
    )
    p.add_argument("-o", "--output", type=Path, help="archive (default build/images/KIND.oci.tar)")
    p.add_argument("--reference", help="image reference (default: by kind)")
    p.set_defaults(handler=_oci)


def _compose(args: argparse.Namespace) -> int:
    reporter = reporter_for(json_lines=args.json)
    try:
        with interrupt_on_sigterm():
            result = compose(
                args.manifest,
                args.repo,
                reporter,
                cache=args.cache,
                reuse=not args.no_cache,
                allowed_sources=tuple(args.allow_source_outside),
            )
    finally:
        reporter.close()
    report = result.report()
    if args.report:
        write_atomic(args.report, json.dumps(report, indent=1, sort_keys=True) + "\n")
    if args.json:
        summary = {k: v for k, v in report.items() if k != "sbom"}
        print(json.dumps({"event": "result", "result": summary}, sort_keys=True))
    else:
        state = " (unchanged)" if result.unchanged else ""
        print(f"{result.ref} {result.commit}{state}")
        print(f"  version   {result.version}")
        print(f"  kernel    {result.kernel}")
        print(f"  packages  {result.packages} (+{result.packages_removed} used only to build)")
        print(f"  size      {result.size / 1e6:.1f} MB")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    found = inspect(args.repo, args.ref)
    if args.json:
        print(json.dumps(found.as_dict(), indent=1, sort_keys=True))
        return 0
    meta = found.metadata
    out = sys.stdout
    print(f"commit    {found.commit}", file=out)
    print(f"version   {meta.get('version', '?')}  ({found.date})", file=out)
    print(f"content   {found.content_checksum}", file=out)
    print(f"manifest  {meta.get('atoll.manifest-digest', '?')}", file=out)
    print(f"kernel    {meta.get('atoll.kernel', '?')}  args: {meta.get('atoll.kargs', '')}")
    size = int(str(meta.get("atoll.size", "0")))
    print(f"packages  {len(found.packages)}  size {size / 1e6:.1f} MB", file=out)
    if args.packages:
        for package in found.packages:
            print(f"  {package['name']} {package['version']}", file=out)
    if found.parent is None:
        print("parent    none", file=out)
        return 0
    print(f"parent    {found.parent}", file=out)
    print(
        f"changed   {len(found.package_changes)} packages, files +{found.files_added} "
        f"-{found.files_removed} ~{found.files_modified}",
        file=out,
    )
    for change in found.package_changes:
        print(f"  {change.name}: {change.old or '(new)'} -> {change.new or '(removed)'}")
    return 0


def _oci(args: argparse.Namespace) -> int:
    reference, write = OCI_DEFAULTS[args.kind]
    reference = args.reference or reference
    output = args.output or Path(f"build/images/{args.kind}.oci.tar")
    digest = write(output, reference)
    print(f"{output} {reference} {digest}")
    return 0

"""The ``atoll`` command: one verb per stage of the data's journey.

Each stage owns its verbs in ``atoll/<stage>/cli.py``, which exposes
``register(subparsers)``. A verb's handler takes the parsed arguments and
returns an exit code. This module only wires them up and is the one place
where errors become exit codes (0 ok, 1 failed, 2 bad input, 130 interrupted).

A reader of stdout that goes away (``atoll ... | head``) ends the command
quietly with 1: no traceback, and no "Exception ignored" from the
interpreter's last flush of stdout. Modules wrap their own sockets' errors, so
a :class:`BrokenPipeError` that reaches :func:`main` is stdout's.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from atoll import __version__
from atoll.errors import EXIT_FAILED, EXIT_INTERRUPTED, AtollError

# The stages that contribute verbs, in the order of the data's journey. Each
# has ``atoll/<stage>/cli.py``; ``demo`` and ``bench`` string them together.
# ``pki`` (the fleet CA) and ``ops`` (the ``atoll node`` client) are host-side tooling;
# ``cluster`` builds Kubernetes for the nodes.
# The agent has no verbs (it runs on the node) and the host never imports it.
STAGES: tuple[str, ...] = ("compose", "publish", "disk", "boot", "fleet", "pki", "ops", "cluster")

Handler = Callable[[argparse.Namespace], int]


class _StageCli(Protocol):
    def register(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atoll",
        description="Build, boot, operate and upgrade atoll container hosts.",
    )
    parser.add_argument("--version", action="version", version=f"atoll {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="log every external command as a shell line"
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for stage in STAGES:
        name = f"atoll.{stage}.cli"
        if importlib.util.find_spec(f"atoll.{stage}") is None or (
            importlib.util.find_spec(name) is None
        ):
            continue  # a stage that does not exist (or has no verbs) in this tree
        module = cast(_StageCli, importlib.import_module(name))
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; its exit code, or the exit code of the error it raised.

    argparse exits by itself (:class:`SystemExit`) for ``--help``, ``--version``
    and usage errors (2). Errors that are not :class:`AtollError` are bugs and
    keep their traceback.
    """
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
    except SystemExit:
        _flush_stdout()  # --help or --version into a closed pipe: quiet too
        raise
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_FAILED
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(args.debug) or os.environ.get("ATOLL_DEBUG") == "1"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = cast(Handler, args.handler)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("atoll: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except AtollError as e:
        print(f"atoll {args.verb}: {e}", file=sys.stderr)
        return e.exit_code


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()


def _discard_stdout() -> None:
    """Point stdout at /dev/null: its reader has gone.

    What is still buffered would fail again, with an "Exception ignored"
    message, when the interpreter flushes stdout at exit.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file (a test's capture): the interpreter flushes nothing at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``atoll`` command: one verb per stage of the data's journey.

Each stage owns its verbs in ``atoll/<stage>/cli.py``, which exposes
``register(subparsers)``. A verb's handler takes the parsed arguments and
returns an exit code. This module only wires them up and is the one place
where errors become exit codes (0 ok, 1 failed, 2 bad input, 130 interrupted).
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
# ``pki`` (the fleet CA) and ``ops`` (the ``atoll node`` client) are host-side tooling.
STAGES: tuple[str, ...] = ("compose", "publish", "disk", "boot", "agent", "fleet", "pki", "ops")

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
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())

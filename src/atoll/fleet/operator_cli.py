"""``atoll fleet operator``: run the fleet controller as a Kubernetes operator.

Kept apart from :mod:`atoll.fleet.cli` so that the CLI imports kopf (the
``kubernetes`` extra) only when this verb runs: ``atoll fleet serve`` and the
other verbs work without it.

::

    atoll fleet operator [--kubeconfig PATH] [--interval 5] [--peering NAME]

Credentials: the in-cluster service account when running in a Pod, else the
kubeconfig (``--kubeconfig``, ``$KUBECONFIG`` or ``~/.kube/config``). NodePools
and Nodes are cluster-scoped, so there is no ``--namespace``. Before kopf
starts, the CRD and every permission the operator uses are checked
(:mod:`atoll.fleet.preflight`): one missing exits 1 naming the identity and
each missing permission. Runs until SIGTERM/SIGINT (kopf handles both and
stops gracefully).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from atoll.errors import AtollError, InputError


def _operator(args: argparse.Namespace) -> int:
    try:
        import kopf  # noqa: PLC0415

        from atoll.fleet.operator import (  # noqa: PLC0415
            OperatorConfig,
            default_login,
            run_operator,
        )
    except ImportError as e:  # kopf is the optional `kubernetes` extra
        raise AtollError(
            f"atoll fleet operator needs kopf: {e}",
            hint="pip install 'atoll[kubernetes]'",
        ) from e
    if args.interval <= 0:
        raise InputError(f"--interval {args.interval}: expected seconds > 0")
    if args.kubeconfig is not None:
        if not args.kubeconfig.is_file():
            raise InputError(f"--kubeconfig {args.kubeconfig}: no such file")
        # kopf's kubeconfig login reads $KUBECONFIG (this process only).
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    default_login(kopf.OperatorSettings())  # fail now on missing or broken credentials
    asyncio.run(run_operator(OperatorConfig(interval=args.interval), peering=args.peering))
    return 0


def register_operator(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``operator`` to ``atoll fleet``'s verbs."""
    p = verbs.add_parser("operator", help="run the rollout controller as a Kubernetes operator")
    p.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    p.add_argument(
        "--interval", type=float, default=5.0, help="seconds between plans of each NodePool"
    )
    p.add_argument(
        "--peering",
        metavar="NAME",
        help="run several replicas, one active, through kopf's ClusterKopfPeering NAME "
        "(default: standalone, a single replica)",
    )
    p.set_defaults(handler=_operator)

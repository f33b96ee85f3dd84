"""``atoll fleet operator``: run the fleet controller as a Kubernetes operator.

Kept apart from :mod:`atoll.fleet.cli` so that the CLI imports kopf (the
``kubernetes`` extra) only when this verb runs, or ``atoll fleet status
--kubeconfig`` reads a cluster's NodePools (:func:`nodepool_views`):
``atoll fleet serve`` and the other verbs work without it.

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
from typing import Any

from atoll.errors import AtollError, InputError


def _operator(args: argparse.Namespace) -> int:
    kopf, operator = _kopf()
    if args.interval <= 0:
        raise InputError(f"--interval {args.interval}: expected seconds > 0")
    if args.kubeconfig is not None:
        if not args.kubeconfig.is_file():
            raise InputError(f"--kubeconfig {args.kubeconfig}: no such file")
        # kopf's kubeconfig login reads $KUBECONFIG (this process only).
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    operator.default_login(kopf.OperatorSettings())  # fail now on missing or broken credentials
    config = operator.OperatorConfig(interval=args.interval)
    asyncio.run(operator.run_operator(config, peering=args.peering))
    return 0


def nodepool_views(kubeconfig: Path, pool: str | None) -> list[dict[str, Any]]:
    """``atoll fleet status --kubeconfig``: the cluster's NodePools (one, or all) as pool
    views (:func:`atoll.fleet.nodepool.nodepool_view`) with their Nodes (each one's
    last restart), read with the kubeconfig's identity (without the right to list
    Nodes: the pools' waiting nodes only); :class:`InputError` naming the pool when
    it does not exist."""
    kopf, operator = _kopf()
    from atoll.fleet.kube import KubeApi, KubeError  # noqa: PLC0415 - kopf and aiohttp
    from atoll.fleet.nodepool import nodepool_view  # noqa: PLC0415

    if not kubeconfig.is_file():
        raise InputError(f"--kubeconfig {kubeconfig}: no such file")
    os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf's kubeconfig login reads it
    info = operator.default_login(kopf.OperatorSettings())

    async def listed() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        api = KubeApi(info)
        try:
            pools = await api.list_pools()
            try:
                nodes = await api.list_nodes()
            except KubeError as e:
                if e.status != 403:
                    raise
                nodes = []  # an identity that may read NodePools only: their waiting nodes
            return pools, nodes
        finally:
            await api.close()

    found, nodes = asyncio.run(listed())
    pools = sorted(found, key=lambda o: str(o["metadata"]["name"]))
    if pool is not None:
        pools = [o for o in pools if o["metadata"]["name"] == pool]
        if not pools:
            raise InputError(f"NodePool {pool!r}: not found in the cluster of {kubeconfig}")
    return [nodepool_view(o, nodes) for o in pools]


def _kopf() -> tuple[Any, Any]:
    """kopf and the operator module, or an error that says how to get kopf."""
    try:
        import kopf  # noqa: PLC0415

        from atoll.fleet import operator  # noqa: PLC0415
    except ImportError as e:  # kopf is the optional `kubernetes` extra
        raise AtollError(
            f"atoll fleet on a cluster needs kopf: {e}", hint="pip install 'atoll[kubernetes]'"
        ) from e
    return kopf, operator


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

"""``python3 -m atoll.agent``: the node daemon (HTTPS with mutual TLS + a root-only Unix socket).

Credentials are read from ``--tls-dir`` (default ``/etc/atoll/agent``):
``node.crt``, ``node.key``, ``ca.crt`` and optionally ``crl.pem``. Without
them only the Unix socket serves (a node not yet enrolled is still operable
on its console). Readiness is signalled with ``sd_notify(READY=1)`` so the
unit can be ``Type=notify`` and the ready marker ordered after it.

After READY the daemon starts :class:`atoll.agent.health.Monitor` in a thread
(not in ``--record-commands`` dry runs): it settles a pending upgrade's trial
(confirm, or roll back and reboot) and then writes the health record every
``recheck_seconds``. New default boot entries are synced onto the ESP with a
boot counter (``BOOT_TRIES``), which the monitor removes once a UEFI boot is
healthy.

Every program the daemon runs goes through :mod:`atoll.agent.command` with a
timeout: ``systemctl try-restart`` for settings (``RESTART_TIMEOUT``), and the
deployments' ``ostree admin`` and ``systemctl reboot`` with the timeouts of
:mod:`atoll.agent.deployments`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from atoll.agent import bootentries, command, health, softreboot
from atoll.agent.deployments import CommandRunner, Deployments, SyncHook
from atoll.agent.server import Agent, AgentConfig, AgentServer, UnixAgentServer, serve_in_thread
from atoll.agent.settings import Runner

if TYPE_CHECKING:
    from atoll.agent import kubenode

DEFAULT_PORT = 7443
# Tries systemd-boot gives a new default entry before it boots the previous one.
BOOT_TRIES = 3
# systemd-boot sets this EFI variable when it boots an entry with a boot counter.
BOOT_COUNT_VAR = Path(
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
)
# Seconds a settings change's `systemctl try-restart UNIT` may take (it waits for the job).
RESTART_TIMEOUT = 120.0


def run_command(argv: Sequence[str]) -> None:
    """The settings' runner: raises :class:`atoll.agent.command.CommandError` on failure."""
    command.run(argv, timeout=RESTART_TIMEOUT)


def _notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), address)


def counting_sync(commands: CommandRunner) -> SyncHook:
    """The ESP sync after a deploy: a default that has not booted yet gets a boot counter.

    After a pending deployment is removed the default is the running one,
    known to boot: no counter.
    """

    def sync() -> object:
        first = next(iter(Deployments(commands, lambda: None).status()), None)
        counted = first is not None and not first.booted
        return bootentries.sync_node(tries=BOOT_TRIES if counted else None)

    return sync


def bless_if_counted() -> str | None:
    """Drop the booted entry's boot counter, when systemd-boot counted this boot.

    After a soft-reboot the firmware booted another entry than the deployment
    that runs: the entry blessed is the one of the deployment the agent switched
    into (:mod:`atoll.agent.softreboot`'s record in /run), whose counter the
    firmware never consumed."""
    efi = Path("/sys/firmware/efi")
    if not efi.exists():
        return None  # direct kernel boot: no boot loader counts anything
    soft = softreboot.read_soft_record()
    if soft is not None:
        return bootentries.bless_node(ostree=soft.ostree)
    efivars = efi / "efivars"
    if efivars.is_dir() and any(efivars.iterdir()) and not BOOT_COUNT_VAR.exists():
        return None  # efivarfs is mounted and says this entry has no counter
    return bootentries.bless_node()


def _log(message: str) -> None:
    print(f"atoll-agent: {message}", file=sys.stderr)


def _recover_from_a_soft_reboot_that_did_not_switch() -> bool:
    """A soft-reboot that left systemd in the old root without /sysroot: reboot fully
    (:func:`atoll.agent.softreboot.switch_failed`). True when a reboot was asked for."""
    failed = softreboot.switch_failed()
    if failed is None:
        return False
    _log(
        f"the soft-reboot into {failed.into_commit[:12]} did not switch root "
        "(no sysroot repository under /sysroot): rebooting fully"
    )
    try:
        command.run(["systemctl", "reboot"], timeout=softreboot.SOFT_REBOOT_TIMEOUT)
    except command.CommandError as e:
        _log(f"reboot: {e}")
    return True


def start_monitor(
    root: Path,
    deployments: Deployments,
    agent: Agent,
    socket_path: Path,
    stop: threading.Event,
    decided: threading.Event,
) -> threading.Thread | None:
    if _recover_from_a_soft_reboot_that_did_not_switch():
        return None
    try:
        config = health.load_config(root)
    except health.HealthConfigError as e:
        print(f"atoll-agent: {e}; using the defaults", file=sys.stderr)
        config = health.HealthConfig()
    monitor = health.Monitor(
        root=root,
        deployments=deployments,
        checks=health.Checker(root, health.run_probe, config, socket_path),
        config=config,
        clock=health.EventClock(stop),
        record=agent.audit.append,
        bless=bless_if_counted,
        restart=softreboot.Restarter(deployments.run, root=root, log=_log).restart,
        stop=stop,
        decided=decided,
    )
    thread = threading.Thread(target=monitor.run_forever, name="atoll-health", daemon=True)
    thread.start()
    return thread


def start_update_loop(
    root: Path,
    deployments: Deployments,
    agent: Agent,
    stop: threading.Event,
    after: threading.Event,
    publisher: kubenode.Publisher,
) -> None:
    """The fleet/update loop, imported only now: it brings the HTTP client (urllib,
    http.client, email), about a third of the agent's imports, which nothing
    before READY needs (seconds under TCG, on the path to agent-ready). On a
    cluster it reports through ``publisher``, the one writer of the Node's state."""
    from atoll.agent import update_loop  # noqa: PLC0415 - not needed before READY

    update_loop.start(
        deployments, stop, root, after=after, record=agent.audit.append, publisher=publisher
    )


def start_node_publisher(
    root: Path, deployments: Deployments, stop: threading.Event
) -> kubenode.Publisher:
    """The OS state on the node's Kubernetes Node (:mod:`atoll.agent.kubenode`), and the
    join data's verdict until the kubelet has joined; idle on a node without join data.
    Imported after READY, like the update loop."""
    from atoll.agent import kubenode, update_loop  # noqa: PLC0415 - not needed before READY
    from atoll.agent.deployments import DeploymentError  # noqa: PLC0415
    from atoll.wire.kubenode import NodeState  # noqa: PLC0415

    def state() -> NodeState | None:
        try:
            found = [d.as_dict() for d in deployments.status()]
        except DeploymentError:
            found = []  # said by the API and the health monitor already
        booted = next((d for d in found if d.get("booted")), None)
        heard = update_loop.health_facts(root, booted["checksum"] if booted else None)
        facts = kubenode.Facts(heard.healthy, heard.unhealthy, heard.rolled_back_from)
        restart = update_loop.last_restart(root)
        return kubenode.node_state(found, health.read_record(root), facts, restart)

    def log(message: str) -> None:
        print(f"atoll-agent: {message}", file=sys.stderr)

    publisher = kubenode.Publisher(root, state, log=log)
    threading.Thread(
        target=publisher.run_forever, args=(stop,), name="atoll-kubernetes-node", daemon=True
    ).start()
    # Until the kubelet has joined: does the join data work? (GET /v1/status says.)
    watch = kubenode.JoinWatch(root, log=log)
    threading.Thread(
        target=watch.run_forever, args=(stop,), name="atoll-kubernetes-join", daemon=True
    ).start()
    return publisher


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atoll-agent")
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument("--tls-dir", type=Path, default=Path("/etc/atoll/agent"))
    # The node's API is meant to be reached from the network (mTLS guards it).
    parser.add_argument("--listen", default="0.0.0.0")  # noqa: S104
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--socket", type=Path, default=Path("/run/atoll/agent.sock"))
    parser.add_argument("--audit", type=Path, default=Path("/var/lib/atoll/audit.jsonl"))
    parser.add_argument(
        "--record-commands",
        type=Path,
        metavar="FILE",
        help="append commands (systemctl, ostree admin, the boot entries sync) to FILE "
        "instead of running them (tests, dry runs: nothing on the host is touched)",
    )
    args = parser.parse_args(argv)
    runner: Runner = run_command
    commands: CommandRunner = command.output
    sync: SyncHook = counting_sync(commands)
    if args.record_commands is not None:
        record: Path = args.record_commands

        def runner(argv: Sequence[str]) -> None:
            with record.open("a") as f:
                f.write(json.dumps(list(argv)) + "\n")

        def commands(argv: Sequence[str], *, timeout: float) -> str:
            runner(argv)
            return ""  # `ostree admin status` with no deployments

        def sync() -> None:
            runner(["atoll.agent.bootentries", "sync_node"])

    tls: Path = args.tls_dir
    crl = tls / "crl.pem"
    config = AgentConfig(
        root=args.root,
        audit_path=args.audit,
        cert=tls / "node.crt",
        key=tls / "node.key",
        ca=tls / "ca.crt",
        crl=crl if crl.exists() else None,
        runner=runner,
        commands=commands,
        sync=sync,
    )
    agent = Agent(config)
    if args.record_commands is None:
        # Ops containers an earlier agent left (killed mid-session) go before new ones start.
        agent.shells_ready.clear()
        threading.Thread(target=agent.reap_shells, name="atoll-shell-reaper", daemon=True).start()
    servers: list[UnixAgentServer | AgentServer] = [UnixAgentServer(args.socket, agent)]
    if config.cert.exists() and config.key.exists() and config.ca.exists():
        servers.append(AgentServer((args.listen, args.port), agent))
    else:
        print(f"atoll-agent: no credentials in {tls}: Unix socket only", file=sys.stderr)
    for server in servers:
        serve_in_thread(server)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _notify("READY=1")
    if args.record_commands is None:
        # Never in a dry run: the health monitor (may roll back and reboot) and
        # the fleet/update loop (atoll.agent.update_loop, only when configured).
        deployments = agent.deployments  # one lock for the API, the monitor and the loop
        # The update loop starts once the monitor has settled this boot's marker.
        decided = threading.Event()
        start_monitor(args.root, deployments, agent, args.socket, stop, decided)
        publisher = start_node_publisher(args.root, deployments, stop)
        start_update_loop(args.root, deployments, agent, stop, decided, publisher)
    print(f"atoll-agent: serving on {args.socket} and port {args.port}", file=sys.stderr)
    stop.wait()
    _notify("STOPPING=1")
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

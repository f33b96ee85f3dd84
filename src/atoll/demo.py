"""The demo without Kubernetes (``python -m atoll.demo --standalone``): atoll's job with
the standalone fleet controller, step by step, on real nodes. ``make demo`` runs the
same story on a cluster, through the operator (:mod:`atoll.demo_cluster`, the default
of :func:`main`); the steps both share live here.

1. compose the default image v1, a v2 that adds a few packages, and a broken
   build of v2 (the same version plus a unit that always fails);
2. sign and publish: channel ``stable`` gets v1 then v2, channel ``edge`` v1
   then the broken v2; measure what a node on v1 downloads for v2 (the static
   delta) against a full pull;
3. start the update server and the fleet controller (embedded SQLite store)
   on 127.0.0.1;
4. create a CA, a certificate for every node and an admin client; build one
   v1 disk and boot three nodes from it under qemu (UEFI, network restricted,
   each writing to its own overlay), each provisioned by its first-boot user
   data (host name, controller, update server and channel, the trusted update
   key, the agent's credentials); they register with the controller, and
   node-1 runs a container from the preloaded image without any pull;
5. apply a pool v1 -> v2 with maxUnavailable 1: each node's agent pulls and
   verifies v2, deploys it beside v1 and reboots when the controller grants
   it. node-2 follows ``edge``: it boots the broken build, fails its health
   trial, rolls itself back and reports it, and the pool pauses itself;
   ``atoll fleet status`` says why; the operator publishes the good build to
   ``edge`` and resumes; the pool finishes;
   (before the rollout node-1's operator changes a sysctl through the
   node's API; it is still set after the upgrade);
6. show node-2's audit trail through its API (mutual TLS) and verify its chain;
7. print a summary and shut everything down, also on Ctrl-C.

Each step uses the stages' public Python API (what the ``atoll`` command
does). Under TCG (no KVM) a boot takes one to two minutes and the whole demo
about 15 minutes on 2 cores (25 with cold caches); with KVM it is several
times faster. All files go under ``build/demo``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.boot.runner import BootFailed, BootSpec, Firmware, Machine
from atoll.cli import main as atoll_main
from atoll.compose import ComposeResult, compose
from atoll.compose.oci import write_busybox_archive
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.errors import AtollError, Interrupted
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.ops.client import NodeClient
from atoll.pki import Kind, Role
from atoll.pki import init as pki_init
from atoll.pki import issue as pki_issue
from atoll.progress import Reporter, reporter_for
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish, pull_verified
from atoll.publish.serve import UpdateServer, serve_in_thread, url_of
from atoll.tools import ostree
from atoll.tools.qemu import HOST_SERVICES_ADDRESS, HostService
from atoll.wire.channel import load_trusted_keys
from atoll.wire.fleet import FleetError, NodeRecord, RebootPolicy, request_json

CHECKOUT = Path(__file__).resolve().parents[2]
EXAMPLES = CHECKOUT / "examples"
NODES = ("node-1", "node-2", "node-3")
BROKEN = "node-2"  # follows the "edge" channel, where v2 is the broken build
CONTROLLER_PORT = 9443  # as the nodes see the host's services (HOST_SERVICES_ADDRESS)
UPDATES_PORT = 8080
AGENT_PORT = 7443
BOOT_TIMEOUT = 900.0  # three TCG guests share two cores
ROLLOUT_TIMEOUT = 2400.0
# What the console shows of a node's agent: "[  12.3] python3[200]: atoll-agent: ..."
AGENT_LINE = re.compile(r"atoll-agent: (.*)$")
QUIET = ("serving on", "no credentials")
# Set on node-1 through its API before the rollout; still there after it.
SETTING = {"kernel.sysctls": {"vm.swappiness": "10"}}


@dataclass
class Summary:
    rows: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))

    def render(self) -> str:
        width = max((len(n) for n, _ in self.rows), default=10)
        lines = ["", "atoll demo summary", "-" * (width + 50)]
        lines += [f"{name.ljust(width)}  {value}" for name, value in self.rows]
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines)


@dataclass(frozen=True)
class Builds:
    repo: Path
    v1: ComposeResult
    v2: ComposeResult
    broken: ComposeResult


@dataclass
class Node:
    name: str
    channel: str
    vm: Machine
    ready_seconds: float | None = None


@dataclass
class Rollout:
    """What the demo saw of the rollout (the test in tests/vm checks it)."""

    paused_reason: str = ""
    final: dict[str, Any] = field(default_factory=dict)
    max_rebooting: int = 0  # the most nodes the controller had rebooting at once
    timeline: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """Everything a run of the demo produced, for a caller to check."""

    builds: Builds
    summary: Summary
    rollout: Rollout
    audit: list[dict[str, Any]]  # node-2's records, through its API
    audit_verdict: Any
    settings_kept: Any  # node-1's kernel.sysctls after the upgrade (SETTING's value)
    consoles: dict[str, str]  # node name -> its whole console (every boot)
    reboots: dict[str, int]  # node name -> guest reboots (qemu powered on again)


def _last_bench() -> dict[str, Any]:
    """The figures of the last `make bench` (docs/benchmarks.json), if there is one."""
    raw = CHECKOUT / "docs" / "benchmarks.json"
    if not raw.exists():
        return {}
    data = json.loads(raw.read_text())
    results = data.get("results", {})
    return {
        "compose": results.get("compose", {}).get("figures", {}),
        "boot": results.get("boot", {}).get("figures", {}),
        "date": data.get("machine", {}).get("date", "?"),
    }


def step_compose(
    reporter: Reporter,
    summary: Summary,
    workdir: Path,
    cache: Path | None = None,
    source_date_epoch: int | None = None,
) -> Builds:
    write_busybox_archive(
        CHECKOUT / "build/images/busybox.oci.tar", "docker.io/library/busybox:atoll"
    )
    builds = compose_builds(
        reporter, workdir / "repo", ("minimal.toml", "minimal-v2.toml", "minimal-v2-broken.toml"),
        cache, source_date_epoch,
    )  # fmt: skip
    v1, v2, broken = builds.v1, builds.v2, builds.broken
    summary.add("image v1", f"{v1.ref} {v1.version} {v1.commit[:12]}")
    summary.add("image v2", f"{v2.version} {v2.commit[:12]} (+conntrack)")
    summary.add("broken v2", f"{broken.version} {broken.commit[:12]} (+a unit that fails)")
    bench = _last_bench()
    packages = f"{v1.packages} packages, {v1.size / 1e6:.0f} MB"
    figures = bench.get("compose", {})
    if figures:
        packages += (
            f"  vs conventional Debian host {figures.get('baseline packages')} packages, "
            f"{figures.get('baseline size (MB)')} MB (make bench, {bench['date']})"
        )
    summary.add("image size", packages)
    return builds


def compose_builds(
    reporter: Reporter,
    repo: Path,
    manifests: tuple[str, str, str],
    cache: Path | None,
    source_date_epoch: int | None,
) -> Builds:
    """Compose v1, v2 and the broken v2 (``manifests``, under examples/) into ``repo``."""

    def build(manifest: str) -> ComposeResult:
        return compose(
            EXAMPLES / manifest, repo, reporter, cache=cache, source_date_epoch=source_date_epoch
        )

    v1, v2, broken = (build(manifest) for manifest in manifests)
    # Same ref and version as v2: composed last would leave the ref on it, so
    # the ref is put back on the good v2 (publishing names commits, not refs).
    ostree.set_ref(repo, v2.ref, v2.commit)
    return Builds(repo, v1, v2, broken)


def step_publish(reporter: Reporter, workdir: Path, builds: Builds) -> tuple[Path, Path, Path]:
    updates = workdir / "updates"
    shutil.rmtree(updates, ignore_errors=True)
    keys = workdir / "keys"
    if not (keys / "atoll-ed25519.key").exists():
        init_keys(keys)
    key = load_private_key(keys / "atoll-ed25519.key")
    for channel, commits in (
        ("stable", (builds.v1.commit, builds.v2.commit)),
        ("edge", (builds.v1.commit, builds.broken.commit)),
    ):
        for commit in commits:
            publish(builds.repo, commit, updates, channel, key, reporter)
    trusted = workdir / "trusted-keys.d"
    trusted.mkdir(exist_ok=True)
    shutil.copy(keys / "atoll-ed25519.pub", trusted / "demo.pub")
    return updates, trusted, keys


def step_download(
    reporter: Reporter,
    summary: Summary,
    workdir: Path,
    server: UpdateServer,
    trusted: Path,
    v1: str,
    v2: str,
) -> None:
    keys = load_trusted_keys((trusted,))
    url = url_of(server)
    node = workdir / "node-repo"
    shutil.rmtree(node, ignore_errors=True)
    ostree.init_repo(node, mode="bare-user")
    with reporter.stage("download", "a node on v1 pulls v2, verified"):
        pull_verified(node, url, v1, keys)
        before = server.counters.bytes_sent
        pull_verified(node, url, v2, keys)
        delta = server.counters.bytes_sent - before
    full = workdir / "node-fresh"
    shutil.rmtree(full, ignore_errors=True)
    ostree.init_repo(full, mode="bare-user")
    with reporter.stage("download", "a fresh node pulls v2 in full"):
        before = server.counters.bytes_sent
        pull_verified(full, url, v2, keys)
        whole = server.counters.bytes_sent - before
    summary.add(
        "upgrade download",
        f"{delta / 1e6:.2f} MB delta vs {whole / 1e6:.1f} MB full pull ({delta / whole:.1%})",
    )
    shutil.rmtree(node, ignore_errors=True)
    shutil.rmtree(full, ignore_errors=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def user_data(name: str, channel: str, update_key: bytes, pki: Path) -> str:
    """First-boot user data for one node: who it is, whom it follows, what it trusts."""
    issued = pki_issue(pki, name, kind=Kind.NODE)
    files = [
        ("/etc/atoll/trusted-keys.d/demo.pub", update_key, "0644"),
        ("/etc/atoll/agent/ca.crt", (pki / "ca.crt").read_bytes(), "0644"),
        ("/etc/atoll/agent/node.crt", issued.cert.read_bytes(), "0644"),
        ("/etc/atoll/agent/node.key", issued.key.read_bytes(), "0600"),
    ]
    text = (
        f'[node]\nhostname = "{name}"\n\n'
        f'[fleet]\ncontroller = "http://{HOST_SERVICES_ADDRESS}:{CONTROLLER_PORT}"\n'
        f'interval = 3\nlabels = {{ channel = "{channel}" }}\n\n'
        f'[updates]\nserver = "http://{HOST_SERVICES_ADDRESS}:{UPDATES_PORT}"\n'
        f'channel = "{channel}"\n'
    )
    for path, data, mode in files:
        text += (
            f'\n[[files]]\npath = "{path}"\nmode = "{mode}"\nencoding = "base64"\n'
            f'content = "{_b64(data)}"\n'
        )
    return text


def step_boot(
    reporter: Reporter,
    summary: Summary,
    workdir: Path,
    stack: contextlib.ExitStack,
    builds: Builds,
    keys: Path,
    services: tuple[HostService, ...],
) -> tuple[list[Node], Path]:
    pki = workdir / "pki"
    shutil.rmtree(pki, ignore_errors=True)
    pki_init(pki)
    pki_issue(pki, "demo-admin", kind=Kind.CLIENT, role=Role.ADMIN)
    update_key = (keys / "atoll-ed25519.pub").read_bytes()
    image = workdir / "node-v1.img"
    with reporter.stage("disk", "one v1 disk; every node boots it through its own overlay"):
        build_disk(plan_disk(builds.repo, builds.v1.commit, image, size=2048 * MIB), reporter)
    nodes: list[Node] = []
    with reporter.stage("boot", f"{len(NODES)} nodes under qemu (UEFI, TCG: slow)"):
        for name in NODES:
            channel = "edge" if name == BROKEN else "stable"
            data = workdir / f"{name}.toml"
            data.write_text(user_data(name, channel, update_key, pki))
            spec = BootSpec(
                image,
                Firmware.UEFI,
                user_data=data,
                guest_ports=(AGENT_PORT,),
                selftest=name == NODES[0],
                snapshot=True,
                host_services=services,
                state_dir=workdir / "vm" / name,
            )
            vm = stack.enter_context(Machine(spec))
            nodes.append(Node(name, channel, vm))
        for node in nodes:
            report = node.vm.wait_ready(BOOT_TIMEOUT)
            node.ready_seconds = report.ready_seconds
            reporter.info(f"{node.name}: ready in {report.ready_seconds:.0f} s ({node.channel})")
        first = nodes[0].vm
        first.wait_until(lambda c: c.selftest_verdict is not None, 300)
        checks = dict(first.console.selftest)
    readies = ", ".join(f"{n.ready_seconds:.0f}" for n in nodes if n.ready_seconds)
    boot_line = f"{readies} s (qemu start -> ready, UEFI, {len(NODES)} guests on 2 cores)"
    bench = _last_bench()
    if bench.get("boot"):
        b = bench["boot"]
        boot_line += (
            f"; one guest alone (make bench, {bench['date']}): atoll "
            f"{b.get('atoll boot to ready, median (s)')} s vs conventional host "
            f"{b.get('baseline boot to ready, median (s)')} s"
        )
    summary.add("boot to ready", boot_line)
    container = checks.get("container", ("missing", ""))
    summary.add("container without pull", f"{container[0]} {container[1]}".strip())
    return nodes, pki


def _poll_nodes(nodes: Sequence[Node], note: Callable[[str], None]) -> None:
    """Read every console (restarting a VM whose guest rebooted); show agent lines."""
    for node in nodes:
        before = node.vm.reboots
        for line in node.vm.poll():
            if "atoll-prepare-root: booting" in line:
                note(f"{node.name}: boots {line.rsplit('/', 1)[-1][:12]}")
            match = AGENT_LINE.search(line)
            if match and not any(q in match.group(1) for q in QUIET):
                note(f"{node.name}: {match.group(1)}")
        if node.vm.reboots != before:
            note(f"{node.name}: rebooted (qemu powered on again)")
        if not node.vm.running:
            tail = "\n".join(node.vm.console.tail[-15:])
            raise AtollError(f"{node.name}: qemu ended ({node.vm.console_log}):\n{tail}")


def _wait_registered(url: str, nodes: Sequence[Node], timeout: float) -> list[NodeRecord]:
    deadline = time.monotonic() + timeout
    while True:
        registered = [NodeRecord.from_json(n) for n in request_json("GET", f"{url}/v1/nodes")]
        if {n.name for n in registered} >= {n.name for n in nodes}:
            return registered
        if time.monotonic() > deadline:
            raise AtollError(f"{url}: nodes did not register in {timeout:g} s: {registered}")
        time.sleep(1.0)


def _watch_pool(
    url: str,
    nodes: Sequence[Node],
    note: Callable[[str], None],
    until: Callable[[dict[str, Any]], bool],
    timeout: float,
    record: Rollout,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, tuple[Any, ...]] = {}
    while True:
        _poll_nodes(nodes, note)
        view = request_json("GET", f"{url}/v1/pools/demo")
        rebooting = sum(n["phase"] == "rebooting" for n in view.get("nodes", []))
        record.max_rebooting = max(record.max_rebooting, rebooting)
        for n in view.get("nodes", []):
            key = (n["current"], n["phase"], n["reason"])
            if seen.get(n["name"]) != key:
                seen[n["name"]] = key
                why = f" ({n['reason']})" if n["reason"] else ""
                note(f"controller: {n['name']} on {n['current']}, {n['phase']}{why}")
        status = view["status"]
        if until(status):
            return dict(status)
        if time.monotonic() > deadline:
            raise AtollError(f"pool demo: timed out after {timeout:g} s; status {status}")
        time.sleep(1.0)


def step_rollout(
    reporter: Reporter,
    summary: Summary,
    url: str,
    nodes: Sequence[Node],
    builds: Builds,
    updates: Path,
    keys: Path,
    reboot: RebootPolicy | None = None,
) -> Rollout:
    record = Rollout()
    started = time.monotonic()

    def note(text: str) -> None:
        record.timeline.append(f"{time.monotonic() - started:6.0f}s {text}")
        reporter.info(text)

    pool = {
        "pool": {
            "name": "demo",
            "version": builds.v2.version,
            "previous_version": builds.v1.version,
        },
        "strategy": {"max_unavailable": 1, "failure_budget": 0}
        | ({} if reboot is None else {"reboot": reboot.value}),
    }
    with reporter.stage("rollout", f"pool demo: {builds.v1.version} -> {builds.v2.version}"):
        request_json("PUT", f"{url}/v1/pools/demo", pool)
        note(f"pool demo applied: {builds.v2.version}, maxUnavailable 1, failure budget 0")
        status = _watch_pool(
            url, nodes, note, lambda s: bool(s.get("paused_reason")), ROLLOUT_TIMEOUT, record
        )
        why = record.paused_reason = str(status["paused_reason"])
        note(f"pool paused itself: {why}")
        summary.add("pool paused because", why)
        reporter.info("$ atoll fleet status demo")
        atoll_main(["fleet", "status", "demo", "--server", url])
        key = load_private_key(keys / "atoll-ed25519.key")
        publish(builds.repo, builds.v2.commit, updates, "edge", key, reporter)
        note(f"operator: published the good {builds.v2.version} build to edge; resume")
        request_json("POST", f"{url}/v1/pools/demo/resume", {})
        final = record.final = _watch_pool(
            url, nodes, note, lambda s: s.get("updated") == len(nodes), ROLLOUT_TIMEOUT, record
        )
        note(f"pool finished: {final.get('updated')}/{len(nodes)} nodes on {builds.v2.version}")
    reporter.info("$ atoll fleet status demo")
    atoll_main(["fleet", "status", "demo", "--server", url])
    summary.add("rollout", f"{len(nodes)} nodes in {time.monotonic() - started:.0f} s (TCG)")
    summary.notes.append("rollout timeline:\n  " + "\n  ".join(record.timeline))
    return record


def _client(node: Node, pki: Path) -> NodeClient:
    """The admin's client for a node's API (mutual TLS, through the forwarded port)."""
    endpoint = f"https://127.0.0.1:{node.vm.host_port(AGENT_PORT)}"
    return NodeClient(
        endpoint, pki / "ca.crt", pki / "clients/demo-admin.crt", pki / "clients/demo-admin.key"
    )


def step_settings(reporter: Reporter, node: Node, pki: Path) -> None:
    """An operator changes a setting through the API before the upgrade."""
    with reporter.stage("settings", f"{node.name}: PATCH /v1/settings {json.dumps(SETTING)}"):
        values = _client(node, pki).request("PATCH", "/v1/settings", SETTING)
        reporter.info(f"  kernel.sysctls now {values.get('kernel.sysctls')}")


def step_settings_kept(reporter: Reporter, summary: Summary, node: Node, pki: Path) -> Any:
    """The setting outlives the upgrade and its reboot (/etc is carried over)."""
    values = _client(node, pki).request("GET", "/v1/settings")
    kept = values.get("kernel.sysctls")
    reporter.info(f"{node.name} after the upgrade: kernel.sysctls {kept}")
    summary.add(f"settings on {node.name}", f"kernel.sysctls {kept} after the upgrade")
    return kept


def step_audit(
    reporter: Reporter, summary: Summary, node: Node, pki: Path
) -> tuple[list[dict[str, Any]], Any]:
    client = _client(node, pki)
    with reporter.stage("audit", f"{node.name}'s audit trail through its API (mutual TLS)"):
        status = client.request("GET", "/v1/status")
        records = client.request("GET", "/v1/audit")
        verdict = client.request("GET", "/v1/audit/verify")
    entries = records.get("records", records) if isinstance(records, dict) else records
    for r in entries[-12:]:
        params = {k: v for k, v in (r.get("params") or {}).items() if v not in (None, "", {})}
        shown = json.dumps(params, sort_keys=True)[:90] if params else ""
        reporter.info(
            f"  #{r.get('seq')} {r.get('time', '')[11:19]} {r.get('who')}: {r.get('what')} "
            f"-> {r.get('result')} {shown}"
        )
    summary.add(
        f"audit of {node.name}",
        f"{len(entries)} records, chain {json.dumps(verdict)}; runs {status.get('version')}",
    )
    return list(entries), verdict


def run_demo(
    workdir: Path,
    reporter: Reporter,
    *,
    cache: Path | None = None,
    source_date_epoch: int | None = None,
    reboot: RebootPolicy | None = None,
) -> Outcome:
    """The whole demo in ``workdir``; everything it starts is stopped when it returns.
    ``reboot``: the pool's restart policy (None: the pool's default)."""
    workdir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    with contextlib.ExitStack() as stack:
        with reporter.stage("compose", "v1, v2 and a broken v2 of the default image"):
            builds = step_compose(reporter, summary, workdir, cache, source_date_epoch)
        with reporter.stage("publish", "sign; channels stable and edge; static deltas"):
            updates, trusted, keys = step_publish(reporter, workdir, builds)
        server = serve_in_thread(updates)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        db = workdir / "fleet.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        store = stack.enter_context(SqliteStore(db))
        fleet = FleetService(store, "127.0.0.1", 0, tick=0.5)
        fleet.start()
        stack.callback(fleet.stop)
        host, port = fleet.address
        fleet_url = f"http://{host}:{port}"
        summary.add("update server", url_of(server))
        summary.add("fleet controller", f"{fleet_url} (sqlite {db})")
        step_download(
            reporter, summary, workdir, server, trusted, builds.v1.commit, builds.v2.commit
        )
        services = (
            HostService(CONTROLLER_PORT, port),
            HostService(UPDATES_PORT, server.server_address[1]),
        )
        nodes, pki = step_boot(reporter, summary, workdir, stack, builds, keys, services)
        with reporter.stage("register", "the nodes' agents register with the controller"):
            for n in _wait_registered(fleet_url, nodes, 300):
                reporter.info(f"  {n.name}: {n.current} labels {dict(n.labels)}")
        step_settings(reporter, nodes[0], pki)
        rollout = step_rollout(reporter, summary, fleet_url, nodes, builds, updates, keys, reboot)
        kept = step_settings_kept(reporter, summary, nodes[0], pki)
        broken = next(n for n in nodes if n.name == BROKEN)
        audit, verdict = step_audit(reporter, summary, broken, pki)
        consoles = {n.name: n.vm.console_log.read_text(errors="replace") for n in nodes}
        reboots = {n.name: n.vm.reboots for n in nodes}
        reporter.info("stopping the nodes, the controller and the update server")
    return Outcome(builds, summary, rollout, audit, verdict, kept, consoles, reboots)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atoll.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=CHECKOUT / "build" / "demo")
    parser.add_argument("--json", action="store_true", help="progress as JSON lines")
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="the story without Kubernetes: the standalone fleet controller (this module) "
        "instead of the cluster and its operator (atoll.demo_cluster)",
    )
    parser.add_argument(
        "--reboot",
        choices=[p.value for p in RebootPolicy],
        help="how the pool restarts its nodes: auto (a soft-reboot when the kernel and its "
        "arguments stay) or full; default: the pool's default",
    )
    args = parser.parse_args(argv)
    reporter = reporter_for(json_lines=args.json)
    reboot = None if args.reboot is None else RebootPolicy(args.reboot)
    try:
        if args.standalone:
            summary = run_demo(args.workdir, reporter, reboot=reboot).summary
        else:
            from atoll.demo_cluster import run_cluster_demo  # noqa: PLC0415 - imports this module

            summary = run_cluster_demo(args.workdir / "cluster", reporter, reboot=reboot).summary
    except KeyboardInterrupt:
        reporter.close()
        print("atoll demo: interrupted; everything it started was stopped")
        return Interrupted.exit_code
    except (AtollError, BootFailed) as e:
        reporter.close()
        print(f"atoll demo: {e}")
        return e.exit_code
    except FleetError as e:  # the fleet client (atoll.wire, stdlib only) has its own error type
        reporter.close()
        print(f"atoll demo: fleet controller: {e}")
        return 1
    reporter.close()
    print(summary.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make demo`` on a cluster: three atoll nodes join Kubernetes, and the fleet operator
rolls a new OS version across them the way Kubernetes rolls a workload.

1. compose the Kubernetes node image v1 (``examples/kubernetes.toml``), a v2
   that adds a package, and a broken build of v2 (the same version plus a unit
   that always fails); the kubelet is built from the Go module proxy first
   (``atoll cluster build``, cached);
2. sign and publish: channel ``stable`` gets v1 then v2, ``edge`` v1 then the
   broken v2;
3. ``atoll cluster up`` on 127.0.0.1 (etcd, kube-apiserver, controller-manager,
   scheduler), the NodePool CRD and the operator's RBAC applied with kubectl,
   and ``atoll fleet operator`` started as its service account;
4. boot three nodes from one v1 disk (UEFI, TCG), each with user data that
   joins the cluster (bootstrap token), names the update server and channel
   (node-2 follows ``edge``) and no fleet controller: the agent takes its
   grants from its own Node. The three Nodes go Ready with nothing pulled;
5. a Deployment of three pods (atoll's preloaded pause image) with a
   PodDisruptionBudget of minAvailable 2;
6. a NodePool v1 -> v2 with maxUnavailable 1 and failure budget 0: for each
   node the operator cordons, marks for the autoscalers, drains through the
   Eviction API, grants the reboot on the Node, and uncordons once the node is
   back, healthy, on v2. node-2 boots the broken build, fails its health trial,
   rolls itself back and says so on its Node: the pool pauses itself and
   ``kubectl get nodepools`` says why. The good build is published to
   ``edge``, the pool resumed (annotation ``atoll.dev/resume``), and it
   finishes;
7. the summary: the OS version, boots and last restart (soft or full, and why)
   of every node, the fewest workload pods that were ready at any sampled
   moment against the budget's minimum.

Under TCG a boot takes minutes and the whole demo 20-30 minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.cli import main as atoll_main
from atoll.cluster import build as cluster_build
from atoll.cluster.up import ControlPlane, running_cluster
from atoll.demo import (
    AGENT_PORT,
    CHECKOUT,
    UPDATES_PORT,
    Builds,
    Node,
    Summary,
    _b64,
    _poll_nodes,
    compose_builds,
    step_publish,
)
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.errors import AtollError
from atoll.pki import Kind
from atoll.pki import init as pki_init
from atoll.pki import issue as pki_issue
from atoll.process import Child, as_text, run, start
from atoll.progress import Reporter
from atoll.publish.keys import load_private_key
from atoll.publish.publish import publish
from atoll.publish.serve import serve_in_thread
from atoll.tools.qemu import HOST_SERVICES_ADDRESS, HostService
from atoll.wire import kubenode
from atoll.wire.fleet import ProtocolError, RebootPolicy

NODES = ("node-1", "node-2", "node-3")
BROKEN = "node-2"  # follows "edge", where v2 is the broken build
POOL = "demo"
NAMESPACE = "demo"
WORKLOAD = "web"
REPLICAS = 3
MIN_AVAILABLE = 2
PAUSE = "localhost/atoll/pause:1"  # atoll's pause image, preloaded on every node
OPERATOR_ACCOUNT = ("atoll-system", "atoll-fleet-operator")  # deploy/kubernetes/rbac.yaml
DEPLOY = CHECKOUT / "deploy" / "kubernetes"
MEMORY_MIB = 1536  # a node: systemd, containerd, the kubelet, the agent, a pod or two
BOOT_TIMEOUT = 1200.0  # three TCG guests share two cores
READY_TIMEOUT = 1200.0
ROLLOUT_TIMEOUT = 3600.0
POLL = 3.0  # seconds between looks at the cluster
RESUME, FIXED = "atoll.dev/resume", "fixed"  # the NodePool's resume, after the fix


@dataclass
class ClusterRollout:
    """What the demo saw (tests/vm checks it)."""

    paused_reason: str = ""
    final: dict[str, Any] = field(default_factory=dict)
    fewest_ready: int = REPLICAS  # the fewest workload pods Ready at a sampled moment
    samples: int = 0
    most_unavailable: int = 0  # the most pool nodes cordoned at once
    timeline: list[str] = field(default_factory=list)


@dataclass
class ClusterOutcome:
    builds: Builds
    summary: Summary
    rollout: ClusterRollout
    nodes: dict[str, dict[str, Any]]  # name -> the Node object at the end
    uids: dict[str, str]  # name -> its Node's uid when it joined
    consoles: dict[str, str]  # name -> its whole console (every boot)
    reboots: dict[str, int]


@dataclass
class Operator:
    """``atoll fleet operator``, started by the demo, and its log."""

    child: Child
    log: Path

    def check(self) -> None:
        """Raise if it has ended (it runs until the demo stops it), with its log's tail."""
        if self.child.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            raise AtollError(
                f"atoll fleet operator ended (exit {self.child.returncode}; {self.log}):\n"
                + "\n".join(tail)
            )


class Kubectl:
    """The cluster's kubectl as its admin: what a person would type, shown as it runs."""

    def __init__(self, binary: Path, plane: ControlPlane, reporter: Reporter) -> None:
        self.binary, self.plane, self.reporter = binary, plane, reporter

    def __call__(self, *args: str, stdin: bytes | None = None, show: bool = False) -> str:
        if show:
            self.reporter.info("$ kubectl " + " ".join(args))
        argv: list[str | Path] = [self.binary, "--kubeconfig", self.plane.kubeconfig, *args]
        out = as_text(run(argv, input=stdin, timeout=120)).stdout
        if show:
            for line in out.rstrip().splitlines():
                self.reporter.info("  " + line)
        return out

    def apply(self, *documents: Mapping[str, Any]) -> None:
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)})
        self("apply", "-f", "-", stdin=body.encode())

    def json(self, *args: str) -> Any:
        return json.loads(self("get", *args, "-o", "json"))


def restart_said(notes: Mapping[str, Any]) -> str:
    """The kind of a node's last restart and why, from its Node's annotations, for the
    summary: ``last restart soft (same kernel and arguments)``."""
    try:
        restart = kubenode.read_restart(notes)
    except ProtocolError as e:
        return f"last restart unreadable ({e})"
    if restart is None:
        return "no restart recorded"
    return f"last restart {restart.kind} ({restart.reason})"


def step_compose(
    reporter: Reporter,
    summary: Summary,
    workdir: Path,
    cache: Path | None,
    source_date_epoch: int | None,
) -> Builds:
    manifests = ("kubernetes.toml", "kubernetes-v2.toml", "kubernetes-v2-broken.toml")
    builds = compose_builds(reporter, workdir / "repo", manifests, cache, source_date_epoch)
    v1, v2, broken = builds.v1, builds.v2, builds.broken
    summary.add("image v1", f"{v1.ref} {v1.version} {v1.commit[:12]}")
    summary.add("image v2", f"{v2.version} {v2.commit[:12]} (+ethtool)")
    summary.add("broken v2", f"{broken.version} {broken.commit[:12]} (+a unit that fails)")
    summary.add("image size", f"{v1.packages} packages, {v1.size / 1e6:.0f} MB")
    return builds


def step_operator(
    reporter: Reporter, workdir: Path, kubectl: Kubectl, plane: ControlPlane
) -> Operator:
    """The CRD and RBAC applied as the admin, the operator started as its service account."""
    for name in ("nodepool-crd.yaml", "rbac.yaml"):
        kubectl("apply", "-f", str(DEPLOY / name), show=True)
    kubectl("wait", "--for=condition=Established", "crd/nodepools.atoll.dev", "--timeout=60s")
    namespace, account = OPERATOR_ACCOUNT
    token = kubectl("create", "token", account, "-n", namespace, "--duration=24h").strip()
    config = workdir / "operator.kubeconfig"
    config.unlink(missing_ok=True)
    # Private from its first byte: it holds the service account's token.
    with os.fdopen(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        json.dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "atoll",
                        "cluster": {
                            "server": plane.server,
                            "certificate-authority": str(plane.ca_file),
                        },
                    }
                ],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": "atoll", "context": {"cluster": "atoll", "user": account}}],
                "current-context": "atoll",
            },
            out,
        )
    log = workdir / "operator.log"
    argv = [sys.executable, "-m", "atoll", "fleet", "operator", "--kubeconfig", str(config)]
    reporter.info(f"$ atoll fleet operator --kubeconfig {config}  (log: {log})")
    with log.open("wb") as out:
        return Operator(start([*argv, "--interval", "2"], stdout=out, stderr=out), log)


def user_data(name: str, channel: str, join: Mapping[str, Any], key: bytes, pki: Path) -> str:
    """A node's first-boot user data: who it is, the cluster it joins, where its
    updates come from, what it trusts. No ``[fleet]``: it follows its Node."""
    issued = pki_issue(pki, name, kind=Kind.NODE)
    text = (
        f'[node]\nhostname = "{name}"\n\n'
        f"[kubernetes]\nserver = {json.dumps(join['server'])}\n"
        f"ca = {json.dumps(join['ca'])}\ntoken = {json.dumps(join['token'])}\n\n"
        f'[updates]\nserver = "http://{HOST_SERVICES_ADDRESS}:{UPDATES_PORT}"\n'
        f'channel = "{channel}"\n'
    )
    for path, data, mode in (
        ("/etc/atoll/trusted-keys.d/demo.pub", key, "0644"),
        ("/etc/atoll/agent/ca.crt", (pki / "ca.crt").read_bytes(), "0644"),
        ("/etc/atoll/agent/node.crt", issued.cert.read_bytes(), "0644"),
        ("/etc/atoll/agent/node.key", issued.key.read_bytes(), "0600"),
    ):
        text += (
            f'\n[[files]]\npath = "{path}"\nmode = "{mode}"\nencoding = "base64"\n'
            f'content = "{_b64(data)}"\n'
        )
    return text


def step_boot(
    reporter: Reporter,
    workdir: Path,
    stack: contextlib.ExitStack,
    builds: Builds,
    keys: Path,
    plane: ControlPlane,
    updates_port: int,
) -> list[Node]:
    pki = workdir / "pki"
    shutil.rmtree(pki, ignore_errors=True)
    pki_init(pki)
    join = json.loads(plane.join_file.read_text())
    key = (keys / "atoll-ed25519.pub").read_bytes()
    services = (HostService(join["port"], join["port"]), HostService(UPDATES_PORT, updates_port))
    image = workdir / "node-v1.img"
    with reporter.stage("disk", "one v1 disk; every node boots it through its own overlay"):
        build_disk(plan_disk(builds.repo, builds.v1.commit, image, size=3072 * MIB), reporter)
    nodes: list[Node] = []
    with reporter.stage("boot", f"{len(NODES)} nodes under qemu (UEFI, TCG: slow)"):
        for name in NODES:
            channel = "edge" if name == BROKEN else "stable"
            data = workdir / f"{name}.toml"
            data.write_text(user_data(name, channel, join, key, pki))
            spec = BootSpec(
                image,
                Firmware.UEFI,
                user_data=data,
                guest_ports=(AGENT_PORT,),
                snapshot=True,
                memory_mib=MEMORY_MIB,
                host_services=services,
                state_dir=workdir / "vm" / name,
            )
            nodes.append(Node(name, channel, stack.enter_context(Machine(spec))))
        for node in nodes:
            report = node.vm.wait_ready(BOOT_TIMEOUT)
            node.ready_seconds = report.ready_seconds
            reporter.info(f"{node.name}: ready in {report.ready_seconds:.0f} s ({node.channel})")
    return nodes


def _ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _ready_pods(pods: Sequence[Mapping[str, Any]]) -> int:
    count = 0
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        conditions = pod.get("status", {}).get("conditions") or []
        count += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return count


def step_join(reporter: Reporter, kubectl: Kubectl, nodes: Sequence[Node]) -> dict[str, str]:
    """Wait for every Node Ready (the kubelets' CSRs approved by the controller-manager);
    the Nodes' uids."""
    with reporter.stage("join", "the kubelets join; every Node Ready, nothing pulled"):
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            _poll_nodes(nodes, reporter.info)
            listed = {n["metadata"]["name"]: n for n in kubectl.json("nodes")["items"]}
            if all(name in listed and _ready(listed[name]) for name in NODES):
                break
            if time.monotonic() > deadline:
                raise AtollError(f"Nodes not Ready in {READY_TIMEOUT:g} s: {sorted(listed)}")
            time.sleep(POLL)
        kubectl("get", "nodes", "-L", kubenode.LABEL_VERSION, show=True)
    return {name: str(listed[name]["metadata"]["uid"]) for name in NODES}


def workload() -> list[dict[str, Any]]:
    """The Deployment (atoll's preloaded pause, never pulled) and its budget."""
    labels = {"app": WORKLOAD}
    container = {"name": "pause", "image": PAUSE, "imagePullPolicy": "Never"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": WORKLOAD, "namespace": NAMESPACE},
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "dnsPolicy": "Default",  # this cluster runs no DNS service
                        "containers": [container],
                        # One per node while three are schedulable; soft, so a drain's
                        # evicted pod finds a place on the others.
                        "topologySpreadConstraints": [
                            {
                                "maxSkew": 1,
                                "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "ScheduleAnyway",
                                "labelSelector": {"matchLabels": labels},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": WORKLOAD, "namespace": NAMESPACE},
            "spec": {"minAvailable": MIN_AVAILABLE, "selector": {"matchLabels": labels}},
        },
    ]


def step_workload(reporter: Reporter, kubectl: Kubectl, nodes: Sequence[Node]) -> None:
    with reporter.stage("workload", f"{REPLICAS} pods, PodDisruptionBudget minAvailable 2"):
        kubectl.apply(*workload())
        deadline = time.monotonic() + READY_TIMEOUT
        while _ready_pods(kubectl.json("pods", "-n", NAMESPACE)["items"]) < REPLICAS:
            _poll_nodes(nodes, reporter.info)
            if time.monotonic() > deadline:
                raise AtollError(f"{WORKLOAD}: {REPLICAS} pods not Ready in {READY_TIMEOUT:g} s")
            time.sleep(POLL)
        kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", show=True)


def nodepool(builds: Builds, reboot: RebootPolicy | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "atoll.dev/v1alpha1",
        "kind": "NodePool",
        "metadata": {"name": POOL},
        "spec": {
            "version": builds.v2.version,
            "previousVersion": builds.v1.version,
            "selector": {"matchLabels": {"kubernetes.io/os": "linux"}},
            "strategy": {"maxUnavailable": 1, "failureBudget": 0}
            | ({} if reboot is None else {"reboot": reboot.value}),
        },
    }


def _watch(
    kubectl: Kubectl,
    nodes: Sequence[Node],
    operator: Operator,
    note: Callable[[str], None],
    until: Callable[[Mapping[str, Any]], bool],
    record: ClusterRollout,
    *,
    fails: Callable[[Mapping[str, Any]], bool] = lambda status: False,
) -> dict[str, Any]:
    """Follow the pool, its Nodes and the workload until ``until(status)``; sample the
    ready pods and the cordoned nodes at every look. An operator that ended, or a
    status that ``fails``, ends the wait at once."""
    deadline = time.monotonic() + ROLLOUT_TIMEOUT
    seen: dict[str, tuple[Any, ...]] = {}
    while True:
        _poll_nodes(nodes, note)
        operator.check()
        listed = kubectl.json("nodes,pods,nodepools", "-A")["items"]
        pods = [o for o in listed if o["kind"] == "Pod" and o["metadata"]["namespace"] == NAMESPACE]
        ready = _ready_pods(pods)
        record.samples += 1
        record.fewest_ready = min(record.fewest_ready, ready)
        cordoned = 0
        for node in (o for o in listed if o["kind"] == "Node"):
            name, notes = node["metadata"]["name"], node["metadata"].get("annotations") or {}
            cordoned += bool(node["spec"].get("unschedulable"))
            key = (
                notes.get(kubenode.CURRENT_VERSION),
                notes.get("atoll.dev/phase"),
                node["spec"].get("unschedulable", False),
                _ready(node),
            )
            if seen.get(name) != key:
                seen[name] = key
                version, phase, unschedulable, up = key
                note(
                    f"{name}: {version}, {phase or 'idle'}"
                    + (", cordoned" if unschedulable else "")
                    + ("" if up else ", NotReady")
                    + f"; {ready}/{REPLICAS} {WORKLOAD} pods Ready"
                )
        record.most_unavailable = max(record.most_unavailable, cordoned)
        pool = next((o for o in listed if o["kind"] == "NodePool"), None)
        status = dict((pool or {}).get("status") or {})
        if until(status):
            return status
        if fails(status):
            raise AtollError(f"NodePool {POOL}: {status.get('pauseReason') or status}")
        if time.monotonic() > deadline:
            raise AtollError(f"NodePool {POOL}: timed out after {ROLLOUT_TIMEOUT:g} s: {status}")
        time.sleep(POLL)


def step_rollout(
    reporter: Reporter,
    summary: Summary,
    kubectl: Kubectl,
    operator: Operator,
    nodes: Sequence[Node],
    builds: Builds,
    updates: Path,
    keys: Path,
    reboot: RebootPolicy | None = None,
) -> ClusterRollout:
    record = ClusterRollout()
    started = time.monotonic()

    def note(text: str) -> None:
        record.timeline.append(f"{time.monotonic() - started:6.0f}s {text}")
        reporter.info(text)

    v1, v2 = builds.v1.version, builds.v2.version
    with reporter.stage("rollout", f"NodePool {POOL}: {v1} -> {v2}, maxUnavailable 1"):
        kubectl.apply(nodepool(builds, reboot))
        note(f"NodePool {POOL} applied: {v2}, maxUnavailable 1, failure budget 0")
        paused = _watch(
            kubectl, nodes, operator, note, lambda s: bool(s.get("pauseReason")), record
        )
        why = record.paused_reason = str(paused["pauseReason"])
        note(f"NodePool paused itself: {why}")
        summary.add("pool paused because", why)
        kubectl("get", "nodepools", "-o", "wide", show=True)
        reporter.info(f"$ atoll fleet status {POOL} --kubeconfig {kubectl.plane.kubeconfig}")
        atoll_main(["fleet", "status", POOL, "--kubeconfig", str(kubectl.plane.kubeconfig)])
        key = load_private_key(keys / "atoll-ed25519.key")
        publish(builds.repo, builds.v2.commit, updates, "edge", key, reporter)
        note(f"published the good {v2} build to edge; resume the pool")
        kubectl("annotate", "nodepool", POOL, f"{RESUME}={FIXED}", "--overwrite", show=True)

        def paused_again(status: Mapping[str, Any]) -> bool:
            return status.get("resumedAt") == FIXED and bool(status.get("pauseReason"))

        final = record.final = _watch(
            kubectl,
            nodes,
            operator,
            note,
            lambda s: s.get("phase") == "Completed",
            record,
            fails=paused_again,
        )
        note(f"NodePool completed: {final.get('updated')}/{final.get('total')} nodes on {v2}")
    kubectl("get", "nodepools", "-o", "wide", show=True)
    kubectl("get", "nodes", "-L", kubenode.LABEL_VERSION, show=True)
    summary.add("rollout", f"{len(nodes)} nodes in {time.monotonic() - started:.0f} s (TCG)")
    summary.add(
        "workload during the rollout",
        f"at least {record.fewest_ready} of {REPLICAS} pods Ready at each of {record.samples} "
        f"looks (PodDisruptionBudget minAvailable {MIN_AVAILABLE}); at most "
        f"{record.most_unavailable} node(s) cordoned at once (maxUnavailable 1)",
    )
    summary.notes.append("rollout timeline:\n  " + "\n  ".join(record.timeline))
    return record


def run_cluster_demo(
    workdir: Path,
    reporter: Reporter,
    *,
    cache: Path | None = None,
    source_date_epoch: int | None = None,
    reboot: RebootPolicy | None = None,
) -> ClusterOutcome:
    """The whole cluster demo in ``workdir``; everything it starts is stopped when it returns.
    ``reboot``: the NodePool's restart policy (None: the pool's default)."""
    workdir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    with contextlib.ExitStack() as stack:
        with reporter.stage("kubernetes", "the pinned release (atoll cluster build, cached)"):
            binaries = cluster_build.build(reporter)
        with reporter.stage("compose", "v1, v2 and a broken v2 of the Kubernetes node image"):
            builds = step_compose(reporter, summary, workdir, cache, source_date_epoch)
        with reporter.stage("publish", "sign; channels stable and edge; static deltas"):
            updates, _, keys = step_publish(reporter, workdir, builds)
        server = serve_in_thread(updates)
        stack.callback(server.server_close)
        stack.callback(server.shutdown)
        with reporter.stage("cluster", "atoll cluster up: the control plane on 127.0.0.1"):
            shutil.rmtree(workdir / "cluster", ignore_errors=True)
            plane = stack.enter_context(running_cluster(workdir / "cluster", binaries.binaries))
            kubectl = Kubectl(binaries.binaries["kubectl"], plane, reporter)
            operator = step_operator(reporter, workdir, kubectl, plane)
            stack.callback(operator.child.stop, 15.0)
        summary.add("cluster", f"{plane.server} (Kubernetes {binaries.version})")
        nodes = step_boot(reporter, workdir, stack, builds, keys, plane, server.server_address[1])
        uids = step_join(reporter, kubectl, nodes)
        step_workload(reporter, kubectl, nodes)
        rollout = step_rollout(
            reporter, summary, kubectl, operator, nodes, builds, updates, keys, reboot
        )
        final = {n["metadata"]["name"]: n for n in kubectl.json("nodes")["items"]}
        for node in nodes:
            meta = final[node.name]["metadata"]
            same = "the same" if meta["uid"] == uids[node.name] else "a new"
            notes = meta.get("annotations") or {}
            summary.add(
                node.name,
                f"{notes.get(kubenode.CURRENT_VERSION)} after {node.vm.reboots} firmware reboot(s) "
                f"({node.channel}); {restart_said(notes)}; {same} Node object as at its join",
            )
        consoles = {n.name: n.vm.console_log.read_text(errors="replace") for n in nodes}
        reboots = {n.name: n.vm.reboots for n in nodes}
        reporter.info("stopping the nodes, the operator, the control plane and the update server")
    return ClusterOutcome(builds, summary, rollout, final, uids, consoles, reboots)

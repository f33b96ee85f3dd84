"""Node Ready benchmark: qemu start to the Node's Ready condition, atoll vs a conventional host.

Both kinds join the same control plane (``atoll cluster up``,
:func:`atoll.cluster.up.running_cluster`) on 127.0.0.1 with the same bootstrap
token, reached through the boot runner's guestfwd relay (``restrict=on``):

* **atoll**: ``examples/kubernetes.toml`` composed and made a disk, booted in
  direct mode with first-boot user data made from the cluster's ``join.json``
  (as ``tests/vm/test_kubernetes_node.py`` does). Its pause image is preloaded.
* **conventional**: the baseline of :mod:`atoll.bench.baseline` (important,
  initramfs, cloud-init, sshd, the same kernel) plus Debian's containerd,
  containernetworking-plugins and iptables from the same suite, and the same
  kubelet binary installed the way upstream's install docs do it without a
  package manager (``/usr/local/bin/kubelet`` and a ``kubelet.service``,
  modules-load and sysctl files for the bridge). cloud-init's NoCloud
  datasource reads its seed over HTTP (``ds=nocloud;s=http://...`` on the
  kernel command line, a seed server on 127.0.0.1 behind a guestfwd relay):
  the user data writes the CA, the bootstrap kubeconfig and the
  KubeletConfiguration and starts the kubelet, which is what a ``kubeadm
  join`` in ``runcmd`` amounts to. Nothing is preloaded: containerd's sandbox
  image is ``10.0.2.100:5000/atoll/pause:1``, served by Debian's
  ``docker-registry`` (a real registry, started here on 127.0.0.1 with a
  temporary configuration, stopped by pid) into which atoll's pause OCI
  archive is pushed with ``skopeo``; containerd reaches it over plain HTTP
  through its ``hosts.toml``.

The clock: the host's monotonic clock, from just before each qemu starts to
the first API sample (every ``SAMPLE`` seconds, admin credentials) showing
the Node's Ready condition True; the condition's ``lastTransitionTime`` has
second resolution, so it is not used.

Runs: ``RUNS`` boots of one node of each kind, alternately (median), then
for each N in ``SCALE``, N nodes of one kind started at once, then N of the
other (P50 and P90 per kind, their ratio). Under TCG everything is ~10x
slower than hardware and N guests share two cores: the ratios are the figures.
Each wave is appended to ``<workdir>/waves.jsonl`` as it ends; a run stopped
before the page was written is made a page from that file with
``ATOLL_BENCH_READY_WAVES=<file>`` (nothing is booted then).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import socket
import ssl
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.bench.baseline import build_baseline_rootfs, tree_disk
from atoll.boot.runner import BootSpec, Firmware, KernelOverride, Machine
from atoll.cache import default_cache
from atoll.cluster.build import KubernetesBinaries
from atoll.cluster.build import build as build_kubernetes
from atoll.cluster.up import ControlPlane, running_cluster
from atoll.compose.oci import write_pause_archive
from atoll.compose.pipeline import compose
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.errors import AtollError, InputError
from atoll.manifest import load_index, load_manifest
from atoll.process import DEVNULL, STDOUT, Child, run, start
from atoll.progress import Reporter
from atoll.tools.qemu import HOST_SERVICES_ADDRESS, HostService
from atoll.wire import kubelet as kubelet_paths

CHECKOUT = Path(__file__).resolve().parents[3]
MANIFEST = CHECKOUT / "examples" / "kubernetes.toml"
CNI_CONFLIST = "/etc/cni/net.d/10-atoll-bridge.conflist"
RUNS = 3  # one node of each kind, alternately: the median
SCALE = (2, 4)  # nodes started at once; 4 keeps every guest progressing under TCG on 2 cores
# Parameters (``make bench`` uses the defaults): runs of one node, and the Ns of the scale-out.
RUNS_ENV = "ATOLL_BENCH_READY_RUNS"
NODES_ENV = "ATOLL_BENCH_READY_NODES"
# A stopped run's ``<workdir>/ready/waves.jsonl``: the page from it, nothing booted.
WAVES_ENV = "ATOLL_BENCH_READY_WAVES"
SAMPLE = 0.5  # seconds between API samples
READY_TIMEOUT = 1500.0  # per wave, from the last qemu start
MEMORY_MIB = 2048
TARGET_RATIO = 0.25
CONVENTIONAL_PACKAGES = ("containerd", "containernetworking-plugins", "iptables")
REGISTRY_GUEST_PORT = 5000
SEED_GUEST_PORT = 8000
PAUSE_REPOSITORY = "atoll/pause"
PAUSE_TAG = "1"
REGISTRY_READY_TIMEOUT = 30.0
ATOLL, CONVENTIONAL = "atoll", "conventional"
KINDS = (ATOLL, CONVENTIONAL)

# Upstream's kubelet.service (kubernetes/release, cmd/krel/templates/.../kubelet.service)
# with the flags kubeadm's drop-in gives it; not enabled: the join starts it.
KUBELET_UNIT = f"""\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/kubelet --bootstrap-kubeconfig=/{kubelet_paths.BOOTSTRAP_KUBECONFIG} \\
    --kubeconfig=/{kubelet_paths.KUBECONFIG} --config=/{kubelet_paths.CONFIG}
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
# The KubeletConfiguration atoll's first boot writes (atoll.agent.provision, which
# nothing outside the agent imports; a unit test keeps the two equal).
KUBELET_CONFIGURATION: dict[str, Any] = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    "cgroupDriver": "systemd",
    "containerRuntimeEndpoint": kubelet_paths.CONTAINERD_SOCKET,
    "rotateCertificates": True,
    "failSwapOn": False,
    "authentication": {
        "anonymous": {"enabled": False},
        "webhook": {"enabled": True},
        "x509": {"clientCAFile": "/" + kubelet_paths.CA},
    },
    "authorization": {"mode": "Webhook"},
    "resolvConf": "/etc/resolv.conf",
}
# Upstream's "container runtimes" prerequisites.
MODULES_LOAD = "overlay\nbr_netfilter\n"
SYSCTL = (
    "net.bridge.bridge-nf-call-iptables = 1\n"
    "net.bridge.bridge-nf-call-ip6tables = 1\n"
    "net.ipv4.ip_forward = 1\n"
)


# -- pure parts -----------------------------------------------------------------------


def parse_runs(text: str | None) -> int:
    """``ATOLL_BENCH_READY_RUNS``: how many single-node boots of each kind (default RUNS)."""
    if text is None or not text.strip():
        return RUNS
    try:
        runs = int(text)
    except ValueError:
        raise InputError(f"{RUNS_ENV}={text!r}: not a whole number") from None
    if runs < 1:
        raise InputError(f"{RUNS_ENV}={text!r}: at least 1 run")
    return runs


def parse_nodes(text: str | None) -> tuple[int, ...]:
    """``ATOLL_BENCH_READY_NODES``: the Ns of the scale-out, comma-separated (default SCALE;
    ``none`` skips the scale-out)."""
    if text is None or not text.strip():
        return SCALE
    if text.strip() == "none":
        return ()
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"{NODES_ENV}={text!r}: not comma-separated whole numbers") from None
    if any(n < 1 for n in values):
        raise InputError(f"{NODES_ENV}={text!r}: every N must be at least 1")
    return tuple(sorted(set(values)))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0-100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` to three places; the denominator must be positive."""
    if denominator <= 0:
        raise ValueError(f"ratio against {denominator}: the baseline must be positive")
    return round(numerator / denominator, 3)


def ready_nodes(node_list: Mapping[str, Any]) -> frozenset[str]:
    """Names of the Nodes in a ``GET /api/v1/nodes`` answer whose Ready condition is True."""
    names = set()
    for node in node_list.get("items") or []:
        conditions = node.get("status", {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            names.add(node["metadata"]["name"])
    return frozenset(names)


def distribution(seconds: Sequence[float]) -> dict[str, float]:
    """P50 and P90 (and the extremes) of one wave's times to Ready."""
    return {
        "p50": round(percentile(seconds, 50), 1),
        "p90": round(percentile(seconds, 90), 1),
        "min": round(min(seconds), 1),
        "max": round(max(seconds), 1),
    }


def atoll_user_data(name: str, join: Mapping[str, Any]) -> str:
    """atoll's first-boot user data (TOML): the node's name and the join section."""
    return (
        f'[node]\nhostname = "{name}"\n[kubernetes]\n'
        f"server = {json.dumps(join['server'])}\nca = {json.dumps(join['ca'])}\n"
        f"token = {json.dumps(join['token'])}\n"
    )


def bootstrap_kubeconfig(server: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "cluster",
                "cluster": {"server": server, "certificate-authority": "/" + kubelet_paths.CA},
            }
        ],
        "users": [{"name": "kubelet-bootstrap", "user": {"token": token}}],
        "contexts": [
            {"name": "bootstrap", "context": {"cluster": "cluster", "user": "kubelet-bootstrap"}}
        ],
        "current-context": "bootstrap",
    }


def cloud_config(join: Mapping[str, Any]) -> str:
    """The conventional node's cloud-init user data: the join files, then the kubelet.

    JSON is YAML; cloud-init wants the ``#cloud-config`` line first. The
    KubeletConfiguration is atoll's (:data:`KUBELET_CONFIGURATION`), so both kinds
    run the same kubelet with the same settings.
    """
    config = KUBELET_CONFIGURATION

    def file(path: str, content: str, mode: str) -> dict[str, str]:
        return {"path": "/" + path, "content": content, "permissions": mode, "owner": "root:root"}

    document = {
        "write_files": [
            file(kubelet_paths.CA, join["ca"], "0644"),
            file(
                kubelet_paths.BOOTSTRAP_KUBECONFIG,
                json.dumps(bootstrap_kubeconfig(join["server"], join["token"]), indent=1),
                "0600",
            ),
            file(kubelet_paths.CONFIG, json.dumps(config, indent=1), "0644"),
        ],
        "runcmd": [["systemctl", "enable", "--now", "kubelet.service"]],
    }
    return "#cloud-config\n" + json.dumps(document, indent=1) + "\n"


def meta_data(name: str) -> str:
    return f"instance-id: {name}\nlocal-hostname: {name}\n"


def conventional_append(name: str) -> str:
    """The conventional node's kernel command line: its root, console and NoCloud seed."""
    seed = f"http://{HOST_SERVICES_ADDRESS}:{SEED_GUEST_PORT}/{name}/"
    return f"root=LABEL=baseline rw console=ttyS0,115200 ds=nocloud;s={seed}"


def registry_address() -> str:
    """The pause image's registry as the guests see it (a guestfwd relay to the host's)."""
    return f"{HOST_SERVICES_ADDRESS}:{REGISTRY_GUEST_PORT}"


def containerd_config(registry: str) -> str:
    """containerd's configuration for the conventional node (upstream's setup: the systemd
    cgroup driver, Debian's CNI directory, the sandbox image from ``registry``)."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return (
        "version = 2\n\n"
        f"[{cri}]\n"
        f'  sandbox_image = "{registry}/{PAUSE_REPOSITORY}:{PAUSE_TAG}"\n'
        f"[{cri}.cni]\n"
        '  bin_dir = "/usr/lib/cni"\n'
        '  conf_dir = "/etc/cni/net.d"\n'
        f"[{cri}.containerd.runtimes.runc]\n"
        '  runtime_type = "io.containerd.runc.v2"\n'
        f"[{cri}.containerd.runtimes.runc.options]\n"
        "  SystemdCgroup = true\n"
        f"[{cri}.registry]\n"
        '  config_path = "/etc/containerd/certs.d"\n'
    )


def hosts_toml(registry: str) -> str:
    """containerd's ``certs.d/<registry>/hosts.toml``: a plain-HTTP registry."""
    return (
        f'server = "http://{registry}"\n\n'
        f'[host."http://{registry}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def registry_config(port: int, storage: Path) -> str:
    """docker-registry's configuration: filesystem storage, HTTP on 127.0.0.1 only."""
    return (
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )


def count_pulls(log: str) -> int:
    """How many times the registry's access log shows the pause manifest fetched."""
    needle = f"GET /v2/{PAUSE_REPOSITORY}/manifests/"
    return sum(1 for line in log.splitlines() if needle in line)


# -- the host side: registry, seed server, API -----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own http://127.0.0.1
            return True
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Registry:
    port: int
    log: Path

    def pulls(self) -> int:
        return count_pulls(self.log.read_text(errors="replace")) if self.log.exists() else 0


@contextlib.contextmanager
def running_registry(work: Path) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1 (a temporary configuration), stopped by pid."""
    port = _free_port()
    storage = work / "registry"
    shutil.rmtree(storage, ignore_errors=True)
    storage.mkdir(parents=True)
    config = work / "registry.yml"
    config.write_text(registry_config(port, storage))
    log = work / "registry.log"
    with log.open("wb") as out:
        child = start(
            ["docker-registry", "serve", config], stdout=out, stderr=STDOUT, stdin=DEVNULL
        )
    try:
        _wait_registry(child, port, log)
        yield Registry(port, log)
    finally:
        child.stop()
        child.close()


def _wait_registry(child: Child, port: int, log: Path) -> None:
    deadline = time.monotonic() + REGISTRY_READY_TIMEOUT
    while not _answers(f"http://127.0.0.1:{port}/v2/"):
        if child.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:]
            raise AtollError(f"docker-registry on 127.0.0.1:{port} did not answer:\n{tail}")
        time.sleep(0.2)


def push_pause(registry: Registry, work: Path) -> str:
    """atoll's pause OCI archive pushed into the registry with skopeo; the reference."""
    archive = work / "pause.oci.tar"
    write_pause_archive(archive, f"localhost/{PAUSE_REPOSITORY}:{PAUSE_TAG}")
    reference = f"127.0.0.1:{registry.port}/{PAUSE_REPOSITORY}:{PAUSE_TAG}"
    run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"oci-archive:{archive}",
            f"docker://{reference}",
        ],
        timeout=120,
    )
    return reference


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def seed_server(directory: Path) -> Iterator[int]:
    """cloud-init's NoCloud seeds (``<name>/meta-data``, ``<name>/user-data``) over HTTP
    on 127.0.0.1; yields the port."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="nocloud-seed", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Api:
    """The cluster's API server as its admin (``https://127.0.0.1``: S310 does not apply)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.server = plane.server
        self.context = ssl.create_default_context(cafile=os.fspath(plane.ca_file))
        pki = plane.layout.pki
        self.context.load_cert_chain(pki / "admin.crt", pki / "admin.key")

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.server + path, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=10, context=self.context) as answer:  # noqa: S310
            return json.loads(answer.read())

    def ready(self) -> frozenset[str]:
        return ready_nodes(self._call("GET", "/api/v1/nodes"))

    def delete_nodes(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(urllib.error.HTTPError):
                self._call("DELETE", f"/api/v1/nodes/{name}")


# -- the two kinds of node -------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    atoll: Path
    conventional: Path
    conventional_boot: KernelOverride  # without the per-node seed
    conventional_packages: int


@dataclass(frozen=True)
class Services:
    """What a guest reaches on the host: the API, the registry, the seeds."""

    join: dict[str, Any]
    api_port: int
    registry_port: int
    seed_port: int
    seeds: Path


def _atoll_disk(work: Path, cache: Path, epoch: int, reporter: Reporter) -> Path:
    composed = compose(MANIFEST, work / "repo", reporter, cache=cache, source_date_epoch=epoch)
    image = work / "atoll-kubernetes.img"
    build_disk(plan_disk(work / "repo", composed.ref, image, size=3072 * MIB), reporter)
    return image


def _install_kubernetes(tree: Path, kubelet: Path, registry: str) -> None:
    """What the conventional node's admin installs: the kubelet binary and unit (upstream's
    install docs), containerd's CRI settings and registry, the CNI bridge, the prerequisites."""
    local = tree / "usr/local/bin"
    local.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kubelet, local / "kubelet")
    (local / "kubelet").chmod(0o755)
    writes = {
        "etc/systemd/system/kubelet.service": KUBELET_UNIT,
        "etc/containerd/config.toml": containerd_config(registry),
        f"etc/containerd/certs.d/{registry}/hosts.toml": hosts_toml(registry),
        "etc/modules-load.d/k8s.conf": MODULES_LOAD,
        "etc/sysctl.d/k8s.conf": SYSCTL,
        CNI_CONFLIST.lstrip("/"): _cni_conflist(),
    }
    for path, content in writes.items():
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def _cni_conflist() -> str:
    """The same bridge network as the atoll image's (examples/kubernetes.toml)."""
    for entry in load_manifest(MANIFEST).files:
        if str(entry.path) == CNI_CONFLIST and entry.content is not None:
            return entry.content
    raise AtollError(f"{MANIFEST}: no inline {CNI_CONFLIST}")


def _conventional_disk(tarball: Path, kubelet: Path, work: Path) -> tuple[Path, KernelOverride]:
    tree = work / "conventional-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    try:
        run(["tar", "-xf", tarball, "-C", tree, "--numeric-owner"])
        _install_kubernetes(tree, kubelet, registry_address())
        disk, kernel, initrd = tree_disk(tree, tarball, work, "conventional", "6G")
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return disk, KernelOverride(kernel, "", initrd)


def build_conventional(
    kubelet: Path, work: Path, cache: Path, epoch: int, reporter: Reporter
) -> tuple[Path, KernelOverride, int]:
    """The conventional node's disk (no boot): the baseline plus the Kubernetes packages,
    the kubelet and its settings; its kernel and initrd; its package count."""
    manifest = load_manifest(MANIFEST)
    index = load_index(manifest.distribution, cache, reporter)
    baseline = build_baseline_rootfs(
        manifest.distribution,
        manifest.kernel.package,
        index.fingerprint,
        cache,
        reporter,
        source_date_epoch=epoch,
        extra=CONVENTIONAL_PACKAGES,
    )
    disk, boot = _conventional_disk(baseline.tarball, kubelet, work)
    return disk, boot, baseline.packages


def _spec(kind: str, name: str, images: Images, services: Services) -> BootSpec:
    api = HostService(services.api_port, services.api_port)
    if kind == ATOLL:
        user_data = services.seeds / f"{name}.toml"
        user_data.write_text(atoll_user_data(name, services.join))
        return BootSpec(
            images.atoll,
            Firmware.DIRECT,
            user_data=user_data,
            snapshot=True,
            memory_mib=MEMORY_MIB,
            host_services=(api,),
        )
    seed = services.seeds / name
    seed.mkdir(parents=True, exist_ok=True)
    (seed / "meta-data").write_text(meta_data(name))
    (seed / "user-data").write_text(cloud_config(services.join))
    (seed / "vendor-data").write_text("")
    boot = images.conventional_boot
    return BootSpec(
        images.conventional,
        Firmware.DIRECT,
        snapshot=True,
        memory_mib=MEMORY_MIB,
        kernel_override=KernelOverride(boot.kernel, conventional_append(name), boot.initrd),
        host_services=(
            api,
            HostService(REGISTRY_GUEST_PORT, services.registry_port),
            HostService(SEED_GUEST_PORT, services.seed_port),
        ),
    )


def boot_wave(specs: Mapping[str, BootSpec], api: Api, timeout: float) -> dict[str, float]:
    """Start every machine at once; seconds from each one's qemu start to its Node Ready."""
    started: dict[str, float] = {}
    ready: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        machines = {}
        for name, spec in specs.items():
            started[name] = time.monotonic()
            machines[name] = stack.enter_context(Machine(spec))
        deadline = time.monotonic() + timeout
        while len(ready) < len(specs):
            now = time.monotonic()
            for name in api.ready() - ready.keys():
                if name in specs:
                    ready[name] = round(now - started[name], 2)
            if len(ready) == len(specs):
                break
            _check_progress(machines, ready, deadline)
            time.sleep(SAMPLE)
    return ready


def _check_progress(
    machines: Mapping[str, Machine], ready: Mapping[str, float], deadline: float
) -> None:
    for name, vm in machines.items():
        if name in ready:
            continue
        vm.poll()
        if not vm.running or time.monotonic() > deadline:
            tail = "\n".join(vm.console.tail[-30:])
            why = "stopped" if not vm.running else "not Ready in time"
            raise AtollError(f"node {name}: {why} (console {vm.console_log}):\n{tail}")


# -- the run ---------------------------------------------------------------------------


@dataclass
class Recorder:
    images: Images
    services: Services
    api: Api
    reporter: Reporter
    log: Path  # one JSON line per wave, as it ends: what a stopped run had measured
    waves: int = 0

    def wave(self, kind: str, count: int) -> list[float]:
        self.waves += 1
        names = [f"{kind[:4]}-w{self.waves}-{i + 1}" for i in range(count)]
        specs = {name: _spec(kind, name, self.images, self.services) for name in names}
        with self.reporter.stage(f"ready {kind}", f"{count} node(s), wave {self.waves}"):
            ready = boot_wave(specs, self.api, READY_TIMEOUT)
        self.api.delete_nodes(names)
        seconds = [ready[n] for n in names]
        self.reporter.info(f"{kind} x{count}: " + ", ".join(f"{s:.1f}s" for s in seconds))
        with self.log.open("a") as out:
            out.write(json.dumps({"kind": kind, "nodes": count, "seconds": seconds}) + "\n")
        return seconds


def _single(recorder: Recorder, count: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(count):
        for kind in KINDS:
            runs[kind] += recorder.wave(kind, 1)
    return runs


def _scale(
    recorder: Recorder, nodes: Sequence[int]
) -> tuple[dict[int, dict[str, list[float]]], str | None]:
    """The scale-out waves; a wave that fails ends the scale-out (a larger N would fare
    no better) and is reported, keeping what was measured before it."""
    done: dict[int, dict[str, list[float]]] = {}
    for n in nodes:
        try:
            done[n] = {kind: recorder.wave(kind, n) for kind in KINDS}
        except AtollError as e:
            return done, f"{n} nodes at once: {e.message.splitlines()[0]}"
    return done, None


def _kubernetes_build(reporter: Reporter) -> tuple[KubernetesBinaries, float]:
    began = time.monotonic()
    binaries = build_kubernetes(reporter)
    return binaries, round(time.monotonic() - began, 1)


def _figures(
    single: Mapping[str, list[float]],
    scale: Mapping[int, Mapping[str, list[float]]],
    extra: Mapping[str, object],
) -> dict[str, object]:
    atoll_s = round(statistics.median(single[ATOLL]), 1)
    conv_s = round(statistics.median(single[CONVENTIONAL]), 1)
    figures: dict[str, object] = {
        "atoll qemu start to Node Ready, median of 1 node (s)": atoll_s,
        "conventional qemu start to Node Ready, median of 1 node (s)": conv_s,
        "atoll / conventional, 1 node": ratio(atoll_s, conv_s),
        "runs of 1 node (s)": {kind: single[kind] for kind in KINDS},
    }
    for n, waves in scale.items():
        atoll_d, conv_d = distribution(waves[ATOLL]), distribution(waves[CONVENTIONAL])
        figures[f"{n} nodes at once, atoll (s)"] = atoll_d
        figures[f"{n} nodes at once, conventional (s)"] = conv_d
        figures[f"{n} nodes at once, atoll / conventional P50, P90"] = [
            ratio(atoll_d["p50"], conv_d["p50"]),
            ratio(atoll_d["p90"], conv_d["p90"]),
        ]
    figures.update(extra)
    return figures


def read_waves(
    text: str, *, source: str
) -> tuple[dict[str, list[float]], dict[int, dict[str, list[float]]]]:
    """The single-node runs and the scale-out waves of a ``waves.jsonl`` (one JSON line per
    wave, as :class:`Recorder` writes them); an N that lacks one of the kinds is left out."""
    single: dict[str, list[float]] = {kind: [] for kind in KINDS}
    scale: dict[int, dict[str, list[float]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            wave = json.loads(line)
            kind, nodes, seconds = wave["kind"], int(wave["nodes"]), wave["seconds"]
            values = [float(s) for s in seconds]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{source}:{number}: not a wave ({e})") from None
        if kind not in KINDS or len(values) != nodes:
            raise InputError(f"{source}:{number}: not a wave of {nodes} {kind!r} node(s)")
        if nodes == 1:
            single[kind] += values
        else:
            scale.setdefault(nodes, {})[kind] = values
    if not all(single.values()):
        raise InputError(f"{source}: no single-node run of each kind")
    return single, {n: waves for n, waves in scale.items() if set(waves) == set(KINDS)}


def _result(
    single: Mapping[str, list[float]],
    scale: Mapping[int, Mapping[str, list[float]]],
    extra: Mapping[str, object],
) -> dict[str, object]:
    one = ratio(statistics.median(single[ATOLL]), statistics.median(single[CONVENTIONAL]))
    return {
        "figures": _figures(single, scale, extra),
        "targets": [
            {
                "name": "atoll / conventional, qemu start to Node Ready, 1 node (TCG)",
                "value": one,
                "target": f"<= {TARGET_RATIO}",
                "met": one <= TARGET_RATIO,
            }
        ],
        "series": {
            "ready seconds": {
                "1": {kind: single[kind] for kind in KINDS},
                **{str(n): dict(waves) for n, waves in scale.items()},
            }
        },
    }


def run_benchmark(workdir: Path, reporter: Reporter) -> dict[str, object]:
    replay = os.environ.get(WAVES_ENV)
    if replay:  # a stopped run's waves, made a page without booting anything again
        path = Path(replay)
        single, scale = read_waves(path.read_text(), source=replay)
        return _result(single, scale, {"waves read from (a stopped run)": replay})
    return _measure(workdir, reporter)


def _measure(workdir: Path, reporter: Reporter) -> dict[str, object]:
    runs, nodes = parse_runs(os.environ.get(RUNS_ENV)), parse_nodes(os.environ.get(NODES_ENV))
    workdir.mkdir(parents=True, exist_ok=True)
    cache = default_cache()  # the Kubernetes build and the apt archives: never a cold build here
    epoch = int(time.time())
    binaries, lookup = _kubernetes_build(reporter)
    atoll_disk = _atoll_disk(workdir, cache, epoch, reporter)
    disk, boot, packages = build_conventional(
        binaries.binaries["kubelet"], workdir, cache, epoch, reporter
    )
    images = Images(atoll_disk, disk, boot, packages)
    seeds = workdir / "seeds"
    shutil.rmtree(seeds, ignore_errors=True)
    seeds.mkdir()
    with (
        running_registry(workdir) as registry,
        seed_server(seeds) as seed_port,
        running_cluster(workdir / "cluster", binaries.binaries) as plane,
    ):
        push_pause(registry, workdir)
        join = json.loads(plane.join_file.read_text())
        services = Services(join, join["port"], registry.port, seed_port, seeds)
        waves = workdir / "waves.jsonl"
        waves.unlink(missing_ok=True)
        recorder = Recorder(images, services, Api(plane), reporter, waves)
        single = _single(recorder, runs)
        scale, failed = _scale(recorder, nodes)
        pulls = registry.pulls()
    built = (
        f"{binaries.version} from the cache ({lookup} s to find it); cold build time "
        "not recorded by the build's cache entry"
        if binaries.from_cache
        else f"{binaries.version} built in {lookup} s (cold)"
    )
    extra = {
        "conventional packages (dpkg)": packages,
        "pause manifest fetches from the registry": pulls,
        **({"scale-out failed": failed} if failed else {}),
        "Kubernetes build": built,
    }
    return _result(single, scale, extra)

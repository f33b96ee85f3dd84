"""``atoll cluster up|down|status``: a single-host Kubernetes control plane on 127.0.0.1.

What runs: Debian's etcd (plain HTTP on loopback, one member), kube-apiserver,
kube-controller-manager and kube-scheduler from :mod:`atoll.cluster.build`,
each a child of ``up`` in its own session (a Ctrl-C on the terminal does not
reach them), its output in ``<dir>/logs/<name>.log``. ``up`` starts them in
order, each once the one before it is healthy, and returns when all are; the
processes keep running, their pids and start times in ``<dir>/state.json``.
``down`` stops exactly those processes: a pid whose start time (``/proc/<pid>/stat``)
is not the recorded one is another process and is left alone.

Everything is in one directory (``--dir``, default ``build/cluster``):

* ``cluster.json``: the ports (chosen free on 127.0.0.1 when the directory is
  first set up, then kept, so the kubeconfigs and the join file stay valid
  across ``down``/``up``; a port taken since is an error naming it), the token;
* ``pki/``: the cluster CA and certificates (:mod:`atoll.cluster.pki`);
* ``admin.kubeconfig`` (and one per controller);
* ``join.json``: what a node needs to join: the server URL a guest dials, the
  CA and the bootstrap token, and the host port to forward it to;
  the token's Secret expires :data:`TOKEN_TTL` after the last ``up`` (each
  ``up`` moves its ``expiration``; the token cleaner deletes it once expired,
  and the next ``up`` creates it again), so a leaked join file does not let
  nodes join for ever;
* ``etcd/`` (the data: the cluster survives ``down``/``up``), ``logs/``,
  ``serving/`` (the controllers' self-signed serving certificates).

Guests under qemu user networking reach host services only through
``guestfwd`` relays at :data:`atoll.tools.qemu.HOST_SERVICES_ADDRESS`; the API
server's certificate names that address, and the join file's server is
``https://<that address>:<port>``, the API server's own port on the host, so
a relay forwards the same port and the ``kubernetes`` Service's endpoint (the
advertised address and port) is an address guests can dial.

Extra kube-apiserver flags (``--apiserver-arg``, ``up(apiserver_args=)``) come
after atoll's own, so one of them overrides atoll's value; tests use it for a
low ``--max-requests-inflight`` (an API server that answers 429 under load).

Decisions are pure functions (the flags, the bootstrap objects, what ``down``
must do for each recorded process) tested with tables; the rest applies them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.cluster import pki
from atoll.durable import write_atomic
from atoll.errors import AtollError, InputError
from atoll.process import DEVNULL, STDOUT, Child, start, which
from atoll.tools.qemu import HOST_SERVICES_ADDRESS

DEFAULT_DIR = Path("build/cluster")
FORMAT = 1
SERVICE_CIDR = "10.96.0.0/12"
CLUSTER_DOMAIN = "cluster.local"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
PORT_NAMES = ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
READY_TIMEOUT = 120.0
STOP_GRACE = 10.0
TOKEN_TTL = 24 * 3600.0
"""Seconds the bootstrap token stays valid after an ``up``."""


class ClusterError(AtollError):
    """The control plane could not start, stop or be read; the message names the component."""


# -- the directory ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def config(self) -> Path:
        return self.root / "cluster.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def join(self) -> Path:
        return self.root / "join.json"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def serving(self) -> Path:
        return self.root / "serving"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    def kubeconfig(self, user: str) -> Path:
        return self.root / f"{user}.kubeconfig"

    def log(self, component: str) -> Path:
        return self.root / "logs" / f"{component}.log"


@dataclass(frozen=True)
class ClusterConfig:
    """What is fixed when a directory is first set up (``cluster.json``)."""

    ports: dict[str, int]
    token: pki.BootstrapToken
    service_cidr: str = SERVICE_CIDR
    guest_address: str = HOST_SERVICES_ADDRESS

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def guest_server(self) -> str:
        # The same port as on the host: the `kubernetes` Service's endpoint
        # (advertised address, secure port) is then an address guests can dial.
        return f"https://{self.guest_address}:{self.ports['kube-apiserver']}"

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "ports": self.ports,
            "token": str(self.token),
            "service_cidr": self.service_cidr,
            "guest_address": self.guest_address,
        }


def parse_config(text: str, *, source: str) -> ClusterConfig:
    try:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise InputError(f"{source}: format {raw.get('format')!r}, expected {FORMAT}")
        ports = {name: int(raw["ports"][name]) for name in PORT_NAMES}
        return ClusterConfig(
            ports,
            pki.parse_token(raw["token"], source=f"{source}: token"),
            str(raw["service_cidr"]),
            str(raw["guest_address"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{source}: not a cluster configuration: {e!r}") from e


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane, as tests and the demo use it."""

    directory: Path
    config: ClusterConfig
    pids: dict[str, int]
    # The processes, when this process started them (up, not read back from state.json).
    children: tuple[Child, ...] = field(default=(), compare=False, repr=False)

    @property
    def layout(self) -> Layout:
        return Layout(self.directory)

    @property
    def kubeconfig(self) -> Path:
        return self.layout.admin_kubeconfig

    @property
    def server(self) -> str:
        return self.config.server

    @property
    def ca_file(self) -> Path:
        return self.layout.pki / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    @property
    def token(self) -> str:
        return str(self.config.token)

    @property
    def join_file(self) -> Path:
        return self.layout.join


# -- pure decisions: flags, objects ----------------------------------------------------


def etcd_argv(etcd: str, layout: Layout, ports: Mapping[str, int]) -> list[str]:
    client = f"http://127.0.0.1:{ports['etcd']}"
    peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    return [
        etcd,
        "--name=atoll",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=atoll={peer}",
        "--initial-cluster-state=new",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def check_apiserver_args(args: Sequence[str]) -> list[str]:
    """Extra kube-apiserver flags, each ``--name=value`` or ``--name`` (InputError otherwise:
    a separate value would be taken for a flag of its own)."""
    for arg in args:
        if not arg.startswith("--") or len(arg) < 3 or " " in arg.split("=", 1)[0]:
            raise InputError(f"--apiserver-arg {arg!r}: expected --name=value or --name")
    return list(args)


def apiserver_argv(
    binary: Path, layout: Layout, config: ClusterConfig, extra: Sequence[str] = ()
) -> list[str]:
    """atoll's flags, then ``extra`` (the last of a repeated flag wins)."""
    p = layout.pki
    return [
        os.fspath(binary),
        f"--etcd-servers=http://127.0.0.1:{config.ports['etcd']}",
        "--bind-address=127.0.0.1",
        # The address in the `kubernetes` Service's endpoints: where guests reach
        # this server (loopback is refused there), on the same port.
        f"--advertise-address={config.guest_address}",
        f"--secure-port={config.ports['kube-apiserver']}",
        f"--cert-dir={layout.serving / 'kube-apiserver'}",
        f"--tls-cert-file={p / 'apiserver.crt'}",
        f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
        f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        f"--service-cluster-ip-range={config.service_cidr}",
        f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
        f"--service-account-key-file={p / 'sa.pub'}",
        f"--service-account-signing-key-file={p / 'sa.key'}",
        "--allow-privileged=true",
        "--profiling=false",
        *check_apiserver_args(extra),
    ]


def _controller_common(layout: Layout, user: str, port: int) -> list[str]:
    kubeconfig = layout.kubeconfig(user)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={layout.serving / user}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def controller_manager_argv(binary: Path, layout: Layout, config: ClusterConfig) -> list[str]:
    p = layout.pki
    return [
        os.fspath(binary),
        *_controller_common(layout, "controller-manager", config.ports["kube-controller-manager"]),
        # The defaults (node lifecycle, disruption, CSR signing and approving among
        # them) plus the two that handle bootstrap tokens, which are off by default.
        "--controllers=*,bootstrapsigner,tokencleaner",
        f"--cluster-signing-cert-file={p / 'ca.crt'}",
        f"--cluster-signing-key-file={p / 'ca.key'}",
        f"--root-ca-file={p / 'ca.crt'}",
        f"--service-account-private-key-file={p / 'sa.key'}",
        "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={config.service_cidr}",
        "--cluster-name=atoll",
    ]


def scheduler_argv(binary: Path, layout: Layout, config: ClusterConfig) -> list[str]:
    return [
        os.fspath(binary),
        *_controller_common(layout, "scheduler", config.ports["kube-scheduler"]),
    ]


def health_url(component: str, ports: Mapping[str, int]) -> str:
    """The URL that answers 200 when ``component`` is ready."""
    paths = {
        "etcd": "http://127.0.0.1:{}/health",
        "kube-apiserver": "https://127.0.0.1:{}/readyz",
        "kube-controller-manager": "https://127.0.0.1:{}/healthz",
        "kube-scheduler": "https://127.0.0.1:{}/healthz",
    }
    return paths[component].format(ports[component])


def kubeconfig(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, user: str) -> str:
    """A kubeconfig with everything embedded (JSON is YAML: kubectl and kopf read it)."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "atoll",
                "cluster": {"server": server, "certificate-authority-data": pki.b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": pki.b64(cert_pem),
                    "client-key-data": pki.b64(key_pem),
                },
            }
        ],
        "contexts": [{"name": "atoll", "context": {"cluster": "atoll", "user": user}}],
        "current-context": "atoll",
    }
    return json.dumps(document, indent=2) + "\n"


RBAC = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
# What kubeadm binds for kubelet TLS bootstrapping (its names, under atoll:).
BOOTSTRAP_BINDINGS = (
    ("atoll:kubelet-bootstrap", "system:node-bootstrapper", "system:bootstrappers"),
    (
        "atoll:node-autoapprove-bootstrap",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        "system:bootstrappers",
    ),
    (
        "atoll:node-autoapprove-certificate-rotation",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        "system:nodes",
    ),
)


def expiration(now: float, ttl: float = TOKEN_TTL) -> str:
    """The token Secret's ``expiration`` (RFC 3339, UTC) ``ttl`` seconds after ``now``."""
    return dt.datetime.fromtimestamp(now + ttl, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bootstrap_objects(token: pki.BootstrapToken, expires: str) -> list[tuple[str, dict[str, Any]]]:
    """The objects ``up`` creates (collection path, object): the bootstrap token's
    Secret (valid until ``expires``, see :func:`expiration`) and the bindings that let
    its holder ask for a node certificate and get it approved (and a node renew its own)."""
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"bootstrap-token-{token.id}", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": "atoll cluster up: joins atoll nodes",
            "token-id": token.id,
            "token-secret": token.secret,
            "expiration": expires,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:atoll",
        },
    }
    objects = [("/api/v1/namespaces/kube-system/secrets", secret)]
    for name, role, group in BOOTSTRAP_BINDINGS:
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        }
        objects.append((RBAC, binding))
    return objects


def join_document(config: ClusterConfig, ca_pem: bytes) -> dict[str, Any]:
    """``join.json``: the server a guest dials, reached through a guestfwd relay from
    ``guest_address:port`` to ``127.0.0.1:port`` on the host
    (``atoll.tools.qemu.HostService(guest=port, host=port)``)."""
    return {
        "server": config.guest_server,
        "ca": ca_pem.decode("ascii"),
        "token": str(config.token),
        "guest_address": config.guest_address,
        "port": config.ports["kube-apiserver"],
        "host_server": config.server,
    }


# -- processes: what is recorded, and whether a pid is still that process ---------------


@dataclass(frozen=True)
class Recorded:
    component: str
    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat: clock ticks after boot
    boot_id: str  # /proc/sys/kernel/random/boot_id: start times repeat after a reboot


def proc_start_time(stat: str) -> tuple[str, int]:
    """(state, start time) from the text of ``/proc/<pid>/stat`` (the command may hold
    spaces and parentheses: fields count from the last ``)``)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _read_stat(pid: int) -> tuple[str, int] | None:
    try:
        return proc_start_time(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def is_running(recorded: Recorded, stat: tuple[str, int] | None, boot_id: str) -> bool:
    """Is the recorded process still there (same boot, not ended, not a zombie, not a
    new process that was given the same pid)?"""
    return (
        recorded.boot_id == boot_id
        and stat is not None
        and stat[0] != "Z"
        and stat[1] == recorded.start_time
    )


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _alive(recorded: Recorded) -> bool:
    # A child of ours that ended stays a zombie until its Child is waited for
    # (running_cluster does): is_running counts a zombie as ended.
    return is_running(recorded, _read_stat(recorded.pid), _boot_id())


def read_state(layout: Layout) -> list[Recorded]:
    try:
        raw = json.loads(layout.state.read_text())
        return [
            # A state from before boot ids were recorded is never taken for running.
            Recorded(r["component"], int(r["pid"]), int(r["start_time"]), r.get("boot_id", ""))
            for r in raw
        ]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as e:
        raise ClusterError(f"{layout.state}: unreadable: {e!r}") from e


def _write_state(layout: Layout, recorded: Sequence[Recorded]) -> None:
    data = [
        {"component": r.component, "pid": r.pid, "start_time": r.start_time, "boot_id": r.boot_id}
        for r in recorded
    ]
    write_atomic(layout.state, (json.dumps(data, indent=2) + "\n").encode(), mode=0o644)


# -- apply: set up the directory ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def prepare(layout: Layout) -> ClusterConfig:
    """The directory's configuration: read it, or (first ``up``) create the PKI, the
    kubeconfigs and the join file."""
    if layout.config.exists():
        return parse_config(layout.config.read_text(), source=os.fspath(layout.config))
    layout.root.mkdir(parents=True, exist_ok=True)
    # Keys, kubeconfigs and the bootstrap token live here: the owner's only.
    layout.root.chmod(0o700)
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(PORT_NAMES):
        ports = {name: _free_port() for name in PORT_NAMES}
    config = ClusterConfig(ports, pki.new_token())
    pki.generate(
        layout.pki,
        pki.plan_certificates(service_cidr=config.service_cidr, guest_address=config.guest_address),
    )
    ca_pem = (layout.pki / "ca.crt").read_bytes()
    for user in ("admin", "controller-manager", "scheduler"):
        text = kubeconfig(
            config.server,
            ca_pem,
            (layout.pki / f"{user}.crt").read_bytes(),
            (layout.pki / f"{user}.key").read_bytes(),
            user,
        )
        write_atomic(layout.kubeconfig(user), text.encode(), mode=0o600)
    document = json.dumps(join_document(config, ca_pem), indent=2) + "\n"
    write_atomic(layout.join, document.encode(), mode=0o600)
    # Last: a directory with cluster.json is complete.
    write_atomic(  # it holds the bootstrap token: the owner's only
        layout.config, (json.dumps(config.as_json(), indent=2) + "\n").encode(), mode=0o600
    )
    return config


# -- apply: start, wait, stop ---------------------------------------------------------------


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines()[-lines:])


def _probe(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        # Always a URL of ours on 127.0.0.1 (health_url).
        with urllib.request.urlopen(url, timeout=2, context=context) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _probe_context(component: str, layout: Layout) -> ssl.SSLContext | None:
    if component == "etcd":
        return None
    if component == "kube-apiserver":
        return ssl.create_default_context(cafile=os.fspath(layout.pki / "ca.crt"))
    # The controllers serve with a self-signed certificate of their own (--cert-dir).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def healthy(component: str, layout: Layout, ports: Mapping[str, int]) -> bool:
    return _probe(health_url(component, ports), _probe_context(component, layout))


@dataclass
class _Starter:
    layout: Layout
    config: ClusterConfig
    timeout: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    children: list[Child]
    recorded: list[Recorded]

    def launch(self, component: str, argv: list[str]) -> None:
        log = self.layout.log(component)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            child = start(argv, stdin=DEVNULL, stdout=out, stderr=STDOUT, session=True)
        self.children.append(child)
        stat = _read_stat(child.pid)
        self.recorded.append(Recorded(component, child.pid, stat[1] if stat else -1, _boot_id()))
        _write_state(self.layout, self.recorded)
        self.wait_ready(component, child)

    def wait_ready(self, component: str, child: Child) -> None:
        deadline = self.clock() + self.timeout
        while not healthy(component, self.layout, self.config.ports):
            code = child.poll()
            if code is not None:
                raise ClusterError(
                    f"{component} exited with status {code} while starting; the end of "
                    f"{self.layout.log(component)}:\n{_tail(self.layout.log(component))}"
                )
            if self.clock() > deadline:
                raise ClusterError(
                    f"{component}: not ready after {self.timeout:g} s "
                    f"({health_url(component, self.config.ports)}); the end of "
                    f"{self.layout.log(component)}:\n{_tail(self.layout.log(component))}"
                )
            self.sleep(0.2)


def _check_ports(config: ClusterConfig) -> None:
    taken = [f"{name} {port}" for name, port in config.ports.items() if not _port_free(port)]
    if taken:
        raise ClusterError(
            "ports of this cluster are in use by another program: " + ", ".join(taken),
            hint="stop that program, or use another --dir (a new directory picks free ports)",
        )


def _check_not_running(layout: Layout) -> None:
    running = [r for r in read_state(layout) if _alive(r)]
    if running:
        listed = ", ".join(f"{r.component} (pid {r.pid})" for r in running)
        raise ClusterError(
            f"{layout.root}: the cluster is already running: {listed}",
            hint=f"atoll cluster down --dir {layout.root}",
        )


def _admin_context(layout: Layout) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=os.fspath(layout.pki / "ca.crt"))
    context.load_cert_chain(layout.pki / "admin.crt", layout.pki / "admin.key")
    return context


REPLACED_KINDS = ("Secret",)
"""Kinds ``up`` replaces when they exist (the token's Secret: its expiration moves)."""


def create_objects(
    server: str, context: ssl.SSLContext, objects: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """POST each object; one that exists already (409: a restarted cluster) is kept, or
    replaced (PUT) when it is of a kind in :data:`REPLACED_KINDS`."""
    for path, body in objects:
        if _send(server, context, "POST", path, body) == 409 and body["kind"] in REPLACED_KINDS:
            _send(server, context, "PUT", f"{path}/{body['metadata']['name']}", body)


def _send(
    server: str, context: ssl.SSLContext, method: str, path: str, body: dict[str, Any]
) -> int:
    """The HTTP status; 409 is returned, any other error raised naming the request."""
    request = urllib.request.Request(  # noqa: S310 (our own https:// server)
        server + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as e:
        if e.code == 409:
            return 409
        detail = e.read()[:300].decode(errors="replace")
        raise ClusterError(f"{method} {server}{path}: HTTP {e.code}: {detail}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ClusterError(f"{method} {server}{path}: {e}") from e


def up(
    directory: Path,
    binaries: Mapping[str, Path],
    *,
    etcd: str | None = None,
    timeout: float = READY_TIMEOUT,
    apiserver_args: Sequence[str] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.time,
) -> ControlPlane:
    """Start the control plane in ``directory`` and return once every component is
    healthy. Interrupted or failed, it stops what it started before raising.
    ``apiserver_args``: extra kube-apiserver flags (:func:`check_apiserver_args`)."""
    layout = Layout(directory.resolve())
    extra = check_apiserver_args(apiserver_args)
    etcd_binary = etcd if etcd is not None else which("etcd")
    _check_not_running(layout)
    config = prepare(layout)
    _check_ports(config)
    starter = _Starter(layout, config, timeout, clock, sleep, [], [])
    try:
        starter.launch("etcd", etcd_argv(etcd_binary, layout, config.ports))
        starter.launch(
            "kube-apiserver", apiserver_argv(binaries["kube-apiserver"], layout, config, extra)
        )
        objects = bootstrap_objects(config.token, expiration(now()))
        create_objects(config.server, _admin_context(layout), objects)
        starter.launch(
            "kube-controller-manager",
            controller_manager_argv(binaries["kube-controller-manager"], layout, config),
        )
        starter.launch("kube-scheduler", scheduler_argv(binaries["kube-scheduler"], layout, config))
    except BaseException:
        for child in reversed(starter.children):
            child.stop(STOP_GRACE)
        layout.state.unlink(missing_ok=True)
        raise
    pids = {r.component: r.pid for r in starter.recorded}
    return ControlPlane(layout.root, config, pids, tuple(starter.children))


def _stop_one(recorded: Recorded, grace: float, clock: Callable[[], float]) -> bool:
    """SIGTERM, up to ``grace`` seconds, then SIGKILL; False if it was not running."""
    if not _alive(recorded):
        return False
    _signal(recorded.pid, signal.SIGTERM)
    deadline = clock() + grace
    while _alive(recorded):
        if clock() > deadline:
            _signal(recorded.pid, signal.SIGKILL)
            deadline = clock() + grace
        time.sleep(0.05)
    return True


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended since we looked
        os.kill(pid, sig)


def down(
    directory: Path, *, grace: float = STOP_GRACE, clock: Callable[[], float] = time.monotonic
) -> list[Recorded]:
    """Stop the processes ``up`` recorded, the last started first; returns those that
    were running. Nothing recorded is running afterwards."""
    layout = Layout(directory.resolve())
    stopped = [r for r in reversed(read_state(layout)) if _stop_one(r, grace, clock)]
    layout.state.unlink(missing_ok=True)
    return stopped


@dataclass(frozen=True)
class ComponentStatus:
    component: str
    pid: int | None
    running: bool
    healthy: bool
    rss_kib: int | None


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def status(directory: Path) -> list[ComponentStatus]:
    """Each component: its recorded pid, whether that process runs, whether it answers
    its health check, its resident memory."""
    layout = Layout(directory.resolve())
    if not layout.config.exists():
        raise ClusterError(f"{layout.root}: no cluster here (atoll cluster up --dir {directory})")
    config = parse_config(layout.config.read_text(), source=os.fspath(layout.config))
    recorded = {r.component: r for r in read_state(layout)}
    answer = []
    for component in COMPONENTS:
        r = recorded.get(component)
        running = r is not None and _alive(r)
        answer.append(
            ComponentStatus(
                component,
                r.pid if r else None,
                running,
                running and healthy(component, layout, config.ports),
                _rss_kib(r.pid) if r and running else None,
            )
        )
    return answer


@contextlib.contextmanager
def running_cluster(
    directory: Path,
    binaries: Mapping[str, Path],
    *,
    timeout: float = READY_TIMEOUT,
    apiserver_args: Sequence[str] = (),
) -> Iterator[ControlPlane]:
    """``up`` for the length of a ``with`` block, ``down`` on the way out."""
    plane = up(directory, binaries, timeout=timeout, apiserver_args=apiserver_args)
    try:
        yield plane
    finally:
        down(directory)
        for child in plane.children:
            child.wait(STOP_GRACE)  # ended: reap it
            child.close()

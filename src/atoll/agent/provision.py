"""First-boot provisioning: apply the node's user data once, record it, never again.

This is the part of cloud-init/Ignition a container host needs, and nothing
more. It runs on the node (``atoll-firstboot.service`` runs
``python3 -m atoll.agent.provision`` early in boot) with the standard library
only. The user data's format, and its validation (which the host also runs
before any image is built, so a typo costs a second, not a build), are
:mod:`atoll.wire.userdata`'s.

Where it comes from, first found wins (:func:`find_user_data`):

1. qemu fw_cfg ``opt/atoll/user-data`` (``-fw_cfg name=opt/atoll/user-data,file=...``),
2. a config drive: a filesystem labelled ``ATOLL-CONFIG`` holding ``user-data.toml``,
3. ``/var/lib/atoll/user-data.toml``, written into the disk by ``atoll disk --user-data``.

Design: parse and validate everything into a frozen :class:`UserData`, then
compute a pure plan (:func:`plan`, a list of :class:`FileWrite`, from the user
data and the few :class:`NodeFacts` observed on the node) and apply it under a
root directory, so tests apply it to a temporary tree.

A ``[kubernetes]`` section gives the kubelet what it needs to join (the image's
``kubelet.service`` waits for these files, :mod:`atoll.compose.kubernetes`):
the cluster CA, a bootstrap kubeconfig with the token (the kubelet then asks
for its client certificate with a CSR and writes ``kubelet.conf`` itself) or a
``kubelet.conf`` with a pre-issued certificate, and its KubeletConfiguration.
Kubeconfigs and the configuration are written as JSON (which YAML readers take),
so no value can change their structure; the Node's name is the host name. The record
``/var/lib/atoll/firstboot.json`` is written last, atomically; the unit has
``ConditionPathExists=!`` on it, so a later boot never re-applies, even when
the user data is still attached. A node with no user data also gets a record
(source ``none``): attaching user data later does not re-provision a running
node, exactly like cloud-init's per-instance semantics.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.agent import command
from atoll.durable import write_atomic
from atoll.wire import kubelet
from atoll.wire.userdata import (
    CONFIG_DRIVE_FILE,
    CONFIG_DRIVE_LABEL,
    EMBEDDED_PATH,
    FW_CFG_NAME,
    KubernetesJoin,
    UserData,
    UserDataError,
    parse_user_data,
)

FW_CFG_PATH = Path("/sys/firmware/qemu_fw_cfg/by_name") / FW_CFG_NAME / "raw"
RECORD_PATH = "var/lib/atoll/firstboot.json"
CREDENTIALS_DIR = "etc/atoll/credentials"
FLEET_CONFIG = "etc/atoll/fleet.toml"
TIMESYNCD_DROPIN = "etc/systemd/timesyncd.conf.d/50-atoll.conf"
MOUNT_TIMEOUT = 60.0  # seconds for mount/umount of the config drive (atoll.agent.command)
# What kubelet.service waits for (format owner: atoll.wire.kubelet).
KUBERNETES_CA = kubelet.CA
BOOTSTRAP_KUBECONFIG = kubelet.BOOTSTRAP_KUBECONFIG
KUBECONFIG = kubelet.KUBECONFIG
KUBELET_CONFIG = kubelet.CONFIG
CONTAINERD_SOCKET = kubelet.CONTAINERD_SOCKET
RESOLV_CONF = "etc/resolv.conf"


@dataclass(frozen=True)
class FileWrite:
    """One step of a plan: write ``content`` to ``path`` (relative to the root)."""

    path: str
    content: bytes
    mode: int
    reason: str


@dataclass(frozen=True)
class NodeFacts:
    """What first boot's plan depends on besides the user data, observed on the node."""

    # The host's resolver configuration for the kubelet to give pods (None: the node
    # has none, so pods get no host name servers rather than failing to start).
    resolv_conf: str | None = None


def observe(root: Path) -> NodeFacts:
    present = os.path.lexists(root / RESOLV_CONF)
    return NodeFacts(resolv_conf="/" + RESOLV_CONF if present else None)


def plan(data: UserData, facts: NodeFacts | None = None) -> list[FileWrite]:
    """The files first boot writes for ``data``, relative to the root, in order."""
    writes: list[FileWrite] = []
    if data.hostname:
        writes.append(FileWrite("etc/hostname", f"{data.hostname}\n".encode(), 0o644, "hostname"))
    if data.ntp:
        body = "# Written once at first boot from user data.\n[Time]\nNTP=" + " ".join(data.ntp)
        writes.append(FileWrite(TIMESYNCD_DROPIN, (body + "\n").encode(), 0o644, "ntp"))
    if data.controller or data.update_server:
        # Read by the agent's update loop (atoll.agent.update_loop.load_config).
        body = "# Written once at first boot from user data.\n"
        for key, value in (
            ("controller", data.controller),
            ("server", data.update_server),
            ("channel", data.channel),
            ("interval", data.interval),
        ):
            if value is not None:
                body += f"{key} = {json.dumps(value)}\n"
        if data.labels:
            body += "[labels]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in data.labels)
        writes.append(FileWrite(FLEET_CONFIG, body.encode(), 0o644, "fleet controller"))
    for name, content in data.credentials:
        writes.append(FileWrite(f"{CREDENTIALS_DIR}/{name}", content, 0o600, "credential"))
    for extra in data.files:
        writes.append(FileWrite(extra.path.lstrip("/"), extra.content, extra.mode, "file"))
    if data.kubernetes is not None:
        writes.extend(kubelet_files(data.kubernetes, facts or NodeFacts()))
    return writes


def kubelet_files(join: KubernetesJoin, facts: NodeFacts) -> list[FileWrite]:
    """The cluster CA, the kubelet's (bootstrap) kubeconfig and its configuration."""
    ca = FileWrite(KUBERNETES_CA, join.ca.encode(), 0o644, "kubernetes cluster CA")
    if join.token is not None:
        user: dict[str, str] = {"token": join.token}
        name, reason = BOOTSTRAP_KUBECONFIG, "kubelet bootstrap kubeconfig"
    else:
        user = {
            "client-certificate-data": _base64(join.certificate or ""),
            "client-key-data": _base64(join.key or ""),
        }
        name, reason = KUBECONFIG, "kubelet kubeconfig"
    kubeconfig = FileWrite(name, _json(_kubeconfig(join.server, user)), 0o600, reason)
    config = FileWrite(KUBELET_CONFIG, _json(kubelet_configuration(facts)), 0o644, "kubelet")
    return [ca, kubeconfig, config]


def _kubeconfig(server: str, user: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "cluster",
                "cluster": {"server": server, "certificate-authority": "/" + KUBERNETES_CA},
            }
        ],
        "users": [{"name": "kubelet", "user": user}],
        "contexts": [{"name": "kubelet", "context": {"cluster": "cluster", "user": "kubelet"}}],
        "current-context": "kubelet",
    }


def kubelet_configuration(facts: NodeFacts) -> dict[str, Any]:
    """The KubeletConfiguration: systemd cgroups (as containerd's SystemdCgroup), containerd's
    socket, rotating client certificates, only authenticated and API-server-authorized
    access to the kubelet's API, no static pods."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
        "containerRuntimeEndpoint": CONTAINERD_SOCKET,
        "rotateCertificates": True,
        # The image has no swap; a node given some still runs (NoSwap for pods).
        "failSwapOn": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": "/" + KUBERNETES_CA},
        },
        "authorization": {"mode": "Webhook"},
        # staticPodPath is left unset: this node runs no static pods.
        "resolvConf": facts.resolv_conf or "",
    }


def _json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _base64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def apply(writes: Sequence[FileWrite], root: Path) -> None:
    """Write every file of the plan under ``root``, each atomically and durably."""
    for write in writes:
        _write_file(root / write.path, write.content, write.mode)


def _write_file(target: Path, content: bytes, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    write_atomic(target, content, mode=mode)


def find_user_data(root: Path, fw_cfg: Path = FW_CFG_PATH) -> tuple[str, bytes] | None:
    """The first user data found: (source description, raw bytes), or None."""
    if fw_cfg.exists():
        return (f"fw_cfg {fw_cfg}", fw_cfg.read_bytes())
    drive = _read_config_drive(root)
    if drive is not None:
        return drive
    embedded = root / EMBEDDED_PATH
    if embedded.exists():
        return (str(embedded), embedded.read_bytes())
    return None


def _read_config_drive(root: Path) -> tuple[str, bytes] | None:
    device = root / "dev/disk/by-label" / CONFIG_DRIVE_LABEL
    if not device.exists():
        return None
    with _mounted_read_only(device) as mountpoint:
        path = mountpoint / CONFIG_DRIVE_FILE
        if not path.exists():
            return None
        return (f"config drive {device}:{CONFIG_DRIVE_FILE}", path.read_bytes())


@contextlib.contextmanager
def _mounted_read_only(device: Path) -> Iterator[Path]:
    mountpoint = tempfile.mkdtemp(prefix="atoll-config-")
    try:
        command.run(["mount", "-o", "ro", device, mountpoint], timeout=MOUNT_TIMEOUT)
        try:
            yield Path(mountpoint)
        finally:
            command.run(["umount", mountpoint], timeout=MOUNT_TIMEOUT)
    finally:
        with contextlib.suppress(OSError):  # rmdir only: never into a mounted drive
            os.rmdir(mountpoint)


def provision(root: Path, fw_cfg: Path = FW_CFG_PATH, live: bool = False) -> dict[str, Any]:
    """Apply user data once under ``root``; return the record (already written).

    Does nothing and returns the existing record when first boot already ran.
    ``live`` also sets the running kernel's hostname (on the node, not in tests).
    """
    record_path = root / RECORD_PATH
    if record_path.exists():
        existing: dict[str, Any] = json.loads(record_path.read_text())
        return existing
    found = find_user_data(root, fw_cfg)
    record: dict[str, Any] = {"source": "none", "applied": [], "time": int(time.time())}
    if found is not None:
        source, raw = found
        data = parse_user_data(raw, source)
        writes = plan(data, observe(root))
        apply(writes, root)
        if live and data.hostname:
            socket.sethostname(data.hostname)
        record.update(
            source=source,
            sha256=data.digest,
            applied=[{"path": "/" + w.path, "reason": w.reason} for w in writes],
        )
    _write_file(record_path, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atoll.agent.provision", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("/"), help="apply under this root")
    parser.add_argument("--fw-cfg", type=Path, default=FW_CFG_PATH, help="fw_cfg user data path")
    parser.add_argument("--check", type=Path, help="only validate this user data file")
    args = parser.parse_args(argv)
    try:
        if args.check is not None:
            parse_user_data(args.check.read_bytes(), str(args.check))
            print(f"{args.check}: ok")
            return 0
        record = provision(args.root, args.fw_cfg, live=args.root == Path("/"))
    except UserDataError as e:
        print(f"atoll-firstboot: user data rejected, nothing applied:\n{e}", file=sys.stderr)
        return 2
    except (OSError, command.CommandError) as e:
        print(f"atoll-firstboot: failed: {e}", file=sys.stderr)
        return 1
    applied = ", ".join(a["path"] for a in record.get("applied", [])) or "nothing"
    print(f"atoll-firstboot: user data from {record['source']}: applied {applied}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Kubernetes node components of an image with a ``[kubernetes]`` table.

What a node needs to become a Ready Kubernetes node, without pulling anything:

* the kubelet of the release ``kubernetes/go.mod`` pins, from
  :func:`atoll.cluster.build.build` (its cache: a compose never starts a cold
  build of many minutes unknowingly, it reports the stage and reuses the entry
  ``atoll cluster build`` made), installed as ``/usr/bin/kubelet``;
* ``kubelet.service``, which starts only once first boot wrote the join data
  (:mod:`atoll.agent.provision`: ``/var/lib/kubelet/config.yaml`` and a
  bootstrap or client kubeconfig), so an image without join data is a plain
  container host, and which restarts the kubelet after a delay when it stops;
* atoll's pause image (:func:`atoll.compose.oci.pause_image`, built here from
  ``pause.c``) in ``/usr/share/atoll/images/kubernetes/``, imported into
  containerd's ``k8s.io`` namespace (the CRI's; ``atoll-preload`` fills
  ``default``) by ``atoll-kubernetes-images.service`` before the kubelet starts;
* containerd's CRI configured for the kubelet: the systemd cgroup driver
  (``SystemdCgroup``, matching the kubelet's ``cgroupDriver``), that pause
  image as the sandbox image, and Debian's CNI plugin directory.

The manifest's check that the release is the pinned one reads the pin here
(:func:`pinned_release`), so ``atoll.manifest`` does not depend on the build.
The image's input digest covers the kubelet through the build's cache key
(:attr:`Kubelet.key`), which fixes its bytes (the build is reproducible).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll import durable
from atoll.cluster import build as cluster_build
from atoll.compose.oci import PAUSE_REFERENCE, write_pause_archive
from atoll.errors import AtollError, InputError
from atoll.manifest import PinnedRelease
from atoll.manifest.model import Manifest
from atoll.process import run
from atoll.progress import Reporter
from atoll.wire import kubelet
from atoll.wire.imagelist import DIRECTORY

KUBELET_PATH = "usr/bin/kubelet"
KUBELET_UNIT = "kubelet.service"
IMAGES_UNIT = "atoll-kubernetes-images.service"
IMAGES_DIR = f"{DIRECTORY}/kubernetes"
PAUSE_ARCHIVE = "pause.oci.tar"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CNI_CONF_DIR = "/etc/cni/net.d"
CONTAINERD_CONFIG = "etc/containerd/config.toml"

# Written by the agent at first boot from the user data's [kubernetes] section.
KUBELET_CONFIG = f"/{kubelet.CONFIG}"
BOOTSTRAP_KUBECONFIG = f"/{kubelet.BOOTSTRAP_KUBECONFIG}"
KUBECONFIG = f"/{kubelet.KUBECONFIG}"

KUBELET_SERVICE = f"""\
# Written by atoll compose (atoll.compose.kubernetes).
[Unit]
Description=kubelet: the Kubernetes node agent
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/
# Join data comes from first-boot user data (atoll-firstboot.service): without
# it this node is a plain container host and the kubelet does not start.
ConditionPathExists={KUBELET_CONFIG}
ConditionPathExists=|{BOOTSTRAP_KUBECONFIG}
ConditionPathExists=|{KUBECONFIG}
Wants=containerd.service {IMAGES_UNIT}
After=containerd.service {IMAGES_UNIT} atoll-firstboot.service network-online.target
# Restarted for as long as it takes (an API server not up yet, a CSR not approved yet).
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/bin/kubelet --config={KUBELET_CONFIG} \\
    --bootstrap-kubeconfig={BOOTSTRAP_KUBECONFIG} --kubeconfig={KUBECONFIG}
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
"""

IMAGES_SERVICE = f"""\
# Written by atoll compose (atoll.compose.kubernetes).
[Unit]
Description=atoll: import the images a Kubernetes node needs into containerd (k8s.io)
Documentation=file:///{IMAGES_DIR}
# Pulled in by kubelet.service (same conditions): only a node that joins needs them.
ConditionPathExists={KUBELET_CONFIG}
Requires=containerd.service
After=containerd.service
Before={KUBELET_UNIT}

[Service]
Type=oneshot
RemainAfterExit=yes
# The CRI's namespace; idempotent, and cheap enough (one small archive) to run at
# every start, so an upgraded image's pause is the one the node has.
ExecStart=/usr/bin/ctr --namespace k8s.io images import /{IMAGES_DIR}/{PAUSE_ARCHIVE}
"""

# What the CRI plugin of containerd needs for the kubelet, on top of atoll's
# containerd configuration (atoll.compose.customize).
_CRI = 'plugins."io.containerd.grpc.v1.cri"'


@dataclass(frozen=True)
class Kubelet:
    """The kubelet of the pinned release, in atoll cluster build's cache."""

    version: str
    key: str  # the build's cache key: it fixes the binary's bytes
    binary: Path


def pinned_release(wrapper: Path = cluster_build.WRAPPER) -> PinnedRelease:
    """The release ``<wrapper>/go.mod`` pins, read with the build's own parser (no go run)."""
    go_mod = wrapper / "go.mod"
    try:
        text = go_mod.read_text()
    except OSError as e:
        raise InputError(f"{go_mod}: cannot read the Kubernetes build wrapper: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{go_mod}: not UTF-8 text") from e
    parsed = cluster_build.parse_go_mod(text, source=os.fspath(go_mod))
    release = cluster_build.wrapper_release(parsed, source=os.fspath(go_mod))
    return PinnedRelease(release.version, _shown_path(go_mod))


def _shown_path(path: Path) -> str:
    """``kubernetes/go.mod`` when under the working directory, else the absolute path."""
    try:
        return os.fspath(path.relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(path)


def find_kubelet(manifest: Manifest, cache: Path, reporter: Reporter) -> Kubelet:
    """The kubelet for ``manifest`` from the build's cache (built into it only if absent)."""
    built = cluster_build.build(reporter, cache=cache)
    if built.version != manifest.kubernetes.version:  # validated: only if the pin moved since
        raise AtollError(
            f"{manifest.path}: [kubernetes] version {manifest.kubernetes.version} but the "
            f"build made {built.version}"
        )
    return Kubelet(built.version, built.key, built.binaries["kubelet"])


def install(root: Path, manifest: Manifest, kubelet: Kubelet) -> None:
    """The kubelet, its units, the pause image and containerd's CRI settings, into ``root``."""
    target = root / KUBELET_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    durable.copy(kubelet.binary, target, mode=0o755)
    os.chown(target, 0, 0)
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    durable.write_atomic(units / KUBELET_UNIT, KUBELET_SERVICE, mode=0o644)
    durable.write_atomic(units / IMAGES_UNIT, IMAGES_SERVICE, mode=0o644)
    images = root / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    write_pause_archive(images / PAUSE_ARCHIVE, PAUSE_REFERENCE)
    (images / PAUSE_ARCHIVE).chmod(0o644)
    config = root / CONTAINERD_CONFIG
    durable.write_atomic(config, kubernetes_containerd_config(config.read_text()), mode=0o644)
    if KUBELET_UNIT not in manifest.units.mask:
        run(["systemctl", f"--root={root}", "--no-reload", "--quiet", "enable", KUBELET_UNIT])


def kubernetes_containerd_config(text: str) -> str:
    """atoll's containerd configuration with what the kubelet needs from the CRI.

    ``text`` is the configuration compose wrote; the result sets, under the CRI
    plugin, the sandbox image, the CNI directories and ``SystemdCgroup`` for the
    default runtime, keeping every other setting.
    """
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AtollError(f"{CONTAINERD_CONFIG}: not TOML: {e}") from e
    cri = config.setdefault("plugins", {}).setdefault("io.containerd.grpc.v1.cri", {})
    cri["sandbox_image"] = PAUSE_REFERENCE
    cri.setdefault("cni", {}).update(bin_dir=CNI_BIN_DIR, conf_dir=CNI_CONF_DIR)
    runtimes = cri.setdefault("containerd", {})
    default = runtimes.setdefault("default_runtime_name", "runc")
    options = runtimes.setdefault("runtimes", {}).setdefault(default, {})
    options.setdefault("runtime_type", "io.containerd.runc.v2")
    options.setdefault("options", {})["SystemdCgroup"] = True
    header = (
        "# Written by atoll compose: containerd for a Kubernetes node (atoll.compose.kubernetes)\n"
        "# on top of atoll's container host settings (atoll.compose.customize).\n"
    )
    return header + dump_toml(config)


def dump_toml(table: Mapping[str, Any]) -> str:
    """``table`` as TOML: scalars first, then each sub-table under its dotted header.

    Enough for a configuration of strings, integers, booleans, lists of those and
    tables (what containerd's configuration holds); anything else is an error.
    """
    return "".join(_toml_lines(table, ()))


def _toml_lines(table: Mapping[str, Any], path: tuple[str, ...]) -> list[str]:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    lines = []
    if path and (scalars or not tables):
        lines.append("\n[" + ".".join(_toml_key(p) for p in path) + "]\n")
    lines.extend(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in scalars)
    for name, sub in tables:
        lines.extend(_toml_lines(sub, (*path, name)))
    return lines


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else _toml_string(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise AtollError(f"{CONTAINERD_CONFIG}: cannot write {type(value).__name__} {value!r} as TOML")


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in escaped):
        raise AtollError(f"{CONTAINERD_CONFIG}: control character in {text!r}")
    return f'"{escaped}"'

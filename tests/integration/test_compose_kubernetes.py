"""examples/kubernetes.toml composed for real: the committed tree holds what a node needs
to become a Ready Kubernetes node without pulling anything (docs/kubernetes.md)."""

from __future__ import annotations

import json
import os
import tarfile
import tomllib
from pathlib import Path

import pytest

from atoll.cluster.build import KubernetesBinaries
from atoll.compose import compose
from atoll.compose.oci import PAUSE_REFERENCE
from atoll.process import run
from atoll.progress import PlainReporter
from atoll.tools import ostree
from tests.conftest import ROOT, TEST_CACHE, TEST_EPOCH, ComposedImage
from tests.oci_archive import image_parts

MANIFEST = ROOT / "examples" / "kubernetes.toml"


@pytest.fixture(scope="module")
def kubernetes_image(
    kubernetes_binaries: KubernetesBinaries, tmp_path_factory: pytest.TempPathFactory
) -> ComposedImage:
    # kubernetes_binaries: the compose finds the kubelet built (in the background).
    repo = tmp_path_factory.mktemp("kubernetes") / "repo"
    result = compose(
        MANIFEST, repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH
    )
    return ComposedImage(repo, result.ref, result.commit, result.version, result)


def _cat(image: ComposedImage, path: str) -> bytes:
    return ostree.cat(image.repo, image.commit, path)


def test_the_kubelet_is_the_pinned_release(kubernetes_image: ComposedImage, tmp_path: Path) -> None:
    assert kubernetes_image.ref == "atoll/x86_64/kubernetes"
    kubelet = tmp_path / "kubelet"
    kubelet.write_bytes(_cat(kubernetes_image, "/usr/bin/kubelet"))
    kubelet.chmod(0o755)
    assert run([kubelet, "--version"], env={}).stdout.decode().strip() == "Kubernetes v1.35.4"
    entries = {
        e.path: e
        for e in ostree.list_tree(kubernetes_image.repo, kubernetes_image.commit, "/usr/bin")
    }
    assert entries["/usr/bin/kubelet"].mode & 0o777 == 0o755
    assert "kubelet" in kubernetes_image.result.seconds


def test_the_kubelet_unit_is_enabled_and_waits_for_join_data(
    kubernetes_image: ComposedImage,
) -> None:
    unit = _cat(kubernetes_image, "/usr/lib/systemd/system/kubelet.service").decode()
    assert "ConditionPathExists=/var/lib/kubelet/config.yaml" in unit
    assert "Restart=always" in unit
    paths = {e.path for e in ostree.list_tree(kubernetes_image.repo, kubernetes_image.commit)}
    assert "/usr/etc/systemd/system/multi-user.target.wants/kubelet.service" in paths
    images = _cat(kubernetes_image, "/usr/lib/systemd/system/atoll-kubernetes-images.service")
    assert b"ctr --namespace k8s.io images import" in images


def test_the_pause_image_is_preloaded_and_containerd_uses_it(
    kubernetes_image: ComposedImage, tmp_path: Path
) -> None:
    archive = tmp_path / "pause.oci.tar"
    archive.write_bytes(_cat(kubernetes_image, "/usr/share/atoll/images/kubernetes/pause.oci.tar"))
    config, layer = image_parts(archive)
    assert layer.getnames() == ["pause"] and config["config"]["User"] == "65535:65535"
    with tarfile.open(archive) as tar:
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        (listed,) = json.load(index_file)["manifests"]
    assert listed["annotations"]["io.containerd.image.name"] == PAUSE_REFERENCE
    containerd = _cat(kubernetes_image, "/usr/etc/containerd/config.toml").decode()
    cri = tomllib.loads(containerd)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == PAUSE_REFERENCE
    runtime = cri["containerd"]["default_runtime_name"]
    assert cri["containerd"]["runtimes"][runtime]["options"]["SystemdCgroup"] is True
    assert cri["containerd"]["runtimes"][runtime]["options"]["BinaryName"] == "/usr/bin/crun"
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"


def test_the_host_has_what_the_kubelet_and_the_cni_plugins_need(
    kubernetes_image: ComposedImage,
) -> None:
    repo, commit = kubernetes_image.repo, kubernetes_image.commit
    paths = {e.path for e in ostree.list_tree(repo, commit)}
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        assert f"/usr/lib/cni/{plugin}" in paths, plugin
    conflist = json.loads(_cat(kubernetes_image, "/usr/etc/cni/net.d/10-atoll-bridge.conflist"))
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap"]
    assert "/usr/sbin/iptables" in paths and "/usr/bin/mount" in paths
    sysctl = _cat(kubernetes_image, "/usr/lib/sysctl.d/60-atoll.conf").decode()
    assert "net.ipv4.ip_forward = 1\n" in sysctl
    assert "net.bridge.bridge-nf-call-iptables = 1\n" in sysctl
    modules = _cat(kubernetes_image, "/usr/lib/modules-load.d/kubernetes.conf").decode().split()
    for module in ("overlay", "br_netfilter", "bridge", "veth", "nf_conntrack"):
        assert module in modules, module
    kernel = str(ostree.commit_metadata(repo, commit, ["atoll.kernel"])["atoll.kernel"])
    kept = {os.path.basename(p).split(".ko")[0] for p in paths if f"/modules/{kernel}/" in p}
    for module in ("overlay", "br_netfilter", "bridge", "veth", "nf_conntrack", "nf_tables"):
        assert module in kept, module


def test_an_unchanged_kubernetes_image_is_a_no_op(kubernetes_image: ComposedImage) -> None:
    """The kubelet's part of the input digest (the build's key) is stable: nothing to do."""
    again = compose(
        MANIFEST,
        kubernetes_image.repo,
        PlainReporter(),
        cache=TEST_CACHE,
        source_date_epoch=TEST_EPOCH,
    )
    assert again.unchanged and again.commit == kubernetes_image.commit

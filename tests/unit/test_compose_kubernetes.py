"""The Kubernetes node parts of an image: the pin the manifest is checked against, and
containerd's CRI configured for the kubelet on top of atoll's own settings."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from atoll.compose import kubernetes
from atoll.compose.customize import CONTAINERD_CONFIG
from atoll.errors import AtollError, InputError


def test_the_pin_is_the_checkouts_go_mod() -> None:
    pinned = kubernetes.pinned_release()
    assert pinned.version == "v1.35.4"
    assert pinned.source.endswith("kubernetes/go.mod")


def test_a_wrapper_without_a_release_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"go\.mod: cannot read the Kubernetes build wrapper"):
        kubernetes.pinned_release(tmp_path)
    (tmp_path / "go.mod").write_text("module atoll.dev/k8s\n\nrequire k8s.io/kubernetes 1.35\n")
    with pytest.raises(InputError, match=r"'1\.35' is not a Kubernetes release"):
        kubernetes.pinned_release(tmp_path)


def _cri(text: str) -> dict[str, object]:
    cri: dict[str, object] = tomllib.loads(text)["plugins"]["io.containerd.grpc.v1.cri"]
    return cri


def test_containerd_gets_what_the_kubelet_needs_and_keeps_atolls_settings() -> None:
    before = tomllib.loads(CONTAINERD_CONFIG)
    text = kubernetes.kubernetes_containerd_config(CONTAINERD_CONFIG)
    after = tomllib.loads(text)
    cri = _cri(text)
    assert cri["sandbox_image"] == "localhost/atoll/pause:1"
    assert cri["cni"] == {"bin_dir": "/usr/lib/cni", "conf_dir": "/etc/cni/net.d"}
    runtimes = after["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    default = runtimes["default_runtime_name"]
    assert (
        default
        == before["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["default_runtime_name"]
    )
    assert runtimes["runtimes"][default]["options"]["SystemdCgroup"] is True
    # Everything else is as atoll's container host has it.
    runtimes["runtimes"][default]["options"].pop("SystemdCgroup")
    for key in ("sandbox_image", "cni"):
        after["plugins"]["io.containerd.grpc.v1.cri"].pop(key)
    assert after == before


def test_a_runtime_without_a_section_gets_one() -> None:
    cri = _cri(kubernetes.kubernetes_containerd_config("version = 2\n"))
    assert cri["containerd"] == {
        "default_runtime_name": "runc",
        "runtimes": {
            "runc": {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": True}}
        },
    }


@pytest.mark.parametrize(
    "table",
    [
        {"a": 1, "b": 'x\\"y', "c": [True, "z"], "t": {"d": {}, "e.f": {"g": False}}},
        {"plugins": {"x": {"y": {"z": 1}}}, "version": 2},
    ],
)
def test_dump_toml_reads_back_the_same(table: dict[str, object]) -> None:
    assert tomllib.loads(kubernetes.dump_toml(table)) == table


@pytest.mark.parametrize("value", [1.5, "a\nb", None])
def test_dump_toml_refuses_what_it_cannot_write(value: object) -> None:
    with pytest.raises(AtollError, match=r"config\.toml"):
        kubernetes.dump_toml({"k": value})


def test_the_kubelet_waits_for_join_data_and_restarts() -> None:
    unit = kubernetes.KUBELET_SERVICE
    assert "ConditionPathExists=/var/lib/kubelet/config.yaml\n" in unit
    assert "ConditionPathExists=|/etc/kubernetes/bootstrap-kubelet.conf\n" in unit
    assert "ConditionPathExists=|/etc/kubernetes/kubelet.conf\n" in unit
    assert "Restart=always\nRestartSec=5\n" in unit
    assert "StartLimitIntervalSec=0\n" in unit

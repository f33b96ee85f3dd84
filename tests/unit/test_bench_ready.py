"""The Node Ready benchmark's pure parts: percentiles, ratios, parameters, what the
conventional node is given (cloud-init, containerd, the registry) and the API's answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from atoll.agent.provision import NodeFacts, kubelet_configuration
from atoll.bench import ready
from atoll.bench.plots import attach, ready_distributions
from atoll.errors import InputError
from atoll.progress import PlainReporter

# Drawing imports matplotlib, which lists the fonts once per machine.
pytestmark = pytest.mark.usefixtures("matplotlib_fonts")

JOIN = {
    "server": "https://10.0.2.100:6443",
    "ca": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "token": "abcdef.0123456789abcdef",
    "port": 6443,
}


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([7.0], 50, 7.0),
        ([7.0], 90, 7.0),
        ([1.0, 2.0], 50, 1.5),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),  # unsorted in, linear between ranks
        ([1.0, 2.0, 3.0, 4.0], 90, 3.7),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 0, 10.0),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 100, 50.0),
        ([10.0, 20.0, 30.0, 40.0, 50.0], 90, 46.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert ready.percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_refuses(values: list[float], q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        ready.percentile(values, q)


def test_distribution_and_ratio() -> None:
    assert ready.distribution([30.0, 10.0, 20.0, 40.0]) == {
        "p50": 25.0,
        "p90": 37.0,
        "min": 10.0,
        "max": 40.0,
    }
    assert ready.ratio(20.0, 80.0) == 0.25
    assert ready.ratio(1.0, 3.0) == 0.333
    with pytest.raises(ValueError, match="baseline must be positive"):
        ready.ratio(1.0, 0.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, ready.SCALE), ("", ready.SCALE), ("none", ()), ("4", (4,)), ("4,2,2", (2, 4))],
)
def test_parse_nodes(text: str | None, expected: tuple[int, ...]) -> None:
    assert ready.parse_nodes(text) == expected


@pytest.mark.parametrize("text", ["two", "2,,4", "0", "2,-1"])
def test_parse_nodes_refuses(text: str) -> None:
    with pytest.raises(InputError, match=ready.NODES_ENV):
        ready.parse_nodes(text)


@pytest.mark.parametrize(("text", "expected"), [(None, ready.RUNS), (" ", ready.RUNS), ("1", 1)])
def test_parse_runs(text: str | None, expected: int) -> None:
    assert ready.parse_runs(text) == expected


@pytest.mark.parametrize("text", ["x", "0", "1.5"])
def test_parse_runs_refuses(text: str) -> None:
    with pytest.raises(InputError, match=ready.RUNS_ENV):
        ready.parse_runs(text)


def _node(name: str, *conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": t, "status": s} for t, s in conditions]},
    }


def test_ready_nodes_reads_the_ready_condition() -> None:
    answer = {
        "kind": "NodeList",
        "items": [
            _node("a", ("MemoryPressure", "False"), ("Ready", "True")),
            _node("b", ("Ready", "False")),
            _node("c", ("Ready", "Unknown")),
            _node("d"),  # registered, no status yet
            {"metadata": {"name": "e"}},
            _node("f", ("NetworkUnavailable", "True")),
        ],
    }
    assert ready.ready_nodes(answer) == {"a"}
    assert ready.ready_nodes({"kind": "NodeList", "items": None}) == frozenset()


def test_the_conventional_kubelet_runs_with_atolls_configuration() -> None:
    atoll = kubelet_configuration(NodeFacts(resolv_conf="/etc/resolv.conf"))
    assert atoll == ready.KUBELET_CONFIGURATION


def test_cloud_config_writes_the_join_files_then_starts_the_kubelet() -> None:
    text = ready.cloud_config(JOIN)
    first, rest = text.split("\n", 1)
    assert first == "#cloud-config"
    document = json.loads(rest)  # JSON is YAML
    files = {f["path"]: f for f in document["write_files"]}
    assert set(files) == {
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/bootstrap-kubelet.conf",
        "/var/lib/kubelet/config.yaml",
    }
    assert files["/etc/kubernetes/pki/ca.crt"]["content"] == JOIN["ca"]
    kubeconfig = json.loads(files["/etc/kubernetes/bootstrap-kubelet.conf"]["content"])
    assert files["/etc/kubernetes/bootstrap-kubelet.conf"]["permissions"] == "0600"
    assert kubeconfig["users"][0]["user"] == {"token": JOIN["token"]}
    assert kubeconfig["clusters"][0]["cluster"] == {
        "server": JOIN["server"],
        "certificate-authority": "/etc/kubernetes/pki/ca.crt",
    }
    config = json.loads(files["/var/lib/kubelet/config.yaml"]["content"])
    assert config == ready.KUBELET_CONFIGURATION
    assert document["runcmd"] == [["systemctl", "enable", "--now", "kubelet.service"]]


def test_seed_and_kernel_command_line() -> None:
    assert ready.meta_data("conv-w1-1") == "instance-id: conv-w1-1\nlocal-hostname: conv-w1-1\n"
    append = ready.conventional_append("conv-w1-1")
    assert append.startswith("root=LABEL=baseline rw console=ttyS0,115200 ")
    assert append.endswith(" ds=nocloud;s=http://10.0.2.100:8000/conv-w1-1/")


def test_atoll_user_data_is_the_vm_tests_recipe() -> None:
    text = ready.atoll_user_data("atol-w1-1", JOIN)
    assert text.startswith('[node]\nhostname = "atol-w1-1"\n[kubernetes]\n')
    assert f"token = {json.dumps(JOIN['token'])}\n" in text


def test_containerd_pulls_the_sandbox_image_from_the_plain_http_registry() -> None:
    registry = ready.registry_address()
    assert registry == "10.0.2.100:5000"
    config = ready.containerd_config(registry)
    assert 'sandbox_image = "10.0.2.100:5000/atoll/pause:1"' in config
    assert 'config_path = "/etc/containerd/certs.d"' in config
    assert "SystemdCgroup = true" in config
    assert 'bin_dir = "/usr/lib/cni"' in config
    hosts = ready.hosts_toml(registry)
    assert hosts.startswith('server = "http://10.0.2.100:5000"\n')
    assert '[host."http://10.0.2.100:5000"]' in hosts


def test_registry_listens_on_loopback_only(tmp_path: Path) -> None:
    config = ready.registry_config(41234, tmp_path / "store")
    assert "addr: 127.0.0.1:41234\n" in config
    assert f"rootdirectory: {tmp_path / 'store'}\n" in config


def test_count_pulls_counts_manifest_fetches_of_the_pause_image() -> None:
    log = "\n".join(
        [
            '127.0.0.1 - - [07/Dec/2026] "HEAD /v2/atoll/pause/manifests/1 HTTP/1.1" 200',
            '127.0.0.1 - - [07/Dec/2026] "GET /v2/atoll/pause/manifests/1 HTTP/1.1" 200',
            '127.0.0.1 - - [07/Dec/2026] "GET /v2/atoll/pause/manifests/sha256:ab HTTP/1.1" 200',
            '127.0.0.1 - - [07/Dec/2026] "GET /v2/atoll/pause/blobs/sha256:cd HTTP/1.1" 200',
            '127.0.0.1 - - [07/Dec/2026] "GET /v2/other/manifests/1 HTTP/1.1" 200',
        ]
    )
    assert ready.count_pulls(log) == 2
    assert ready.count_pulls("") == 0


def test_figures_quote_the_ratios_of_the_same_run() -> None:
    single = {"atoll": [30.0, 20.0, 25.0], "conventional": [100.0, 90.0, 120.0]}
    scale = {2: {"atoll": [40.0, 50.0], "conventional": [150.0, 200.0]}}
    figures = ready._figures(single, scale, {"extra": 1})
    assert figures["atoll qemu start to Node Ready, median of 1 node (s)"] == 25.0
    assert figures["conventional qemu start to Node Ready, median of 1 node (s)"] == 100.0
    assert figures["atoll / conventional, 1 node"] == 0.25
    assert figures["2 nodes at once, atoll (s)"] == {
        "p50": 45.0,
        "p90": 49.0,
        "min": 40.0,
        "max": 50.0,
    }
    assert figures["2 nodes at once, atoll / conventional P50, P90"] == [
        ready.ratio(45.0, 175.0),
        ready.ratio(49.0, 195.0),
    ]
    assert figures["extra"] == 1


def test_the_distributions_are_plotted(tmp_path: Path) -> None:
    seconds = {"1": {"atoll": [30.0], "conventional": [90.0]}, "4": {"atoll": [40.0, 41.0]}}
    results: dict[str, Any] = {"ready": {"figures": {}, "series": {"ready seconds": seconds}}}
    attach(results, tmp_path)
    assert results["ready"]["plots"] == ["img/ready-distribution.png"]
    assert (tmp_path / "img/ready-distribution.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no times"):
        ready_distributions({"1": {"atoll": []}}, tmp_path / "empty.png")


def _wave(kind: str, *seconds: float) -> str:
    return json.dumps({"kind": kind, "nodes": len(seconds), "seconds": list(seconds)})


def test_read_waves_splits_single_runs_from_the_scale_out() -> None:
    text = "\n".join(
        [
            _wave("atoll", 363.84),
            _wave("conventional", 948.04),
            _wave("atoll", 498.86),
            "",
            _wave("atoll", 500.0, 600.0),
            _wave("conventional", 900.0, 1000.0),
            _wave("atoll", 1.0, 2.0, 3.0, 4.0),  # N=4 stopped before its conventional wave
        ]
    )
    single, scale = ready.read_waves(text, source="w.jsonl")
    assert single == {"atoll": [363.84, 498.86], "conventional": [948.04]}
    assert scale == {2: {"atoll": [500.0, 600.0], "conventional": [900.0, 1000.0]}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"w.jsonl:1: not a wave"),
        (_wave("atoll", 1.0) + '\n{"kind": "atoll"}', r"w.jsonl:2: not a wave"),
        ('{"kind": "other", "nodes": 1, "seconds": [1]}', r"w.jsonl:1: not a wave of 1 'other'"),
        ('{"kind": "atoll", "nodes": 2, "seconds": [1]}', r"w.jsonl:1: not a wave of 2"),
        (_wave("atoll", 1.0), "no single-node run of each kind"),
    ],
)
def test_read_waves_refuses(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ready.read_waves(text, source="w.jsonl")


def test_a_stopped_runs_waves_make_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waves = tmp_path / "waves.jsonl"
    waves.write_text(_wave("atoll", 30.0) + "\n" + _wave("conventional", 120.0) + "\n")
    monkeypatch.setenv(ready.WAVES_ENV, str(waves))
    result: dict[str, Any] = ready.run_benchmark(tmp_path / "work", PlainReporter())
    assert result["targets"][0]["value"] == 0.25
    assert result["targets"][0]["met"] is True
    assert result["figures"]["waves read from (a stopped run)"] == str(waves)
    assert result["series"]["ready seconds"] == {"1": {"atoll": [30.0], "conventional": [120.0]}}
    assert not (tmp_path / "work").exists()  # nothing built, nothing booted

"""The fleet operator's pure parts: NodePool specs, the shipped CRD, Node annotations.

Everything here runs in-process without an API server. The operator's wiring
(kopf against kmock's Kubernetes API emulator over loopback HTTP, and the
``atoll fleet operator`` process) is tested in
``tests/integration/test_fleet_operator.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # pyyaml, a kopf dependency, ships no types

from atoll.cli import main
from atoll.errors import InputError
from atoll.fleet import operator as op
from atoll.fleet.rollout import Phase, Quantity

CRD = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "nodepool-crd.yaml"


def test_spec_from_object_uses_the_pool_validator() -> None:
    spec = op.spec_from_object(
        "web",
        {
            "version": "2.0",
            "selector": {"matchLabels": {"role": "web"}},
            "strategy": {
                "maxUnavailable": "25%",
                "partition": 1,
                "maintenanceWindow": {"days": ["sat"], "start": "02:00", "lengthMinutes": 60},
            },
        },
    )
    assert spec.selector == {"role": "web"}
    assert spec.max_unavailable == Quantity(25, percent=True)
    assert spec.maintenance_window is not None and spec.maintenance_window.length_minutes == 60
    with pytest.raises(InputError, match=r"NodePool web: strategy.max_unavailable"):
        op.spec_from_object("web", {"version": "2", "strategy": {"maxUnavailable": "lots"}})
    with pytest.raises(InputError, match=r"NodePool web: unknown key spec.strategy.maxSurge"):
        op.spec_from_object("web", {"version": "2", "strategy": {"maxSurge": 1}})


def test_example_nodepool_is_valid() -> None:
    example = yaml.safe_load((CRD.parent / "nodepool-example.yaml").read_text(encoding="utf-8"))
    assert example["apiVersion"] == f"{op.GROUP}/{op.VERSION}"
    assert example["kind"] == op.KIND
    spec = op.spec_from_object(example["metadata"]["name"], example["spec"])
    assert spec.scatter_label == "topology.kubernetes.io/zone"
    assert spec.max_unavailable == Quantity(20, percent=True)


def test_crd_schema_matches_the_operator() -> None:
    """The shipped CRD accepts exactly the keys the operator understands."""
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    assert crd["spec"]["group"] == op.GROUP
    assert crd["spec"]["names"]["plural"] == op.PLURAL
    assert crd["spec"]["names"]["kind"] == op.KIND
    assert crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == op.VERSION
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["properties"]) == {"version", "previousVersion", "selector", "strategy"}
    strategy = spec["properties"]["strategy"]["properties"]
    assert set(strategy) == set(op.STRATEGY_KEYS)
    assert set(strategy["maintenanceWindow"]["properties"]) == set(op.WINDOW_KEYS)


def test_cli_fails_at_once_on_missing_or_broken_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("clusters: [\n", encoding="utf-8")
    # --kubeconfig sets $KUBECONFIG in this process: monkeypatch restores it afterwards.
    monkeypatch.setenv("KUBECONFIG", "")
    assert main(["fleet", "operator", "--kubeconfig", str(broken)]) == 2
    assert f"kubeconfig {broken}:" in capsys.readouterr().err

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert main(["fleet", "operator"]) == 2
    assert "no credentials" in capsys.readouterr().err


def _node(annotations: dict[str, str] | None = None, *, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "labels": {"role": "web"}, "annotations": annotations or {}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


C, S, H, F = op.A_CURRENT, op.A_STAGED, op.A_HEALTHY, op.A_FAILED
P, G, D = op.A_PHASE, op.A_GRANTED, op.A_DESIRED


@pytest.mark.parametrize(
    ("node", "phase", "healthy"),
    [
        pytest.param(_node({C: "1"}), Phase.IDLE, True, id="fresh node: idle"),
        pytest.param(_node({C: "1"}, ready=False), Phase.IDLE, False, id="not Ready: unhealthy"),
        pytest.param(_node({C: "1", H: "false"}), Phase.IDLE, False, id="agent unhealthy"),
        pytest.param(
            _node({C: "1", S: "2", P: "staging", D: "2"}), Phase.STAGED, True, id="staged"
        ),
        pytest.param(
            _node({C: "1", S: "2", P: "rebooting", G: "2", D: "2"}),
            Phase.REBOOTING,
            True,
            id="granted, not rebooted yet",
        ),
        pytest.param(
            _node({C: "2", P: "rebooting", G: "2", D: "2"}),
            Phase.IDLE,
            True,
            id="back on the granted version, Ready: idle",
        ),
        pytest.param(
            _node({C: "2", P: "rebooting", G: "2", D: "2"}, ready=False),
            Phase.REBOOTING,
            False,
            id="back on the granted version, kubelet not Ready yet: still rebooting",
        ),
        pytest.param(
            _node({C: "2", H: "false", P: "rebooting", G: "2", D: "2"}),
            Phase.REBOOTING,
            False,
            id="agent not healthy yet on the granted version (its trial): still rebooting",
        ),
        pytest.param(
            _node({C: "2", H: "false", F: "true", P: "rebooting", G: "2", D: "2"}),
            Phase.FAILED,
            False,
            id="agent unhealthy outside a trial on the granted version: failed",
        ),
        pytest.param(
            _node({C: "1", F: "true", P: "rebooting", G: "2", D: "2"}),
            Phase.FAILED,
            True,
            id="agent rolled back by itself: failed",
        ),
        pytest.param(_node({C: "1", P: "bogus"}), Phase.IDLE, True, id="hand-edited phase"),
    ],
)
def test_facts_of_node_annotations(node: dict[str, Any], phase: Phase, healthy: bool) -> None:
    facts = op.facts_of(node, now=100.0)
    assert facts is not None
    assert (facts.phase, facts.healthy) == (phase, healthy)
    assert facts.labels == {"role": "web"}


def test_unreported_node_is_not_planned() -> None:
    assert op.facts_of(_node(), now=0.0) is None


def test_owner_is_the_first_matching_pool_by_name() -> None:
    web = op.spec_from_object("web", {"version": "2", "selector": {"matchLabels": {"role": "web"}}})
    every = op.spec_from_object("all", {"version": "3"})
    assert op.owner([("web", web), ("all", every)], {"role": "web"}) == "all"
    assert op.owner([("web", web)], {"role": "db"}) is None

"""The demo's story on a real cluster, checked: three booted atoll nodes join
Kubernetes, and the fleet operator rolls a NodePool v1 -> v2 over them.

``atoll.demo_cluster.run_cluster_demo`` (what ``make demo`` runs) with the test
cache: the Kubernetes node image v1, v2 and a broken v2, published to ``stable``
(v1, v2) and ``edge`` (v1, broken v2); ``atoll cluster up`` with the operator's
CRD and RBAC, ``atoll fleet operator`` as its service account; three UEFI guests
from one v1 disk whose kubelets join with a bootstrap token and whose agents take
their grants from their own Nodes; a Deployment of three pods with a
PodDisruptionBudget of minAvailable 2; a NodePool with maxUnavailable 1 and
failure budget 0. node-2 follows ``edge``: it boots the broken build, rolls itself
back, and the pool pauses; the good build is published to ``edge``, the pool
resumed, and it completes. Everything real: qemu (TCG), systemd-boot, ostree,
containerd, the kubelets, the control plane, evictions, the operator, the agents.

The standalone controller's story (``python -m atoll.demo --standalone``) has the
same steps without Kubernetes; its protocol is tested on booted nodes by the
power-cut and full-ESP vm tests and end to end in tests/integration.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.cluster.build import KubernetesBinaries
from atoll.demo_cluster import BROKEN, MIN_AVAILABLE, NODES, run_cluster_demo
from atoll.progress import PlainReporter
from atoll.wire import kubenode
from tests.conftest import TEST_CACHE, TEST_EPOCH
from tests.vm.conftest import entered_roots

# Three composes, three guests with kubelets on two shared cores, five restarts under TCG.
pytestmark = pytest.mark.timeout(3600)


def test_three_nodes_join_and_the_operator_rolls_v2_honouring_the_budget(
    kubernetes_binaries: KubernetesBinaries, tmp_path: Path
) -> None:
    outcome = run_cluster_demo(
        tmp_path / "demo", PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH
    )
    v1, v2, broken = outcome.builds.v1, outcome.builds.v2, outcome.builds.broken
    rollout = outcome.rollout

    # The pool paused itself because of node-2, and only node-2.
    assert BROKEN in rollout.paused_reason, rollout.timeline
    assert not any(n in rollout.paused_reason for n in NODES if n != BROKEN)
    # Resumed after the fix: every node on v2, none failed.
    final = rollout.final
    assert (final["updated"], final["failed"], final["total"]) == (3, 0, 3), final
    # Never more than maxUnavailable cordoned, never fewer pods than the budget allows.
    assert rollout.most_unavailable == 1, rollout.timeline
    assert rollout.fewest_ready >= MIN_AVAILABLE, rollout.timeline
    assert rollout.samples > 10

    for name in NODES:
        node = outcome.nodes[name]
        # The same Node object, Ready, uncordoned, and saying v2 on itself.
        assert node["metadata"]["uid"] == outcome.uids[name]
        assert not node["spec"].get("unschedulable"), node["spec"]
        notes = node["metadata"]["annotations"]
        assert notes[kubenode.CURRENT_VERSION] == v2.version
        assert node["metadata"]["labels"][kubenode.LABEL_VERSION] == v2.version
        # The consoles: each healthy node booted v1, then entered v2; node-2 entered the
        # broken build, v1 again (its rollback) and the good v2. The pool's policy is the
        # default, auto, and every build has v1's kernel: each of those restarts was a
        # soft-reboot, userspace only, with no firmware reboot at all.
        if name == BROKEN:
            expected = [v1.commit, broken.commit, v1.commit, v2.commit]
        else:
            expected = [v1.commit, v2.commit]
        entered = entered_roots(outcome.consoles[name])
        assert entered == [c[:12] for c in expected], (name, entered)
        assert outcome.reboots[name] == 0, name
        restart = kubenode.read_restart(notes)  # what the Node says, for fleet status
        assert restart is not None and restart.kind == "soft", restart
        assert (restart.reason, restart.version) == ("same kernel and arguments", v2.version)

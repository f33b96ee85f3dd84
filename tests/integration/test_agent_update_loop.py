"""The node's update loop against a real controller, a real update server and real ostree.

Only ``ostree admin`` and ``systemctl reboot`` are emulated (a node's
sysroot cannot be changed on the build machine); the pull and its signature
check run for real into a node-side repository. The VM test
``tests/vm/test_cluster_rollout_vms.py`` runs the same loop on three booted nodes (following
their Nodes), the power-cut and full-ESP vm tests on one (following the controller).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import markers
from atoll.agent.audit import AuditLog
from atoll.agent.deployments import Deployments
from atoll.agent.softreboot import KernelFacts, Restarter
from atoll.agent.update_loop import (
    HEALTH,
    KUBERNETES,
    UpdateError,
    Updater,
    UpdaterConfig,
    load_config,
)
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.progress import PlainReporter
from atoll.publish.keys import load_private_key
from atoll.publish.publish import publish, served_repo
from atoll.tools import ostree
from atoll.wire.bootentry import MB, checked_sync
from atoll.wire.channel import VerificationError
from atoll.wire.fleet import FleetClient, Step, StepFailure, request_json
from atoll.wire.kubelet import BOOTSTRAP_KUBECONFIG
from tests.integration.test_publish import World, _node, _publish, world  # noqa: F401


class FakeSysroot:
    """``ostree admin status/deploy`` and ``systemctl reboot`` over an in-memory list."""

    def __init__(self, booted: str, versions: dict[str, str]) -> None:
        self.versions = versions  # commit -> version
        self.booted = booted
        self.pending: str | None = None
        self.commands: list[list[str]] = []

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        self.commands.append(list(argv))
        if list(argv[:3]) == ["ostree", "admin", "status"]:
            lines = []
            if self.pending:
                lines += [
                    f"  atoll {self.pending}.1 (pending)",
                    f"    Version: {self.versions[self.pending]}",
                ]
            lines += [f"* atoll {self.booted}.0", f"    Version: {self.versions[self.booted]}"]
            return "\n".join(lines) + "\n"
        if list(argv[:3]) == ["ostree", "admin", "deploy"]:
            self.pending = argv[-1]
            return ""
        if list(argv) == ["systemctl", "reboot"]:
            assert self.pending is not None, "reboot with nothing staged"
            self.booted, self.pending = self.pending, None
            return ""
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[str]:
    store = SqliteStore(tmp_path / "fleet.db")
    service = FleetService(store, "127.0.0.1", 0, tick=0.05)
    service.start()
    try:
        yield f"http://127.0.0.1:{service.address[1]}"
    finally:
        service.stop()
        store.close()


def _updater(
    w: World, tmp_path: Path, controller: str, sysroot: FakeSysroot
) -> tuple[Updater, Path]:
    repo, keys = _node(tmp_path, w)
    root = tmp_path / "root"
    (root / "var/lib/atoll").mkdir(parents=True)
    (root / "ostree").mkdir()
    (root / "ostree/repo").symlink_to(repo)
    config = UpdaterConfig(controller, w.url, "stable", "node-1", {"zone": "a"}, 0.05)
    deployments = Deployments(sysroot.run, lambda: None)
    return Updater(config, deployments, keys, root=root, log=lambda m: None), repo


def test_node_stages_a_signed_commit_and_reboots_only_when_granted(
    world: World,  # noqa: F811
    tmp_path: Path,
    controller: str,
) -> None:
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    v1, v2 = world.commits["1.0.0"], world.commits["1.1.0"]
    sysroot = FakeSysroot(v1, {v1: "1.0.0", v2: "1.1.0"})
    updater, repo = _updater(world, tmp_path, controller, sysroot)
    # The kernel would allow a soft-reboot; the pool asks for full reboots.
    kernel = KernelFacts("6.12.43+deb13-cloud-amd64", tmp_path / "vmlinuz", ("rw",))
    updater.restarter = Restarter(
        sysroot.run,
        root=updater.root,
        running=lambda: kernel,
        staged=lambda _: kernel,
        same_image=lambda a, b: True,
        now=lambda: "2026-12-07T07:00:00+00:00",
    )

    updater.step()  # registers on 1.0.0; no pool yet: nothing to do
    assert sysroot.pending is None
    pool = {
        "pool": {"name": "web", "version": "1.1.0", "previous_version": "1.0.0"},
        "strategy": {"max_unavailable": 1, "reboot": "full"},
    }
    request_json("PUT", f"{controller}/v1/pools/web", pool)
    deadline = time.monotonic() + 30
    while sysroot.booted != v2 and time.monotonic() < deadline:
        updater.step()
        time.sleep(0.05)
    assert sysroot.booted == v2
    # Pulled for real and verified before the deploy; deployed beside, then rebooted.
    assert ostree.has_commit(repo, v2)
    ran = [c for c in sysroot.commands if c[:3] != ["ostree", "admin", "status"]]
    assert ran == [["ostree", "admin", "deploy", v2], ["systemctl", "reboot"]]
    while time.monotonic() < deadline:
        updater.step()
        status = request_json("GET", f"{controller}/v1/pools/web")["status"]
        if status["updated"] == 1:
            break
        time.sleep(0.05)
    assert status["updated"] == 1, status
    # The next report said which kind of restart the upgrade used, and why.
    [node] = request_json("GET", f"{controller}/v1/nodes")
    assert node["restart"] == {
        "kind": "full",
        "reason": "policy full",
        "version": "1.1.0",
        "at": "2026-12-07T07:00:00+00:00",
    }


def test_a_version_the_channel_does_not_have_is_refused_before_any_change(
    world: World,  # noqa: F811
    tmp_path: Path,
    controller: str,
) -> None:
    _publish(world, "1.0.0")
    v1 = world.commits["1.0.0"]
    sysroot = FakeSysroot(v1, {v1: "1.0.0"})
    updater, repo = _updater(world, tmp_path, controller, sysroot)
    with pytest.raises(UpdateError, match=r"channel 'stable' on http://.*: no version '9.9.9'"):
        updater.stage("9.9.9")
    # A commit that was built but never published: the server does not have it.
    tree = tmp_path / "unpublished"
    (tree / "usr").mkdir(parents=True)
    unpublished = ostree.commit(
        world.source, tree, branch=None, subject="x", metadata={"version": "2.0"}, timestamp=0
    )
    with pytest.raises(VerificationError, match=unpublished[:12]):
        updater.stage(unpublished)
    assert not ostree.has_commit(repo, unpublished)
    assert sysroot.pending is None


def test_a_build_that_was_rolled_back_here_is_not_staged_again(
    world: World,  # noqa: F811
    tmp_path: Path,
    controller: str,
) -> None:
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    v1, v2 = world.commits["1.0.0"], world.commits["1.1.0"]
    sysroot = FakeSysroot(v1, {v1: "1.0.0", v2: "1.1.0"})
    updater, repo = _updater(world, tmp_path, controller, sysroot)
    record = markers.Rollback(
        v2, v1, "health: systemd: atoll-broken.service failed", "2026-11-23T10:00:00Z"
    )
    markers.write_json(updater.root / markers.ROLLBACK, record.as_dict())
    with pytest.raises(UpdateError, match=rf"1.1.0 \({v2[:12]}\) was rolled back on this node"):
        updater.stage("1.1.0")
    assert sysroot.pending is None and not ostree.has_commit(repo, v2)
    # Once the channel names another build for the version (a fix), it is staged as usual.
    other = markers.Rollback("f" * 64, v1, "an older build", record.at)
    markers.write_json(updater.root / markers.ROLLBACK, other.as_dict())
    assert updater.stage("1.1.0") == v2
    assert sysroot.pending == v2


def test_config_comes_from_first_boot_and_settings(tmp_path: Path) -> None:
    assert load_config(tmp_path) is None  # not managed: no loop
    (tmp_path / "etc/atoll").mkdir(parents=True)
    (tmp_path / "etc/hostname").write_text("edge-7\n")
    (tmp_path / "etc/atoll/fleet.toml").write_text(
        'controller = "http://10.0.2.100:9443"\ninterval = 2\n[labels]\nzone = "b"\n'
    )
    assert load_config(tmp_path) is None  # no update server yet
    (tmp_path / "etc/atoll/settings.json").write_text(
        json.dumps({"updates.server": "http://10.0.2.100:8080", "updates.channel": "beta"})
    )
    config = load_config(tmp_path)
    assert config == UpdaterConfig(
        "http://10.0.2.100:9443", "http://10.0.2.100:8080", "beta", "edge-7", {"zone": "b"}, 2.0
    )
    (tmp_path / "etc/atoll/fleet.toml").write_text('controller = "x"\ninterval = 0\n')
    with pytest.raises(UpdateError, match=r"fleet.toml: interval 0"):
        load_config(tmp_path)


def test_a_node_that_joins_a_cluster_and_names_no_controller_follows_its_node(
    tmp_path: Path,
) -> None:
    (tmp_path / "etc/atoll").mkdir(parents=True)
    (tmp_path / "etc/hostname").write_text("k-1\n")
    (tmp_path / "etc/atoll/fleet.toml").write_text('server = "http://10.0.2.100:8080"\n')
    assert load_config(tmp_path) is None  # neither a controller nor a cluster
    bootstrap = tmp_path / BOOTSTRAP_KUBECONFIG
    bootstrap.parent.mkdir(parents=True)
    bootstrap.write_text("{}")
    config = load_config(tmp_path)
    assert config is not None and config.controller == KUBERNETES
    # A controller named in user data or settings still wins (a site without the operator).
    (tmp_path / "etc/atoll/settings.json").write_text(
        json.dumps({"fleet.controller": "http://10.0.2.100:9443"})
    )
    config = load_config(tmp_path)
    assert config is not None and config.controller == "http://10.0.2.100:9443"


def test_a_rollback_fails_the_node_until_a_fix_is_published_then_the_fix_is_staged(
    world: World,  # noqa: F811
    tmp_path: Path,
    controller: str,
) -> None:
    """The demo's story on one node: broken 1.1.0 rolled back here, the fix is another build."""
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    v1, broken = world.commits["1.0.0"], world.commits["1.1.0"]
    sysroot = FakeSysroot(v1, {v1: "1.0.0", broken: "1.1.0"})
    updater, _ = _updater(world, tmp_path, controller, sysroot)
    rollback = markers.Rollback(broken, v1, "health: demo-broken.service failed", "2026-11-23")
    markers.write_json(updater.root / markers.ROLLBACK, rollback.as_dict())
    markers.write_json(
        updater.root / HEALTH,
        {"healthy": True, "booted": v1, "trial": None, "rolled_back": True},
    )
    updater.step()  # registers
    pool = {
        "pool": {"name": "web", "version": "1.1.0", "previous_version": "1.0.0"},
        "strategy": {"max_unavailable": 1, "failure_budget": 0},
    }
    request_json("PUT", f"{controller}/v1/pools/web", pool)

    def status() -> dict[str, Any]:
        return dict(request_json("GET", f"{controller}/v1/pools/web")["status"])

    deadline = time.monotonic() + 30
    while not status().get("paused_reason") and time.monotonic() < deadline:
        updater.step()  # the channel still names the build that rolled back here
        time.sleep(0.05)
    assert "node-1" in str(status().get("paused_reason")), status()
    assert sysroot.pending is None

    # The fix: another build of 1.1.0 on the channel; the operator resumes.
    tree = tmp_path / "fix"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/os-release").write_text("IMAGE_VERSION=1.1.0\n")
    fix = ostree.commit(
        world.source, tree, branch=None, subject="fix", metadata={"version": "1.1.0"}, timestamp=0
    )
    sysroot.versions[fix] = "1.1.0"
    key = load_private_key(world.keys / "atoll-ed25519.key")
    publish(world.source, fix, world.updates, "stable", key, PlainReporter())
    request_json("POST", f"{controller}/v1/pools/web/resume", {})
    while sysroot.booted != fix and time.monotonic() < deadline:
        updater.step()  # reports the node well: the rollback is about another build
        assert not status().get("paused_reason"), status()
        time.sleep(0.05)
    assert sysroot.booted == fix
    markers.write_json(
        updater.root / HEALTH, {"healthy": True, "booted": fix, "trial": None, "rolled_back": False}
    )
    while status()["updated"] != 1 and time.monotonic() < deadline:
        updater.step()
        time.sleep(0.05)
    assert (status()["updated"], status()["failed"]) == (1, 0), status()


# --- a failed step reaches the controller (issue 20) --------------------------------------

ESP = "ESP (/boot/efi)"
POOL = {
    "pool": {"name": "web", "version": "1.1.0", "previous_version": "1.0.0"},
    "strategy": {"max_unavailable": 1},
}


class EspSysroot(FakeSysroot):
    """FakeSysroot whose deploys write ostree's boot entry and kernel into ``boot`` (the
    kernel a sparse file of ``kernel`` bytes), and whose ``undeploy 0`` removes them."""

    def __init__(self, booted: str, versions: dict[str, str], boot: Path, kernel: int) -> None:
        super().__init__(booted, versions)
        self.boot, self.kernel = boot, kernel
        self._entry(booted, 1)

    def _entry(self, commit: str, serial: int) -> None:
        kernel = self.boot / f"ostree/atoll-{commit}/vmlinuz-6.1"
        kernel.parent.mkdir(parents=True, exist_ok=True)
        with kernel.open("wb") as f:
            f.truncate(self.kernel)
        entry = self.boot / f"loader/entries/ostree-{serial}-atoll.conf"
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(
            f"title atoll {self.versions[commit]}\nversion {serial}\n"
            f"linux /ostree/atoll-{commit}/vmlinuz-6.1\n"
            f"options rw ostree=/ostree/deploy/atoll/deploy/{commit}.0\n"
        )

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        if list(argv) == ["ostree", "admin", "undeploy", "0"]:
            self.commands.append(list(argv))
            assert self.pending is not None, "undeploy with nothing pending"
            (self.boot / "loader/entries/ostree-2-atoll.conf").unlink()
            shutil.rmtree(self.boot / f"ostree/atoll-{self.pending}")
            self.pending = None
            return ""
        out = super().run(argv, timeout=timeout)
        if list(argv[:3]) == ["ostree", "admin", "deploy"]:
            self._entry(argv[-1], 2)
        return out


def _free(free: int) -> Callable[[Path], os.statvfs_result]:
    """``os.statvfs`` of an ESP with ``free`` bytes in 512-byte clusters."""

    def statvfs(_: Path) -> os.statvfs_result:
        return os.statvfs_result((512, 512, 65536, free // 512, free // 512, 0, 0, 0, 0, 255))

    return statvfs


def _sent(updater: Updater) -> list[tuple[str, str, Any]]:
    """What the updater sends the controller (still sent, and answered, for real)."""
    sent: list[tuple[str, str, Any]] = []
    client = updater.client
    assert isinstance(client, FleetClient)
    call = client._call

    def recording(method: str, path: str, body: Any = None) -> Any:
        sent.append((method, path, body))
        return call(method, path, body)

    client._call = recording  # type: ignore[method-assign]
    return sent


def _failures(sent: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    return [b for _, path, b in sent if path.endswith("/report") and b.get("failure")]


def _round_until_a_failure_is_sent(
    updater: Updater, sent: list[tuple[str, str, Any]]
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while not _failures(sent) and time.monotonic() < deadline:
        updater.step()
        time.sleep(0.05)
    failures = _failures(sent)
    assert len(failures) == 1, sent
    return failures[0]


def _audited(audit: AuditLog) -> list[dict[str, Any]]:
    return [r for r in audit.records() if r.get("who") == "agent:update"]


def test_a_full_esp_undoes_the_upgrade_and_the_controller_hears_why(
    world: World,  # noqa: F811
    tmp_path: Path,
    controller: str,
) -> None:
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    v1, v2 = world.commits["1.0.0"], world.commits["1.1.0"]
    boot, esp = tmp_path / "sysroot/boot", tmp_path / "esp"
    sysroot = EspSysroot(v1, {v1: "1.0.0", v2: "1.1.0"}, boot, 14 * MB - 4096)
    checked_sync(boot, esp, ESP, statvfs=_free(64 * MB))  # the ESP boots 1.0.0, then is full
    on_esp = sorted(p.relative_to(esp) for p in esp.rglob("*"))
    markers_at_sync: list[str | None] = []
    updater, _ = _updater(world, tmp_path, controller, sysroot)

    def sync() -> object:
        marker = markers.read_pending(updater.root / markers.PENDING)
        markers_at_sync.append(None if marker is None else str(marker.state))
        return checked_sync(boot, esp, ESP, statvfs=_free(0))

    updater.deployments = Deployments(sysroot.run, sync, root=updater.root)
    audit = AuditLog(tmp_path / "audit.jsonl")
    updater.record = audit.append
    sent = _sent(updater)
    updater.step()  # registers on 1.0.0
    request_json("PUT", f"{controller}/v1/pools/web", POOL)

    report = _round_until_a_failure_is_sent(updater, sent)

    reason = "ESP (/boot/efi) has 0 bytes free, the new kernel needs 14 MB"
    assert report["staged"] is None and report["version"] == "1.0.0"
    assert report["failure"] == {
        "step": "boot-entries", "version": "1.1.0", "reason": reason, "resource": ESP,
    }  # fmt: skip
    # Half-staged (deployed, its marker "deploying") and undone before the report.
    assert markers_at_sync[0] == "deploying"
    assert sysroot.pending is None and sysroot.booted == v1
    assert not (updater.root / markers.PENDING).exists()
    ran = [c for c in sysroot.commands if c[:3] != ["ostree", "admin", "status"]]
    assert ran == [
        ["ostree", "admin", "deploy", v2],
        ["ostree", "admin", "undeploy", "0"],
    ]
    assert sorted(p.relative_to(esp) for p in esp.rglob("*")) == on_esp  # not a byte of 1.1.0
    # The controller took the report: its record of the node holds what it was sent.
    (node,) = request_json("GET", f"{controller}/v1/nodes")
    assert (node["current"], node["staged"]) == ("1.0.0", None)
    assert StepFailure.from_json(node["failure"]) == StepFailure(
        Step.BOOT_ENTRIES, "1.1.0", reason, ESP
    )
    (record,) = _audited(audit)
    assert record["what"] == "update: boot-entries failed" and record["result"] == "failed"
    assert record["params"]["reason"] == reason and record["params"]["undeployed"] == [v2]
    # Never a reboot asked for, never one run: nothing is left to boot into.
    assert all(c != ["systemctl", "reboot"] for c in sysroot.commands)
    assert not any(b and b.get("staged") == "1.1.0" for _, _, b in sent)


def test_a_fetch_that_fails_is_reported_with_nothing_deployed(
    world: World,  # noqa: F811
    tmp_path: Path,
    controller: str,
) -> None:
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    v1, v2 = world.commits["1.0.0"], world.commits["1.1.0"]
    # The channel names 1.1.0, but the server lost its objects: the pull cannot finish.
    served = served_repo(world.updates)
    shutil.rmtree(served / "objects")
    (served / "objects").mkdir()
    shutil.rmtree(served / "deltas", ignore_errors=True)
    sysroot = FakeSysroot(v1, {v1: "1.0.0", v2: "1.1.0"})
    updater, repo = _updater(world, tmp_path, controller, sysroot)
    audit = AuditLog(tmp_path / "audit.jsonl")
    updater.record = audit.append
    sent = _sent(updater)
    updater.step()
    request_json("PUT", f"{controller}/v1/pools/web", POOL)

    report = _round_until_a_failure_is_sent(updater, sent)

    failure = StepFailure.from_json(report["failure"])
    assert (failure.step, failure.version, failure.resource) == (Step.FETCH, "1.1.0", None)
    assert failure.reason.startswith(f"pull of {v2[:12]} from {world.url}/repo failed: ")
    assert report["staged"] is None
    assert not ostree.has_commit(repo, v2) and sysroot.pending is None
    assert [c for c in sysroot.commands if c[:3] != ["ostree", "admin", "status"]] == []
    (node,) = request_json("GET", f"{controller}/v1/nodes")
    assert StepFailure.from_json(node["failure"]) == failure
    (record,) = _audited(audit)
    assert record["what"] == "update: fetch failed" and record["params"]["step"] == "fetch"

"""The node's update loop against a real controller, a real update server and real ostree.

Only ``ostree admin`` and ``systemctl reboot`` are emulated (a node's
sysroot cannot be changed on the build machine); the pull and its signature
check run for real into a node-side repository. The VM test
``tests/vm/test_fleet_rollout_vms.py`` runs the same loop on three booted nodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import markers
from atoll.agent.deployments import Deployments
from atoll.agent.update_loop import HEALTH, UpdateError, Updater, UpdaterConfig, load_config
from atoll.fleet.server import FleetService
from atoll.fleet.sqlite_store import SqliteStore
from atoll.progress import PlainReporter
from atoll.publish.keys import load_private_key
from atoll.publish.publish import publish
from atoll.tools import ostree
from atoll.wire.channel import VerificationError
from atoll.wire.fleet import request_json
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
        if list(argv[:4]) == ["ostree", "admin", "deploy", "--retain"]:
            self.pending = argv[4]
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

    updater.step()  # registers on 1.0.0; no pool yet: nothing to do
    assert sysroot.pending is None
    pool = {
        "pool": {"name": "web", "version": "1.1.0", "previous_version": "1.0.0"},
        "strategy": {"max_unavailable": 1},
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
    assert ran == [["ostree", "admin", "deploy", "--retain", v2], ["systemctl", "reboot"]]
    while time.monotonic() < deadline:
        updater.step()
        status = request_json("GET", f"{controller}/v1/pools/web")["status"]
        if status["updated"] == 1:
            break
        time.sleep(0.05)
    assert status["updated"] == 1, status


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

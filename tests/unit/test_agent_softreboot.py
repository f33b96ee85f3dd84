"""Soft-reboot upgrades: the decision table, the next root, the agent's own boot bookkeeping."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from atoll.agent import markers
from atoll.agent.bootentries import bless
from atoll.agent.command import CommandError
from atoll.agent.deployments import Deployment, DeploymentError
from atoll.agent.health import Outcome
from atoll.agent.softreboot import (
    SOFT_REBOOT_TARGET,
    KernelFacts,
    Restarter,
    SoftRebootError,
    decide,
    kernel_args,
    last_policy,
    nextroot_plan,
    read_last_restart,
    read_soft_record,
    running_kernel,
    staged_kernel,
    switch_failed,
)
from atoll.wire.fleet import RebootPolicy, RestartKind
from tests.unit.test_agent_deployments import NEW, OLD, PENDING
from tests.unit.test_agent_health import (
    BACK_ON_OLD,
    BROKEN,
    GOOD,
    STARTING,
    Node,
    staged,
)

AUTO = RebootPolicy.AUTO  # the pool's choice in these tests (full is the default)
K41 = "6.12.41+deb13-cloud-amd64"
K43 = "6.12.43+deb13-cloud-amd64"
ARGS = ("root=PARTUUID=abc", "rootfstype=ext4", "rootwait", "console=ttyS0")
A = Path("/a/vmlinuz")
B = Path("/b/vmlinuz")


def facts(version: str = K41, image: Path | None = A, args: tuple[str, ...] = ARGS) -> KernelFacts:
    return KernelFacts(version, image, args)


@pytest.mark.parametrize(
    ("running", "staged_", "policy", "kind", "reason"),
    [
        (facts(), facts(image=B), RebootPolicy.AUTO, RestartKind.SOFT, "same kernel and arguments"),
        (facts(), facts(image=B), RebootPolicy.FULL, RestartKind.FULL, "policy full"),
        (
            facts(),
            facts(K43, B),
            RebootPolicy.AUTO,
            RestartKind.FULL,
            f"kernel changed {K41} -> {K43}",
        ),
        (
            facts(),
            facts(image=Path("/other/vmlinuz")),
            RebootPolicy.AUTO,
            RestartKind.FULL,
            f"kernel {K41} rebuilt (another vmlinuz)",
        ),
        (
            facts(),
            facts(image=B, args=(*ARGS, "mitigations=off")),
            RebootPolicy.AUTO,
            RestartKind.FULL,
            "kernel arguments changed: +mitigations=off",
        ),
        (
            facts(),
            facts(image=B, args=ARGS[:-1]),
            RebootPolicy.AUTO,
            RestartKind.FULL,
            "kernel arguments changed: -console=ttyS0",
        ),
        (
            facts(),
            facts(image=B, args=tuple(reversed(ARGS))),
            RebootPolicy.AUTO,
            RestartKind.FULL,
            "kernel arguments changed: their order",
        ),
        (
            facts(),
            KernelFacts("", None, (), "one kernel expected, found none"),
            RebootPolicy.AUTO,
            RestartKind.FULL,
            "staged kernel unknown: one kernel expected, found none",
        ),
        (
            KernelFacts(K41, None, ARGS, "vmlinuz is missing"),
            facts(),
            RebootPolicy.AUTO,
            RestartKind.FULL,
            "running kernel unknown: vmlinuz is missing",
        ),
    ],
)
def test_soft_only_with_the_same_kernel_and_arguments(
    running: KernelFacts, staged_: KernelFacts, policy: RebootPolicy, kind: RestartKind, reason: str
) -> None:
    # A and B hold the same bytes; /other does not.
    decision = decide(running, staged_, policy, lambda a, b: "/other" not in f"{a}{b}")
    assert (decision.kind, decision.reason) == (kind, reason)


def test_the_words_that_name_the_deployment_are_not_compared() -> None:
    line = "root=PARTUUID=abc ostree=/ostree/deploy/atoll/deploy/x.0 init=/x/prepare rw\n"
    assert kernel_args(line) == ("root=PARTUUID=abc", "rw")


def deployment(checksum: str = NEW, serial: int = 0) -> Deployment:
    return Deployment(0, "atoll", checksum, serial, False, True, False, False, "1.1.0", None)


def sysroot_with(tmp_path: Path, kver: str = K41, options: str = "root=x rw") -> Path:
    sysroot = tmp_path / "sysroot"
    tree = sysroot / f"ostree/deploy/atoll/deploy/{NEW}.0"
    (tree / f"usr/lib/modules/{kver}").mkdir(parents=True)
    (tree / f"usr/lib/modules/{kver}/vmlinuz").write_bytes(b"kernel")
    (tree / "boot").mkdir()
    (sysroot / "ostree/deploy/atoll/var").mkdir(parents=True)
    bootlink = sysroot / "ostree/boot.1/atoll/csum/0"
    bootlink.parent.mkdir(parents=True)
    bootlink.symlink_to(tree)
    (sysroot / "boot/loader.1/entries").mkdir(parents=True)
    (sysroot / "boot/loader").symlink_to("loader.1")
    (sysroot / "boot/loader/entries/ostree-2.conf").write_text(
        f"title x\nversion 2\nlinux /ostree/atoll-csum/vmlinuz-{kver}\n"
        f"options {options} ostree=/ostree/boot.1/atoll/csum/0\n"
    )
    return sysroot


def test_the_staged_kernel_is_read_from_the_deployment_and_its_entry(tmp_path: Path) -> None:
    sysroot = sysroot_with(tmp_path)
    found = staged_kernel(deployment(), sysroot)
    assert (found.version, found.args) == (K41, ("root=x", "rw"))
    assert (
        found.image == sysroot / f"ostree/deploy/atoll/deploy/{NEW}.0/usr/lib/modules/{K41}/vmlinuz"
    )
    missing = staged_kernel(deployment(serial=7), sysroot)
    assert missing.image is None and "one kernel expected, found none" in missing.problem


def test_the_running_kernel_is_unames_in_the_booted_root(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("root=x ostree=/a rw\n")
    assert running_kernel(tmp_path, K41).problem.endswith("vmlinuz is missing")
    (tmp_path / f"usr/lib/modules/{K41}").mkdir(parents=True)
    (tmp_path / f"usr/lib/modules/{K41}/vmlinuz").write_bytes(b"kernel")
    found = running_kernel(tmp_path, K41)
    assert found.args == ("root=x", "rw") and found.image is not None and not found.problem


def test_the_next_root_is_prepared_as_prepare_root_prepares_the_first(tmp_path: Path) -> None:
    sysroot = sysroot_with(tmp_path)
    tree = f"{sysroot}/ostree/deploy/atoll/deploy/{NEW}.0"
    assert nextroot_plan(deployment(), sysroot, Path("/run/nextroot")) == [
        ["mount", "--bind", tree, "/run/nextroot"],
        ["mount", "--make-private", "/run/nextroot"],
        ["mount", "--bind", str(sysroot), "/run/nextroot/sysroot"],
        ["mount", "--bind", f"{sysroot}/ostree/deploy/atoll/var", "/run/nextroot/var"],
        ["mount", "--bind", f"{sysroot}/boot", "/run/nextroot/boot"],
        ["mount", "--bind", "/run/nextroot/usr", "/run/nextroot/usr"],
        ["mount", "-o", "remount,bind,ro", "/run/nextroot/usr"],
        ["mount", "--make-rprivate", "/run/nextroot"],
    ]


def test_a_rollback_restarts_the_way_the_upgrade_it_undoes_did(tmp_path: Path) -> None:
    assert last_policy(tmp_path) is RebootPolicy.FULL  # nothing recorded yet: the default
    path = tmp_path / "var/lib/atoll/restart.json"
    path.parent.mkdir(parents=True)
    for text, policy in (
        ('{"kind": "full", "policy": "full"}', RebootPolicy.FULL),
        ('{"kind": "soft", "policy": "auto"}', RebootPolicy.AUTO),
        ('{"kind": "soft"}', RebootPolicy.FULL),  # written before pools chose
        ('{"policy": "soft"}', RebootPolicy.FULL),  # not this agent's: conservative
        ("[", RebootPolicy.FULL),  # unreadable: as if none
    ):
        path.write_text(text)
        assert last_policy(tmp_path) is policy, text


class Recorder:
    def __init__(self, fail: str = "", status: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.status = status  # of the failing call: negative, killed by that signal
        self.outputs: dict[str, str] = {}  # argv prefix -> what it prints

    def __call__(self, argv: Sequence[str], *, timeout: float) -> str:
        self.calls.append(list(argv))
        line = " ".join(argv)
        if self.fail and line.startswith(self.fail):
            raise CommandError(argv, status=self.status)
        return next((out for prefix, out in self.outputs.items() if line.startswith(prefix)), "")


def restarter(
    tmp_path: Path, run: Recorder, same: bool = True, soft_reboot: bool = True
) -> Restarter:
    sysroot = sysroot_with(tmp_path)
    target = tmp_path / "root" / SOFT_REBOOT_TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    if soft_reboot:
        target.write_text("[Unit]\n")
    return Restarter(
        run,
        root=tmp_path / "root",
        sysroot=sysroot,
        nextroot=tmp_path / "nextroot",
        soft_record=tmp_path / "run/atoll-soft-reboot.json",
        running=lambda: facts(K41, A, ("root=x", "rw")),
        same_image=lambda a, b: same,
        now=lambda: "2026-12-07T07:00:00+00:00",
        mounted=lambda _: False,
    )


BOOTED = dataclasses.replace(deployment(OLD), booted=True, pending=False, version="1.0.0")


def test_a_soft_restart_prepares_the_next_root_records_it_and_soft_reboots(tmp_path: Path) -> None:
    run = Recorder()
    r = restarter(tmp_path, run)
    decision = r.restart(BOOTED, deployment(), "upgrade to 1.1.0", AUTO)
    assert decision.kind is RestartKind.SOFT
    # The failures of this userspace stay with it (systemd would carry them over).
    assert run.calls[-2:] == [["systemctl", "reset-failed"], ["systemctl", "soft-reboot"]]
    assert [c[:2] for c in run.calls[:-2]] == [["mount", "--bind"], ["mount", "--make-private"],
        ["mount", "--bind"], ["mount", "--bind"], ["mount", "--bind"], ["mount", "--bind"],
        ["mount", "-o"], ["mount", "--make-rprivate"]]  # fmt: skip
    record = read_soft_record(r.soft_record)
    assert record is not None
    assert (record.count, record.from_commit, record.into_commit) == (1, OLD, NEW)
    assert record.ostree == f"/ostree/deploy/atoll/deploy/{NEW}.0"
    assert read_last_restart(r.root) == {
        "kind": "soft",
        "reason": "same kernel and arguments",
        "policy": "auto",
        "why": "upgrade to 1.1.0",
        "from": OLD,
        "from_version": "1.0.0",
        "into": NEW,
        "into_version": "1.1.0",
        "at": "2026-12-07T07:00:00+00:00",
    }
    # The agent's boot identity changes with it: the next userspace is a new boot.
    boot_id = tmp_path / "boot_id"
    boot_id.write_text("b1\n")
    assert markers.current_boot_id(boot_id, r.soft_record) == "b1+soft1"
    r.restart(BOOTED, deployment(), "again", AUTO)
    assert markers.current_boot_id(boot_id, r.soft_record) == "b1+soft2"
    assert markers.current_boot_id(boot_id, tmp_path / "none") == "b1"


def test_another_kernel_is_a_full_reboot_and_says_why(tmp_path: Path) -> None:
    run = Recorder()
    decision = restarter(tmp_path, run, same=False).restart(BOOTED, deployment(), "upgrade", AUTO)
    assert (decision.kind, decision.reason) == (
        RestartKind.FULL,
        f"kernel {K41} rebuilt (another vmlinuz)",
    )
    assert run.calls == [["systemctl", "reboot"]]
    assert read_last_restart(tmp_path / "root")["kind"] == "full"  # type: ignore[index]
    assert read_soft_record(tmp_path / "run/atoll-soft-reboot.json") is None


def test_the_pools_policy_full_reboots_and_a_rollback_then_follows_it(tmp_path: Path) -> None:
    run = Recorder()
    r = restarter(tmp_path, run)
    decision = r.restart(BOOTED, deployment(), "upgrade", RebootPolicy.FULL)
    assert (decision.kind, decision.reason) == (RestartKind.FULL, "policy full")
    assert read_last_restart(r.root)["policy"] == "full"  # type: ignore[index]
    assert r.restart(BOOTED, deployment(), "rollback: x").reason == "policy full"
    assert run.calls == [["systemctl", "reboot"], ["systemctl", "reboot"]]


def test_a_systemd_without_soft_reboot_reboots_fully(tmp_path: Path) -> None:
    run = Recorder()
    decision = restarter(tmp_path, run, soft_reboot=False).restart(BOOTED, deployment(), "up", AUTO)
    assert (decision.kind, decision.reason) == (
        RestartKind.FULL,
        "this systemd has no soft-reboot (< 254)",
    )
    assert run.calls == [["systemctl", "reboot"]]


def test_a_next_root_that_cannot_be_prepared_falls_back_to_a_full_reboot(tmp_path: Path) -> None:
    run = Recorder(fail="mount --bind /")
    decision = restarter(tmp_path, run).restart(BOOTED, deployment(), "upgrade", AUTO)
    assert decision.kind is RestartKind.FULL
    assert decision.reason.startswith("soft-reboot not prepared: mount --bind")
    assert run.calls[-1] == ["systemctl", "reboot"]


def test_a_refused_soft_reboot_is_taken_back_and_the_node_reboots_fully(tmp_path: Path) -> None:
    # A rollback must not stay on the build that failed its trial (nor an upgrade the
    # controller granted): a soft-reboot systemd refuses becomes a full reboot.
    run = Recorder(fail="systemctl soft-reboot")
    r = restarter(tmp_path, run)
    r.mounted = lambda _: True
    previous = {"kind": "full", "reason": "policy full", "policy": "full"}
    markers.write_json(r.root / "var/lib/atoll/restart.json", previous)
    decision = r.restart(BOOTED, deployment(), "rollback: x", AUTO)
    assert decision.kind is RestartKind.FULL
    assert decision.reason.startswith("soft-reboot refused: systemctl soft-reboot")
    assert run.calls[-4:] == [
        ["systemctl", "soft-reboot"],
        ["systemctl", "list-jobs", "--no-legend", "--plain"],  # not queued: refused
        ["umount", "--recursive", str(tmp_path / "nextroot")],
        ["systemctl", "reboot"],
    ]
    assert read_soft_record(r.soft_record) is None
    last = read_last_restart(r.root)
    assert last is not None and (last["kind"], last["why"]) == ("full", "rollback: x")
    assert isinstance(SoftRebootError("x"), DeploymentError)  # the update loop's grace


def test_a_soft_reboot_taken_back_puts_the_last_restart_back(tmp_path: Path) -> None:
    run = Recorder(fail="systemctl soft-reboot", status=-15)  # under way, it seemed
    r = restarter(tmp_path, run)
    previous = {"kind": "full", "reason": "policy full", "policy": "full"}
    markers.write_json(r.root / "var/lib/atoll/restart.json", previous)
    r.restart(BOOTED, deployment(), "upgrade", AUTO)
    assert read_last_restart(r.root)["kind"] == "soft"  # type: ignore[index]
    r.abandon()  # ... yet the agent still ran long after: it did not happen
    assert read_last_restart(r.root) == previous


def test_systemctl_failing_after_the_job_was_queued_is_the_soft_reboot_under_way(
    tmp_path: Path,
) -> None:
    run = Recorder(fail="systemctl soft-reboot")
    run.outputs["systemctl list-jobs"] = "7 soft-reboot.target start waiting\n"
    r = restarter(tmp_path, run)
    decision = r.restart(BOOTED, deployment(), "upgrade", AUTO)
    assert decision.kind is RestartKind.SOFT
    assert run.calls[-1][:2] == ["systemctl", "list-jobs"]  # no umount, no reboot
    assert read_soft_record(r.soft_record) is not None


def test_a_systemctl_killed_by_the_stop_it_began_keeps_the_next_root_and_the_record(
    tmp_path: Path,
) -> None:
    # The soft-reboot stops the agent's unit first: its SIGTERM can reach
    # systemctl before systemctl exits. That is the soft-reboot under way, not a
    # refusal: unmounting the next root then sent systemd back into the old root.
    run = Recorder(fail="systemctl soft-reboot", status=-15)
    r = restarter(tmp_path, run)
    r.mounted = lambda _: True
    decision = r.restart(BOOTED, deployment(), "upgrade", AUTO)
    assert decision.kind is RestartKind.SOFT
    assert run.calls[-1] == ["systemctl", "soft-reboot"]
    assert not any(c[0] == "umount" for c in run.calls[1:]), run.calls
    record = read_soft_record(r.soft_record)
    assert record is not None and record.into_commit == NEW
    # Still running long after (the update loop's wait): taken back, as a refusal is.
    r.abandon()
    assert run.calls[-1] == ["umount", "--recursive", str(tmp_path / "nextroot")]
    assert read_soft_record(r.soft_record) is None
    r.abandon()  # once only: nothing is asked for any more
    assert run.calls[-1][0] == "umount" and len([c for c in run.calls if c[0] == "umount"]) == 2


def test_abandoning_a_second_soft_reboot_restores_the_first_ones_record(tmp_path: Path) -> None:
    r = restarter(tmp_path, Recorder())
    r.restart(BOOTED, deployment(), "upgrade", AUTO)  # this userspace came from soft-reboot 1
    r.run = Recorder(fail="systemctl soft-reboot", status=-9)
    r.restart(BOOTED, deployment(), "again", AUTO)
    assert read_soft_record(r.soft_record).count == 2  # type: ignore[union-attr]
    r.abandon()
    assert read_soft_record(r.soft_record).count == 1  # type: ignore[union-attr]


def test_the_entry_blessed_after_a_soft_reboot_is_the_deployment_switched_into(
    tmp_path: Path,
) -> None:
    entries = tmp_path / "esp/loader/entries"
    entries.mkdir(parents=True)
    for name, path in (("ostree-1+3", "old.0"), ("ostree-2+2-1", "new.0")):
        (entries / f"{name}.conf").write_text(
            f"title t\nversion 1\nlinux /k\noptions rw ostree=/ostree/deploy/atoll/deploy/{path}\n"
        )
    assert bless(tmp_path / "esp", "ostree=/ostree/deploy/atoll/deploy/new.0") == "ostree-2.conf"
    assert sorted(p.name for p in entries.iterdir()) == ["ostree-1+3.conf", "ostree-2.conf"]


# -- the trial after a soft-reboot (health.Monitor with a restart hook) -----------


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "root")


def test_a_trial_after_a_soft_reboot_counts_it_as_a_boot_and_confirms(node: Node) -> None:
    staged(node, boot="b1")
    node.boot = "b1+soft1"  # the same kernel boot, one soft-reboot later
    node.rounds = [STARTING, GOOD]
    assert node.monitor().settle() is Outcome.CONFIRMED
    assert node.blessed == 1
    assert node.audit[0]["params"]["boot"] == 1


def test_a_failed_trial_after_a_soft_reboot_restarts_back_through_the_hook(node: Node) -> None:
    staged(node, boot="b1")
    node.boot = "b1+soft1"
    node.rounds = [BROKEN]
    restarts: list[tuple[str, str, str]] = []
    monitor = node.monitor()
    monitor.restart = lambda booted, into, why: restarts.append(
        (booted.checksum, into.checksum, why)
    )
    assert monitor.settle() is Outcome.ROLLED_BACK
    assert node.changes() == [
        ["ostree", "admin", "deploy", NEW],
        ["ostree", "admin", "deploy", "--retain", OLD],
    ]  # no systemctl reboot: the hook restarts
    assert len(restarts) == 1 and restarts[0][:2] == (NEW, OLD)
    assert restarts[0][2].startswith("rollback: ") and "atoll-broken" in restarts[0][2]
    # Back on the old commit by the next soft-reboot: recovered, reported why.
    node.status, node.boot, node.rounds = BACK_ON_OLD, "b1+soft2", [GOOD]
    assert node.monitor().settle() is Outcome.RECOVERED
    assert "atoll-broken" in node.health()["rollback"]["reason"]


def test_the_previous_commit_after_a_soft_reboot_that_did_not_switch_is_a_fall_back(
    node: Node,
) -> None:
    """systemd came back in the old root (the switch failed): not a wait, a fall-back."""
    staged(node, boot="b1")
    node.status, node.boot, node.rounds = PENDING, "b1+soft1", [GOOD]
    assert node.monitor().settle() is Outcome.FELL_BACK
    assert "did not reach the agent" in json.dumps(node.audit[-1])


def test_a_soft_reboot_that_did_not_switch_root_is_told_by_the_missing_sysroot(
    tmp_path: Path,
) -> None:
    record = tmp_path / "atoll-soft-reboot.json"
    sysroot = tmp_path / "sysroot"
    assert switch_failed(record, sysroot) is None  # a firmware boot: no record
    run = Recorder()
    restarter(tmp_path, run).restart(BOOTED, deployment(), "upgrade", AUTO)
    written = tmp_path / "run/atoll-soft-reboot.json"
    failed = switch_failed(written, tmp_path / "empty")  # the old root, /sysroot unmounted
    assert failed is not None and failed.into_commit == NEW
    (sysroot / "ostree/repo").mkdir(parents=True, exist_ok=True)
    (sysroot / "ostree/repo/config").write_text("[core]\nrepo_version=1\n")
    assert switch_failed(written, sysroot) is None  # switched: the repository is there

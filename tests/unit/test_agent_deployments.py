"""Deployments: status parsing, and the argv upgrade/rollback run (recorded by a fake runner)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from atoll.agent import command, markers
from atoll.agent.deployments import (
    DEPLOY_TIMEOUT,
    REBOOT_TIMEOUT,
    STATUS_TIMEOUT,
    UPGRADE_TIMEOUT,
    BootEntriesError,
    DeploymentError,
    Deployments,
    parse_status,
)
from atoll.wire.bootentry import EspFullError

OLD = "c462f77e059e6caec7c945196c77782e2ecea4cee96c561524552714f10e507a"
NEW = "1f" * 32

BOOTED_ONLY = f"""* atoll {OLD}.0
    Version: 1.0.0
    origin refspec: atoll/x86_64/minimal
"""
PENDING = f"""  atoll {NEW}.0 (pending)
    Version: 1.1.0
    origin refspec: atoll/x86_64/minimal
* atoll {OLD}.0
    Version: 1.0.0
    origin refspec: atoll/x86_64/minimal
"""
AFTER_REBOOT = f"""* atoll {NEW}.0
    Version: 1.1.0
    origin refspec: atoll/x86_64/minimal
  atoll {OLD}.0 (rollback)
    Version: 1.0.0
    origin refspec: atoll/x86_64/minimal
"""


class Fake:
    def __init__(self, status: str) -> None:
        self.status = status
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []
        self.synced = 0

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        self.calls.append(list(argv))
        self.timeouts.append(timeout)
        return self.status if list(argv) == ["ostree", "admin", "status"] else ""

    def sync(self) -> None:
        self.synced += 1

    def deployments(self) -> Deployments:
        return Deployments(self.run, self.sync)


def test_parse_status() -> None:
    deployments = parse_status(PENDING)
    assert [(d.index, d.checksum, d.booted, d.pending, d.version) for d in deployments] == [
        (0, NEW, False, True, "1.1.0"),
        (1, OLD, True, False, "1.0.0"),
    ]
    assert deployments[1].refspec == "atoll/x86_64/minimal"
    rollback = parse_status(AFTER_REBOOT)[1]
    assert rollback.rollback and not rollback.booted
    assert parse_status("") == []


class Deploying(Fake):
    """Booted on OLD; a deploy makes NEW the pending default. Records the marker at each sync."""

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(BOOTED_ONLY)
        self.root = root
        self.at_sync: list[str | None] = []

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        out = super().run(argv, timeout=timeout)
        if argv[:2] == ["ostree", "admin"] and argv[2] in ("deploy", "upgrade"):
            self.status = PENDING
        return out

    def sync(self) -> None:
        super().sync()
        if self.root is not None:
            marker = markers.read_pending(self.root / markers.PENDING)
            self.at_sync.append(None if marker is None else str(marker.state))

    def deployments(self) -> Deployments:
        return Deployments(self.run, self.sync, root=self.root, boot_id=lambda: "boot-1")


def test_upgrade_runs_ostree_then_syncs_boot_entries() -> None:
    fake = Deploying()
    result = fake.deployments().upgrade()
    assert fake.calls == [
        ["ostree", "admin", "status"],
        ["ostree", "admin", "upgrade"],
        ["ostree", "admin", "status"],
    ]
    assert fake.synced == 1
    assert result["deployments"][0]["pending"]
    fake = Deploying()
    assert fake.deployments().upgrade(NEW)["ran"] == ["ostree", "admin", "deploy", NEW]


def test_the_marker_exists_before_the_esp_can_boot_the_new_commit(tmp_path: Path) -> None:
    fake = Deploying(tmp_path)
    fake.deployments().upgrade(NEW)
    # Written as "deploying" before the ESP sync, "staged" once it is done.
    assert fake.at_sync == ["deploying"]
    marker = markers.read_pending(tmp_path / markers.PENDING)
    assert marker is not None
    assert (marker.new, marker.previous, marker.state) == (NEW, OLD, markers.TrialState.STAGED)
    assert marker.staged_boot == "boot-1"


def test_upgrading_to_the_pending_default_again_finishes_it_without_a_second_deploy(
    tmp_path: Path,
) -> None:
    fake = Deploying(tmp_path)
    fake.status = PENDING  # deployed in an earlier attempt, cut short before the ESP sync
    markers.write_pending(
        tmp_path / markers.PENDING,
        markers.Pending(NEW, OLD, staged_boot="boot-1", state=markers.TrialState.DEPLOYING),
    )
    result = fake.deployments().upgrade(NEW)
    assert result["ran"] == []
    assert not any(c[2] == "deploy" for c in fake.calls)
    assert fake.synced == 1
    marker = markers.read_pending(tmp_path / markers.PENDING)
    assert marker is not None and marker.state is markers.TrialState.STAGED
    # A ref is resolved by ostree (it may have moved on): deployed as asked.
    fake.calls.clear()
    fake.deployments().upgrade("atoll/x86_64/minimal")
    assert ["ostree", "admin", "deploy", "atoll/x86_64/minimal"] in fake.calls


def test_finish_staging_syncs_and_marks_a_deploying_upgrade_staged(tmp_path: Path) -> None:
    fake = Deploying(tmp_path)
    deployments = fake.deployments()
    deployments.finish_staging()  # no marker: only the sync
    assert fake.synced == 1 and not (tmp_path / markers.PENDING).exists()
    markers.write_pending(
        tmp_path / markers.PENDING,
        markers.Pending(NEW, OLD, staged_boot="boot-0", state=markers.TrialState.DEPLOYING),
    )
    deployments.finish_staging()
    marker = markers.read_pending(tmp_path / markers.PENDING)
    assert marker is not None
    assert (marker.state, marker.staged_boot) == (markers.TrialState.STAGED, "boot-0")


def test_upgrade_refuses_a_bad_target_before_running_anything() -> None:
    fake = Fake(PENDING)
    for bad in ("--os=evil", "a/../b", "a b", ""):
        with pytest.raises(ValueError, match="to: "):
            fake.deployments().upgrade(bad)
    assert fake.calls == [] and fake.synced == 0


def test_rollback_cancels_a_pending_deployment() -> None:
    fake = Fake(PENDING)
    result = fake.deployments().rollback()
    assert result["ran"] == ["ostree", "admin", "undeploy", "0"]
    assert fake.synced == 1


def test_rollback_redeploys_the_previous_commit_after_reboot() -> None:
    fake = Fake(AFTER_REBOOT)
    assert fake.deployments().rollback()["ran"] == ["ostree", "admin", "deploy", "--retain", OLD]


def test_rollback_with_nothing_to_go_back_to_fails_without_running() -> None:
    fake = Fake(BOOTED_ONLY)
    with pytest.raises(DeploymentError, match="no pending or rollback"):
        fake.deployments().rollback()
    assert fake.calls == [["ostree", "admin", "status"]] and fake.synced == 0


def test_a_pending_deployment_left_without_a_marker_gets_one_before_the_esp_sync(
    tmp_path: Path,
) -> None:
    fake = Deploying(tmp_path)
    fake.status = PENDING  # an agent died between the deploy and the marker
    fake.deployments().finish_staging()  # the update loop, before it reboots
    assert fake.at_sync == ["deploying"]
    marker = markers.read_pending(tmp_path / markers.PENDING)
    assert marker is not None
    assert (marker.new, marker.previous, marker.state) == (NEW, OLD, markers.TrialState.STAGED)


def test_a_marker_an_earlier_boot_left_is_renewed_for_this_boot(tmp_path: Path) -> None:
    fake = Deploying(tmp_path)
    fake.status = PENDING
    markers.write_pending(
        tmp_path / markers.PENDING,
        markers.Pending(NEW, OLD, staged_boot="boot-0", state=markers.TrialState.STAGED),
    )
    fake.deployments().upgrade(NEW)  # an operator, early in boot-1
    marker = markers.read_pending(tmp_path / markers.PENDING)
    assert marker is not None
    # Staged in this boot: the monitor waits for the reboot instead of seeing a fall back.
    assert (marker.staged_boot, marker.state) == ("boot-1", markers.TrialState.STAGED)


@pytest.mark.parametrize("state", [markers.TrialState.TRIAL, markers.TrialState.ROLLED_BACK])
def test_no_upgrade_while_a_trial_decides(tmp_path: Path, state: markers.TrialState) -> None:
    fake = Deploying(tmp_path)
    fake.status = AFTER_REBOOT
    trial = markers.Pending(NEW, OLD, "1.1.0", staged_boot="boot-0", state=state)
    markers.write_pending(tmp_path / markers.PENDING, trial)
    deployments = fake.deployments()
    assert deployments.trial() == trial
    with pytest.raises(DeploymentError, match=f"pending.json: 1.1.0 is {state}"):
        deployments.upgrade("2f" * 32)
    assert fake.calls == [] and fake.synced == 0
    assert markers.read_pending(tmp_path / markers.PENDING) == trial


@pytest.mark.parametrize(
    ("status", "operation", "expected"),
    [
        (BOOTED_ONLY, lambda d: d.upgrade(), ("ostree admin upgrade", UPGRADE_TIMEOUT)),
        (BOOTED_ONLY, lambda d: d.upgrade(NEW), ("ostree admin deploy", DEPLOY_TIMEOUT)),
        (PENDING, lambda d: d.rollback(), ("ostree admin undeploy", DEPLOY_TIMEOUT)),
        (AFTER_REBOOT, lambda d: d.rollback(), ("ostree admin deploy", DEPLOY_TIMEOUT)),
        (BOOTED_ONLY, lambda d: d.reboot(), ("systemctl reboot", REBOOT_TIMEOUT)),
    ],
)
def test_every_command_has_a_finite_timeout_long_enough_for_its_work(
    status: str, operation: Callable[[Deployments], object], expected: tuple[str, float]
) -> None:
    fake = Deploying()
    fake.status = status
    operation(fake.deployments())
    ran = {(" ".join(c[:3]), t) for c, t in zip(fake.calls, fake.timeouts, strict=True)}
    assert ran - {("ostree admin status", STATUS_TIMEOUT)} == {expected}
    assert all(0 < t < math.inf for t in fake.timeouts)
    # A deploy on a slow emulated node takes minutes: the limits leave room for that.
    assert min(DEPLOY_TIMEOUT, UPGRADE_TIMEOUT) >= 15 * 60


class Hanging(Deploying):
    """The first ``ostree admin deploy`` never answers: the runner gives up at its timeout."""

    hung = False

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        if argv[:3] == ["ostree", "admin", "deploy"] and not self.hung:
            self.hung = True
            raise command.CommandError(argv, timeout=timeout, stderr="pulling...\n")
        return super().run(argv, timeout=timeout)


def test_a_hung_deploy_fails_naming_the_timeout_and_frees_the_lock(tmp_path: Path) -> None:
    fake = Hanging(tmp_path)
    deployments = fake.deployments()
    expected = rf"^ostree admin deploy {NEW}: timed out after 1800 s \| pulling\.\.\.$"
    with pytest.raises(DeploymentError, match=expected) as failed:
        deployments.upgrade(NEW)
    assert isinstance(failed.value.__cause__, command.CommandError)
    assert fake.synced == 0 and not (tmp_path / markers.PENDING).exists()
    # The lock is free: another thread's upgrade (the API's, the loop's next round) runs.
    result: list[object] = []
    other = threading.Thread(target=lambda: result.append(deployments.upgrade(NEW)))
    other.start()
    other.join(5)
    assert not other.is_alive() and result, "the deployments' lock is still held"
    assert fake.synced == 1


# --- a failed step undone (issue 20): nothing is left half-staged -----------------------


class Undoing(Deploying):
    """Deploying, where ``undeploy 0`` removes the pending deployment again, and the sync
    can be made to fail."""

    def __init__(self, root: Path | None = None, sync_error: Exception | None = None) -> None:
        super().__init__(root)
        self.sync_error = sync_error

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        out = super().run(argv, timeout=timeout)
        if list(argv) == ["ostree", "admin", "undeploy", "0"]:
            self.status = BOOTED_ONLY
        return out

    def sync(self) -> None:
        super().sync()
        if self.sync_error is not None:
            raise self.sync_error


def test_a_full_esp_fails_the_upgrade_as_a_boot_entries_error_naming_it(tmp_path: Path) -> None:
    full = EspFullError(
        "ESP (/efi) has 0 bytes free, the new kernel needs 14 MB", resource="ESP (/efi)"
    )
    fake = Undoing(tmp_path, sync_error=full)
    with pytest.raises(BootEntriesError, match=r"^ESP \(/efi\) has 0 bytes free") as failed:
        fake.deployments().upgrade(NEW)
    assert failed.value.resource == "ESP (/efi)"
    assert isinstance(failed.value.__cause__, BootEntriesError)
    assert failed.value.__cause__.__cause__ is full
    assert failed.value.undone == [NEW]
    # Nothing half-staged is left: the deployment is undone and its marker gone.
    assert fake.status == BOOTED_ONLY
    assert ["ostree", "admin", "undeploy", "0"] in fake.calls
    assert not (tmp_path / markers.PENDING).exists()
    # A sync that fails otherwise (a mount, an I/O error) names no resource.
    fake.sync_error = command.CommandError(["mount", "-t", "vfat"], status=32, stderr="busy\n")
    with pytest.raises(BootEntriesError, match="mount -t vfat") as mount:
        fake.deployments().finish_staging()
    assert mount.value.resource is None


def test_undo_removes_the_pending_deployment_and_its_marker(tmp_path: Path) -> None:
    fake = Undoing(tmp_path)
    fake.status = PENDING
    markers.write_pending(
        tmp_path / markers.PENDING,
        markers.Pending(NEW, OLD, staged_boot="boot-1", state=markers.TrialState.DEPLOYING),
    )
    assert fake.deployments().undo_staging() == ([NEW], [])
    assert fake.status == BOOTED_ONLY and fake.synced == 1
    assert ["ostree", "admin", "undeploy", "0"] in fake.calls
    assert not (tmp_path / markers.PENDING).exists()


def test_undo_with_nothing_staged_changes_nothing(tmp_path: Path) -> None:
    fake = Undoing(tmp_path)
    assert fake.deployments().undo_staging() == ([], [])
    assert fake.calls == [["ostree", "admin", "status"]] and fake.synced == 0
    # Nor does it touch a deployment on trial or its marker: the booted one is the default.
    fake.status = AFTER_REBOOT
    trial = markers.Pending(NEW, OLD, staged_boot="boot-0", state=markers.TrialState.TRIAL)
    markers.write_pending(tmp_path / markers.PENDING, trial)
    assert fake.deployments().undo_staging() == ([], [])
    assert markers.read_pending(tmp_path / markers.PENDING) == trial


def test_undo_says_what_it_could_not_undo_and_still_removes_the_marker(tmp_path: Path) -> None:
    fake = Undoing(tmp_path, sync_error=OSError(5, "Input/output error"))
    fake.status = PENDING
    markers.write_pending(tmp_path / markers.PENDING, markers.Pending(NEW, OLD))
    undone, problems = fake.deployments().undo_staging()
    assert undone == [NEW]
    assert problems == [
        "the ESP could not be synced after the undeploy: [Errno 5] Input/output error"
    ]
    assert not (tmp_path / markers.PENDING).exists()

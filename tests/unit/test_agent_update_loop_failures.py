"""A failed step of the update loop (issue 20): which step it is (failure_of), and what
the loop does about it: undo, audit, report once, then follow the controller."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from atoll.agent import command, markers
from atoll.agent.deployments import BootEntriesError, DeploymentError, Deployments
from atoll.agent.fetch import PullError
from atoll.agent.softreboot import (
    SOFT_REBOOT_TARGET,
    KernelFacts,
    Restarter,
    read_soft_record,
)
from atoll.agent.update_loop import UpdateError, Updater, UpdaterConfig, failure_of
from atoll.wire.channel import VerificationError
from atoll.wire.fleet import Desired, FleetError, RebootPolicy, Step, StepFailure

OLD, NEW = "a" * 64, "b" * 64
ESP = "ESP (/boot/efi)"


@pytest.mark.parametrize(
    ("phase", "error", "expected"),
    [
        (Step.FETCH, OSError("http://u/channels/stable.json: refused"), (Step.FETCH, None)),
        (Step.FETCH, UpdateError("channel 'stable': no version '9'"), (Step.FETCH, None)),
        # During the fetch, a channel document that does not verify is the verify step,
        (Step.FETCH, VerificationError("channel: bad signature"), (Step.VERIFY, None)),
        # and a pull ostree could not finish stays a fetch.
        (Step.FETCH, PullError("pull of bbbb from http://u/repo failed: 404"), (Step.FETCH, None)),
        (Step.VERIFY, VerificationError("commit: no signature"), (Step.VERIFY, None)),
        (Step.DEPLOY, DeploymentError("ostree admin deploy: exit 1"), (Step.DEPLOY, None)),
        # The deploy syncs the ESP: its failure is the boot entries step, with the resource.
        (Step.DEPLOY, BootEntriesError("ESP full", resource=ESP), (Step.BOOT_ENTRIES, ESP)),
        (Step.BOOT_ENTRIES, BootEntriesError("mount failed"), (Step.BOOT_ENTRIES, None)),
        (Step.REBOOT, DeploymentError("systemctl reboot: exit 1"), (Step.REBOOT, None)),
    ],
)
def test_a_failure_names_the_step_it_happened_in(
    phase: Step, error: Exception, expected: tuple[Step, str | None]
) -> None:
    failure = failure_of(phase, "2.0", error)
    assert (failure.step, failure.resource) == expected
    assert (failure.version, failure.reason) == ("2.0", str(error))


def test_an_unexpected_error_is_reported_with_its_type_on_one_line() -> None:
    failure = failure_of(Step.DEPLOY, "2.0", KeyError("deployments\nindex"))
    assert failure.reason == "KeyError: 'deployments\\nindex'"
    assert (
        failure_of(Step.FETCH, "2", command.CommandError(["ostree"], status=1)).step is Step.FETCH
    )


class Sysroot:
    """``ostree admin`` over one booted and maybe one pending deployment."""

    def __init__(self) -> None:
        self.pending: str | None = None
        self.commands: list[list[str]] = []
        self.reboot_fails = True

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        self.commands.append(list(argv))
        if list(argv) == ["ostree", "admin", "status"]:
            lines = (
                [f"  atoll {self.pending}.0 (pending)", "    Version: 2.0"] if self.pending else []
            )
            return "\n".join([*lines, f"* atoll {OLD}.0", "    Version: 1.0", ""])
        if list(argv) == ["ostree", "admin", "undeploy", "0"]:
            self.pending = None
        elif list(argv) == ["systemctl", "reboot"] and self.reboot_fails:
            raise command.CommandError(argv, status=1, stderr="Failed to reboot: inhibited\n")
        return ""


class Controller:
    """Records the reports; answers with ``answers`` (the last one repeats)."""

    def __init__(self, *answers: Desired) -> None:
        self.answers = list(answers)
        self.reports: list[dict[str, Any]] = []
        self.down = False

    def report(self, name: str, **report: Any) -> Desired:
        if self.down:
            raise FleetError("POST http://c/v1/nodes/n1/report: gave up after 4 attempts")
        self.reports.append(report)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


REBOOT_INTO_2 = Desired(NEW, stage=True, may_reboot=True, reason="", pool="web")
WAIT = Desired(NEW, stage=False, may_reboot=False, reason="retries at 12:00", pool="web")


def _updater(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, controller: Controller
) -> tuple[Updater, Sysroot, list[dict[str, Any]], list[float]]:
    sysroot = Sysroot()
    sysroot.pending = NEW  # staged in an earlier round
    config = UpdaterConfig("http://c", "http://u", "stable", "n1")
    deployments = Deployments(sysroot.run, lambda: None, root=tmp_path, boot_id=lambda: "b1")
    audit: list[dict[str, Any]] = []
    paused: list[float] = []
    updater = Updater(
        config,
        deployments,
        [],
        root=tmp_path,
        health=lambda: (True, False),
        log=lambda _: None,
        record=lambda **fields: audit.append(fields),
        pause=paused.append,
        registered=True,
    )
    monkeypatch.setattr(updater.client, "report", controller.report)
    return updater, sysroot, audit, paused


def test_a_reboot_that_does_not_happen_is_undone_audited_and_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = Controller(REBOOT_INTO_2, WAIT)
    updater, sysroot, audit, paused = _updater(tmp_path, monkeypatch, controller)
    answer = updater.step()
    # systemctl failed and the node still ran after the grace: a reboot failure.
    assert paused == [updater.reboot_grace]
    assert sysroot.pending is None and not (tmp_path / markers.PENDING).exists()
    assert ["ostree", "admin", "undeploy", "0"] in sysroot.commands
    first, second = controller.reports
    assert (first["staged"], first["failure"]) == ("2.0", None)
    failure = second["failure"]
    assert isinstance(failure, StepFailure) and second["staged"] is None
    assert (failure.step, failure.version) == (Step.REBOOT, NEW)
    assert "Failed to reboot: inhibited" in failure.reason
    assert failure.reason.endswith("the node still runs 60 s later")
    assert answer == WAIT  # the answer to the failure, followed from the next round on
    assert audit == [
        {
            "who": "agent:update",
            "role": None,
            "what": "update: reboot failed",
            "params": {**failure.to_json(), "undeployed": [NEW]},
            "result": "failed",
        }
    ]
    # Sent once: the next report carries no failure and the node waits as told.
    updater.step()
    assert controller.reports[2]["failure"] is None and sysroot.pending is None
    assert len(audit) == 1


def test_a_node_shutting_down_after_systemctl_failed_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = Controller(REBOOT_INTO_2)
    updater, sysroot, audit, _ = _updater(tmp_path, monkeypatch, controller)
    updater.stopping = threading.Event()
    updater.pause = lambda _: updater.stopping.set()  # SIGTERM arrives during the grace
    updater.step()
    assert sysroot.pending == NEW and audit == [] and len(controller.reports) == 1


def test_a_soft_reboot_whose_stop_never_comes_is_taken_back_and_is_a_reboot_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pool chose soft-reboots when possible.
    controller = Controller(replace(REBOOT_INTO_2, reboot=RebootPolicy.AUTO), WAIT)
    updater, sysroot, audit, _ = _updater(tmp_path, monkeypatch, controller)
    kernel = KernelFacts("6.12.43+deb13-cloud-amd64", tmp_path / "vmlinuz", ("rw",))
    record = tmp_path / "run/atoll-soft-reboot.json"
    (tmp_path / SOFT_REBOOT_TARGET).parent.mkdir(parents=True)
    (tmp_path / SOFT_REBOOT_TARGET).write_text("[Unit]\n")
    updater.restarter = Restarter(
        sysroot.run,
        root=tmp_path,
        sysroot=tmp_path / "sysroot",
        nextroot=tmp_path / "nextroot",
        soft_record=record,
        running=lambda: kernel,
        staged=lambda _: kernel,
        same_image=lambda a, b: True,
        mounted=lambda _: True,
    )
    updater.soft_reboot_wait = 0.01  # systemctl returned; the agent's stop never comes
    updater.step()
    soft = sysroot.commands.index(["systemctl", "soft-reboot"])
    assert sysroot.commands[soft + 1] == ["umount", "--recursive", str(tmp_path / "nextroot")]
    assert read_soft_record(record) is None  # this userspace goes on: no soft-reboot record
    failure = controller.reports[1]["failure"]
    assert (failure.step, failure.version) == (Step.REBOOT, NEW)
    assert failure.reason == "systemctl soft-reboot: the agent still runs 0.01 s later"
    assert sysroot.pending is None and len(audit) == 1


def test_the_grace_after_a_failed_reboot_ends_with_the_agents_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shutdown the reboot began stops the agent: it must not sit out the grace
    # (its unit's stop would wait, and its health rounds would see the node going down).
    controller = Controller(REBOOT_INTO_2)
    updater, sysroot, audit, _ = _updater(tmp_path, monkeypatch, controller)
    updater.pause, updater.reboot_grace = None, 600.0
    threading.Timer(0.2, updater.stopping.set).start()
    started = time.monotonic()
    updater.step()
    assert time.monotonic() - started < 30.0
    assert sysroot.pending == NEW and audit == [] and len(controller.reports) == 1


def test_a_failure_the_controller_did_not_hear_goes_with_the_next_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    controller = Controller(REBOOT_INTO_2, WAIT)
    updater, sysroot, audit, _ = _updater(tmp_path, monkeypatch, controller)
    real_report = controller.report

    def report_then_go_down(name: str, **report: Any) -> Desired:
        answer = real_report(name, **report)
        controller.down = True  # down right after the round's first report
        return answer

    monkeypatch.setattr(updater.client, "report", report_then_go_down)
    with pytest.raises(FleetError, match="gave up"):
        updater.step()
    assert sysroot.pending is None and len(audit) == 1 and len(controller.reports) == 1
    controller.down = False
    monkeypatch.setattr(updater.client, "report", controller.report)
    updater.step()
    assert controller.reports[1]["failure"].step is Step.REBOOT
    assert controller.reports[1]["staged"] is None
    updater.step()
    assert controller.reports[2]["failure"] is None


def test_a_rollback_here_is_no_step_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build that failed its health trial here is refused as before (the rollback is
    what the controller hears about), not reported as a failed fetch every round."""
    commit = "c" * 64
    controller = Controller(Desired(commit, stage=True, may_reboot=False, reason="", pool="web"))
    updater, sysroot, audit, _ = _updater(tmp_path, monkeypatch, controller)
    sysroot.pending = None
    record = markers.Rollback(commit, OLD, "health: x failed", "2026-12-06T10:00:00Z")
    markers.write_json(tmp_path / markers.ROLLBACK, record.as_dict())
    with pytest.raises(UpdateError, match="was rolled back on this node"):
        updater.step()
    assert audit == [] and len(controller.reports) == 1

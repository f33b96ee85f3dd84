"""Deployments: status parsing, and the argv upgrade/rollback run (recorded by a fake runner)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from atoll.agent.deployments import DeploymentError, Deployments, parse_status

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
        self.synced = 0

    def run(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
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


def test_upgrade_runs_ostree_then_syncs_boot_entries() -> None:
    fake = Fake(PENDING)
    result = fake.deployments().upgrade()
    assert fake.calls[0] == ["ostree", "admin", "upgrade"]
    assert fake.synced == 1
    assert result["deployments"][0]["pending"]
    fake.deployments().upgrade(NEW)
    assert ["ostree", "admin", "deploy", "--retain", NEW] in fake.calls


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

"""Deployment routes over real mutual TLS: upgrade, rollback, reboot with a recording runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from atoll.agent.command import CommandError
from atoll.pki import Role
from tests.integration.running_agent import RunningAgent
from tests.unit.test_agent_deployments import AFTER_REBOOT, NEW, OLD, PENDING

# AFTER_REBOOT, then ``ostree admin deploy --retain OLD``: OLD the default, NEW booted.
ROLLED_BACK = f"""  atoll {OLD}.1
    Version: 1.0.0
    origin refspec: atoll/x86_64/minimal
* atoll {NEW}.0
    Version: 1.1.0
    origin refspec: atoll/x86_64/minimal
"""


class Ostree:
    """Records argv; ``ostree admin status`` answers ``status``; ``fail`` argv raise."""

    def __init__(self) -> None:
        self.status = AFTER_REBOOT
        self.calls: list[list[str]] = []
        self.synced = 0
        self.fail_reboot = False
        self.fail_status = False

    def answer(self, argv: list[str]) -> str:
        self.calls.append(list(argv))
        if list(argv[:2]) == ["ostree", "admin"] and argv[2] == "status":
            if self.fail_status:
                raise CommandError(argv, status=1, stderr="error: sysroot locked")
            return self.status
        if argv[:3] == ["ostree", "admin", "upgrade"]:
            self.status = PENDING
        if argv[:3] == ["ostree", "admin", "deploy"] and self.status == AFTER_REBOOT:
            self.status = ROLLED_BACK
        if argv == ["systemctl", "reboot"] and self.fail_reboot:
            raise CommandError(argv, status=1, stderr="Failed to reboot: Access denied")
        return ""

    def sync(self) -> None:
        self.synced += 1

    def changes(self) -> list[list[str]]:
        return [c for c in self.calls if c != ["ostree", "admin", "status"]]


@pytest.fixture
def setup(start_agent: Callable[..., RunningAgent]) -> tuple[RunningAgent, Ostree]:
    ostree = Ostree()
    node = start_agent(
        answers=ostree.answer,
        sync=ostree.sync,
        clients=(("vera", Role.VIEWER), ("otto", Role.OPERATOR)),
        os_release=None,
        hostname=None,
    )
    return node, ostree


def test_status_lists_deployments(setup: tuple[RunningAgent, Ostree]) -> None:
    node, _ = setup
    status, body = node.call("vera", "GET", "/v1/status")
    assert status == 200
    assert [(d["checksum"], d["booted"]) for d in body["deployments"]] == [
        (NEW, True),
        (OLD, False),
    ]


def test_upgrade_deploys_and_syncs_boot_entries(setup: tuple[RunningAgent, Ostree]) -> None:
    node, ostree = setup
    status, body = node.call("otto", "POST", "/v1/upgrade", {})
    assert status == 200 and body["ran"] == ["ostree", "admin", "upgrade"]
    assert body["deployments"][0]["pending"] and ostree.synced == 1
    status, body = node.call("otto", "POST", "/v1/upgrade", {"to": OLD, "reboot": True})
    assert status == 200 and body["reboot"] == ["systemctl", "reboot"]
    assert ostree.changes()[-2:] == [
        ["ostree", "admin", "deploy", OLD],
        ["systemctl", "reboot"],
    ]
    # Into the pending default: the last restart, as the fleet and a rollback read it.
    restart = node.call("vera", "GET", "/v1/status")[1]["restart"]
    assert {k: restart[k] for k in ("kind", "reason", "policy", "why", "from", "into")} == {
        "kind": "full",
        "reason": "asked for through the API",
        "policy": "full",
        "why": "upgrade through the API",
        "from": OLD,
        "into": NEW,
    }


def test_rollback_and_reboot(setup: tuple[RunningAgent, Ostree]) -> None:
    node, ostree = setup
    status, body = node.call("otto", "POST", "/v1/rollback", {})
    assert status == 200 and body["ran"] == ["ostree", "admin", "deploy", "--retain", OLD]
    assert node.call("otto", "POST", "/v1/reboot", {})[0] == 200
    assert ostree.changes() == [
        ["ostree", "admin", "deploy", "--retain", OLD],
        ["systemctl", "reboot"],
    ]
    restart = node.call("vera", "GET", "/v1/status")[1]["restart"]
    assert (restart["why"], restart["from"], restart["into"]) == (
        "reboot through the API",
        NEW,
        OLD,
    )


def test_a_reboot_still_happens_when_ostree_cannot_say_what_is_deployed(
    setup: tuple[RunningAgent, Ostree],
) -> None:
    node, ostree = setup
    ostree.fail_status = True
    assert node.call("otto", "POST", "/v1/reboot", {})[0] == 200  # a recovery tool
    assert ostree.calls[-1] == ["systemctl", "reboot"]
    ostree.fail_status = False
    assert node.call("vera", "GET", "/v1/status")[1]["restart"] is None


def test_a_plain_reboot_keeps_the_last_restart_and_a_failed_one_puts_it_back(
    setup: tuple[RunningAgent, Ostree],
) -> None:
    node, ostree = setup
    assert node.call("otto", "POST", "/v1/reboot", {})[0] == 200  # nothing pending
    assert node.call("vera", "GET", "/v1/status")[1]["restart"] is None
    ostree.fail_reboot = True
    status, body = node.call("otto", "POST", "/v1/rollback", {"reboot": True})
    assert status == 409 and "Access denied" in body["error"]
    assert node.call("vera", "GET", "/v1/status")[1]["restart"] is None


def test_viewer_may_not_deploy(setup: tuple[RunningAgent, Ostree]) -> None:
    node, ostree = setup
    for path in ("/v1/upgrade", "/v1/rollback", "/v1/reboot"):
        status, body = node.call("vera", "POST", path, {})
        assert status == 403 and "needs role operator" in body["error"]
    assert ostree.changes() == [] and ostree.synced == 0


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/v1/upgrade", {"to": "--os=x"}, "to: "),
        ("/v1/upgrade", {"to": "atoll/stable\n"}, "to: "),  # `$` let a trailing newline in
        ("/v1/upgrade", {"to": "ab" * 32 + "\n"}, "to: "),
        ("/v1/upgrade", {"to": 3}, "to: expected str"),
        ("/v1/upgrade", {"reboot": "yes"}, "reboot: expected bool"),
        ("/v1/upgrade", {"when": "now"}, "when: unknown field"),
        ("/v1/rollback", {"reboot": 1}, "reboot: expected bool"),
        ("/v1/reboot", {"force": True}, "force: unknown field"),
        ("/v1/reboot", None, "body: expected"),
    ],
)
def test_bad_bodies_run_nothing(
    setup: tuple[RunningAgent, Ostree], path: str, body: Any, names: str
) -> None:
    node, ostree = setup
    status, answer = node.call("otto", "POST", path, body)
    assert status == 400 and names in answer["error"]
    assert ostree.changes() == [] and ostree.synced == 0


def test_nothing_to_roll_back_is_a_conflict(setup: tuple[RunningAgent, Ostree]) -> None:
    node, ostree = setup
    ostree.status = AFTER_REBOOT.split("  atoll")[0]  # the booted deployment only
    status, body = node.call("otto", "POST", "/v1/rollback", {"reboot": True})
    assert status == 409 and "no pending or rollback" in body["error"]
    assert ostree.changes() == []

"""The pending-upgrade marker: which commit is on trial and which one to fall back to.

When the agent deploys a new default deployment beside the running one
(:meth:`atoll.agent.deployments.Deployments.upgrade`), it writes
``/var/lib/atoll/pending.json`` with the new commit, the commit it was running
(the fallback) and the boot it was staged in (``/proc/sys/kernel/random/boot_id``, with the number
of soft-reboots since the firmware boot: :func:`current_boot_id`).
:class:`atoll.agent.health.Monitor` reads it at every start of the agent and
moves it along (see ``docs/agent.md``, "Health and automatic rollback")::

    deploying --(ESP synced)--> staged --(boot into new)--> trial --(checks pass)--> removed
                                                                 \\--(checks fail)--> rolled-back
    rolled-back --(boot into previous)--> removed (the rollback is kept in rollback.json)
    deploying --(a later boot into previous: the upgrade was cut short)--> removed, undeployed

The marker lives on ``/var``: it survives the reboot and is shared by every
deployment. Writes are atomic (:func:`atoll.durable.write_atomic`: temporary
file, fsync, rename, fsync of the directory), so a power cut leaves either the
old or the new marker. A marker that cannot be parsed is reported as such,
never silently taken for "no trial".

The last automatic rollback is kept beside it (``rollback.json``: from, to,
reason, time) until the next upgrade is staged, so the node keeps reporting
it to the fleet controller. Standard library and :mod:`atoll.durable` only:
this runs on the node.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from atoll.durable import write_atomic

PENDING = Path("var/lib/atoll/pending.json")
ROLLBACK = Path("var/lib/atoll/rollback.json")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# Written by the agent before `systemctl soft-reboot` (atoll.agent.softreboot); /run
# survives a soft-reboot and not a firmware boot.
SOFT_RECORD = Path("/run/atoll-soft-reboot.json")


class MarkerError(ValueError):
    """The marker file exists but cannot be used (the message names the file and key)."""


class TrialState(StrEnum):
    DEPLOYING = "deploying"  # deployed; the ESP may not hold its boot entry yet
    STAGED = "staged"  # deployed as the default; the node has not booted it yet
    TRIAL = "trial"  # booted; health not confirmed yet
    ROLLED_BACK = "rolled-back"  # health failed; the previous commit is the default again


@dataclass(frozen=True)
class Pending:
    new: str  # the commit on trial
    previous: str  # the commit to fall back to (the one running when it was staged)
    new_version: str | None = None
    previous_version: str | None = None
    staged_boot: str = ""  # boot_id of the boot that staged it
    state: TrialState = TrialState.STAGED
    boots: int = 0  # boots into ``new`` that reached the agent
    last_boot: str = ""  # boot_id of the last boot counted in ``boots``
    reason: str = ""  # why it was rolled back

    def advance(self, **changes: Any) -> Pending:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "state": str(self.state)}


@dataclass(frozen=True)
class Rollback:
    """The last automatic rollback: reported until the next upgrade is staged."""

    from_commit: str
    to_commit: str
    reason: str
    at: str  # ISO 8601 UTC

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _str(raw: dict[str, Any], key: str, path: Path, *, optional: bool = False) -> str | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MarkerError(f"{path}: {key}: expected a string, got {value!r}")
    return value


def read_pending(path: Path) -> Pending | None:
    """The marker, or None when there is none; :class:`MarkerError` when it is unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise MarkerError(f"{path}: not JSON ({e})") from e
    if not isinstance(raw, dict):
        raise MarkerError(f"{path}: expected a JSON object")
    state = raw.get("state", "staged")
    if state not in TrialState.__members__.values():
        raise MarkerError(f"{path}: state: {state!r} is not one of {[str(s) for s in TrialState]}")
    boots = raw.get("boots", 0)
    if type(boots) is not int or boots < 0:
        raise MarkerError(f"{path}: boots: expected a count, got {boots!r}")
    return Pending(
        new=str(_str(raw, "new", path)),
        previous=str(_str(raw, "previous", path)),
        new_version=_str(raw, "new_version", path, optional=True),
        previous_version=_str(raw, "previous_version", path, optional=True),
        staged_boot=_str(raw, "staged_boot", path, optional=True) or "",
        state=TrialState(state),
        boots=boots,
        last_boot=_str(raw, "last_boot", path, optional=True) or "",
        reason=_str(raw, "reason", path, optional=True) or "",
    )


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically and durably (:func:`atoll.durable.write_atomic`)."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_pending(path: Path, pending: Pending) -> None:
    write_json(path, pending.as_dict())


def clear(path: Path) -> None:
    path.unlink(missing_ok=True)


def read_rollback(path: Path) -> Rollback | None:
    """The last automatic rollback, or None (an unreadable record counts as none)."""
    try:
        raw = json.loads(path.read_text())
        return Rollback(
            from_commit=str(raw["from_commit"]),
            to_commit=str(raw["to_commit"]),
            reason=str(raw["reason"]),
            at=str(raw["at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_boot_id(path: Path = BOOT_ID, soft: Path = SOFT_RECORD) -> str:
    """This boot's identity: the kernel's ``boot_id``, and after a soft-reboot the
    number of soft-reboots since (``<boot_id>+soft<N>``).

    A soft-reboot keeps the kernel and its ``boot_id``, yet for a trial it is a
    new boot: counted once more, and a return to the previous commit after it is
    a fall-back, not a wait for a reboot still to come.
    """
    try:
        boot = path.read_text().strip()
    except OSError:
        return ""
    try:
        count = json.loads(soft.read_text())["count"]
    except (OSError, ValueError, KeyError, TypeError):
        return boot
    return f"{boot}+soft{count}" if type(count) is int and count > 0 else boot

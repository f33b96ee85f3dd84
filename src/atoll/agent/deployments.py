"""Deployments: read ``ostree admin status``, upgrade, roll back, reboot (node side).

Every command goes through an injected :class:`atoll.agent.command.Runner`
(argv and a timeout -> stdout; :func:`atoll.agent.command.output` on the node),
so the API's logic is tested on the host with a fake that records argv; the
real ``ostree`` path is exercised on a booted VM. Each call has a finite
timeout (the ``*_TIMEOUT`` constants below): a hung ``ostree`` is killed and
its :class:`~atoll.agent.command.CommandError` becomes a
:class:`DeploymentError` naming the argv and the timeout, so the lock that
serialises upgrades, rollbacks and the update loop is released, never held
for good.

``ostree admin status`` prints one block per deployment, newest (the default)
first::

    * atoll 1f0c...e1.0 (pending)      <- "* " marks the booted deployment
        Version: 1.1.0
        origin refspec: atoll/x86_64/minimal

Upgrade and rollback deploy *non-staged* (``ostree admin upgrade``,
``ostree admin deploy``): the boot entries are written at once, which is what
:func:`atoll.agent.bootentries.sync_node` mirrors onto the ESP right after
(a staged deployment would only get its entry while shutting down, after the
sync ran). The running deployment is never modified either way.

Rollback: if a newer deployment is pending (not booted yet), it is removed
(``ostree admin undeploy 0``), so the booted one stays the default. Otherwise
the previous deployment's commit is deployed again as the new default
(``ostree admin deploy --retain COMMIT``), keeping the booted one as its
fallback. With neither, there is nothing to roll back to.

A failed boot entries sync is a :class:`BootEntriesError` (with the ESP as
its ``resource`` when it had no room); :meth:`Deployments.undo_staging`
removes what a failed step of the update loop left half-staged.

With ``root`` given (the daemon), an upgrade that leaves a new default beside
the booted deployment records the pending-upgrade marker
(:mod:`atoll.agent.markers`: new and previous commit, the staging boot), which
:class:`atoll.agent.health.Monitor` turns into a trial at the next boot; a
rollback asked for through the API cancels that trial.
Standard library only.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atoll.agent import command, failpoints, markers

CommandRunner = command.Runner
"""Runs argv within a timeout, returns its stdout; raises CommandError (or DeploymentError)."""

SyncHook = Callable[[], object]
"""Mirrors boot entries onto the ESP after a deploy (bootentries.sync_node)."""

# Seconds each command may take. Generous, for a slow node (an emulated TCG guest
# writes a deployment in minutes), but finite: the lock is held meanwhile.
STATUS_TIMEOUT = 120.0  # ostree admin status: reads the sysroot
DEPLOY_TIMEOUT = 1800.0  # ostree admin deploy/undeploy: checkout, /etc merge, boot entries
UPGRADE_TIMEOUT = 3600.0  # ostree admin upgrade: a pull from the origin, then a deploy
REBOOT_TIMEOUT = 60.0  # systemctl reboot: queues the job and returns

_HEADER = re.compile(
    r"^(?P<booted>[* ]) (?P<os>\S+) (?P<checksum>[0-9a-f]{64})\.(?P<serial>\d+)"
    r"(?: \((?P<marks>[^)]*)\))?\s*$"
)
COMMIT = re.compile(r"^[0-9a-f]{64}$")
# An ostree ref (or remote:ref): components start with a letter or digit, no "..".
REF = re.compile(
    r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._-]*(?::[A-Za-z0-9][A-Za-z0-9._-]*)?"
    r"(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*$"
)


class DeploymentError(RuntimeError):
    """A deployment command failed or there is nothing to do (message names the argv)."""


class BootEntriesError(DeploymentError):
    """The boot entries could not be mirrored onto the ESP; ``resource`` names what ran
    out (``ESP (/boot/efi)``) when that was the cause."""

    def __init__(
        self, message: str, *, resource: str | None = None, undone: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.resource = resource
        self.undone = list(undone)  # commits undeployed again before this was raised


@dataclass(frozen=True)
class Deployment:
    index: int
    os: str
    checksum: str
    serial: int
    booted: bool
    pending: bool
    rollback: bool
    staged: bool
    version: str | None
    refspec: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_status(text: str) -> list[Deployment]:
    """Parse ``ostree admin status`` output (unknown lines are ignored)."""
    out: list[Deployment] = []
    fields: dict[str, Any] = {}

    def flush() -> None:
        if fields:
            out.append(Deployment(index=len(out), **fields))

    for line in text.splitlines():
        match = _HEADER.match(line)
        if match:
            flush()
            marks = {m.strip() for m in (match["marks"] or "").split(",")}
            fields = {
                "os": match["os"],
                "checksum": match["checksum"],
                "serial": int(match["serial"]),
                "booted": match["booted"] == "*",
                "pending": "pending" in marks,
                "rollback": "rollback" in marks,
                "staged": "staged" in marks,
                "version": None,
                "refspec": None,
            }
        elif fields and line.strip().startswith("Version:"):
            fields["version"] = line.split(":", 1)[1].strip()
        elif fields and line.strip().startswith("origin refspec:"):
            fields["refspec"] = line.split(":", 1)[1].strip()
    flush()
    return out


class Deployments:
    """Deployment operations on one node, through ``run`` and ``sync``."""

    def __init__(
        self,
        run: CommandRunner,
        sync: SyncHook,
        root: Path | None = None,
        boot_id: Callable[[], str] = markers.current_boot_id,
    ) -> None:
        self.run = run
        self.sync = sync
        self.root = root  # where /var/lib/atoll lives; None: no pending-upgrade marker
        self.boot_id = boot_id
        # One change at a time: the API's threads, the update loop and the health
        # monitor's decision at the start of a boot all go through here.
        self.lock = threading.RLock()

    def _run(self, argv: Sequence[str], timeout: float) -> str:
        """``run``, with its failure (exit, timeout, no program) as a DeploymentError."""
        try:
            return self.run(argv, timeout=timeout)
        except command.CommandError as e:
            raise DeploymentError(str(e)) from e

    def status(self) -> list[Deployment]:
        return parse_status(self._run(["ostree", "admin", "status"], STATUS_TIMEOUT))

    def upgrade(self, to: str | None = None) -> dict[str, Any]:
        """Deploy ``to`` (a commit or ref) or the origin's newest commit; then sync boot entries.

        Refused (:class:`DeploymentError`) while a new deployment is on trial or
        being rolled back: the marker that decides it must not be replaced.
        """
        if to is None:
            argv, timeout = ["ostree", "admin", "upgrade"], UPGRADE_TIMEOUT
        elif COMMIT.match(to) or REF.match(to):
            # No --retain: ostree keeps the booted deployment (the rollback entry) and
            # the new one and removes the others, so upgrades do not pile deployments
            # (and boot entries on the ESP) up. After a soft-reboot ostree still knows
            # the booted one: it matches the root's device and inode, not the cmdline.
            argv, timeout = ["ostree", "admin", "deploy", to], DEPLOY_TIMEOUT
        else:
            raise ValueError(f"to: {to!r} is neither a 64-hex commit nor a ref")
        with self.lock:
            self._refuse_during_trial()
            current = self.status()
            first = current[0] if current else None
            if to is not None and first is not None and not first.booted and to == first.checksum:
                # Already the pending default (an upgrade cut short, asked for again):
                # finish it rather than deploy a second copy.
                ran: list[str] = []
            else:
                self._run(argv, timeout)
                current = self.status()
                ran = argv
            self._record_pending(current)
            if self.root is not None:
                failpoints.hit("upgrade:deployed", self.root)
            try:
                self.finish_staging(current)
            except BootEntriesError as e:
                # Nothing half-staged is left behind: the firmware must not find
                # a deployment whose boot entries never reached the ESP.
                undone, problems = self.undo_staging()
                detail = "; ".join([str(e), *problems])
                raise BootEntriesError(detail, resource=e.resource, undone=undone) from e
        return {"ran": ran, "deployments": [d.as_dict() for d in current]}

    def trial(self) -> markers.Pending | None:
        """The marker when a trial is running or a rollback decided, else None."""
        if self.root is None:
            return None
        try:
            marker = markers.read_pending(self.root / markers.PENDING)
        except markers.MarkerError:
            return None  # the monitor reports and removes it
        busy = (markers.TrialState.TRIAL, markers.TrialState.ROLLED_BACK)
        return marker if marker is not None and marker.state in busy else None

    def _refuse_during_trial(self) -> None:
        marker = self.trial()
        if marker is not None and self.root is not None:
            label = marker.new_version or marker.new[:12]
            raise DeploymentError(
                f"{self.root / markers.PENDING}: {label} is {marker.state} "
                "(its health trial decides it first); upgrade once it is confirmed or rolled back"
            )

    def _sync(self) -> None:
        """``sync``, with its failure (no room on the ESP, a mount or an entry that
        failed) as a :class:`BootEntriesError` carrying the resource when one is named."""
        try:
            self.sync()
        except DeploymentError:
            raise
        except (OSError, ValueError, command.CommandError) as e:
            raise BootEntriesError(str(e), resource=getattr(e, "resource", None)) from e

    def finish_staging(self, current: list[Deployment] | None = None) -> None:
        """Make sure a pending default has its marker, mirror the boot entries onto the
        ESP, then mark the upgrade ``staged``.

        Until the ESP holds the new entry the marker says ``deploying``: a boot
        into the previous commit then means the upgrade was cut short, not that
        the new commit failed to boot (see :meth:`atoll.agent.health.Monitor.settle`).
        Idempotent: the update loop calls it again before it reboots (a pending
        deployment left without a marker, by an agent that died between the
        deploy and the marker, gets one here before the ESP can boot it).
        """
        with self.lock:
            if self.root is not None:
                self._record_pending(self.status() if current is None else current)
            self._sync()
            if self.root is None:
                return
            failpoints.hit("upgrade:synced", self.root)
            path = self.root / markers.PENDING
            try:
                marker = markers.read_pending(path)
            except markers.MarkerError:
                return  # the monitor reports and removes it at the next start
            if marker is not None and marker.state is markers.TrialState.DEPLOYING:
                markers.write_pending(path, marker.advance(state=markers.TrialState.STAGED))

    def _record_pending(self, current: list[Deployment]) -> None:
        """Mark a new default (not the booted commit) as pending its trial boot.

        Written before the ESP sync, in state ``deploying``: the firmware cannot
        boot the new commit before the marker that puts it on trial exists.
        """
        if self.root is None or not current or current[0].booted:
            return
        new = current[0]
        booted = next((d for d in current if d.booted), None)
        if booted is None or booted.checksum == new.checksum:
            return
        path = self.root / markers.PENDING
        try:
            existing = markers.read_pending(path)
        except markers.MarkerError:
            existing = None  # replaced by the marker of this upgrade
        boot = self.boot_id()
        if (
            existing is not None
            and (existing.new, existing.previous) == (new.checksum, booted.checksum)
            and existing.state in (markers.TrialState.DEPLOYING, markers.TrialState.STAGED)
            and existing.staged_boot == boot
        ):
            return  # the same upgrade, staged again in this boot: keep its state
        # Staged in this boot (also an upgrade an earlier boot left half done: a
        # marker from that boot would make the monitor take it for a failed boot).
        marker = markers.Pending(
            new=new.checksum,
            previous=booted.checksum,
            new_version=new.version,
            previous_version=booted.version,
            staged_boot=boot,
            state=markers.TrialState.DEPLOYING,
        )
        markers.write_pending(path, marker)
        # A new upgrade supersedes the last rollback's report.
        markers.clear(self.root / markers.ROLLBACK)

    def rollback(self, *, keep_marker: bool = False) -> dict[str, Any]:
        """Cancel a pending deployment, or make the previous one the default again.

        An operator's rollback ends a trial (the marker is removed); the health
        monitor keeps its own ``rolled-back`` marker (``keep_marker``).
        """
        with self.lock:
            current = self.status()
            if current and current[0].pending and not current[0].booted:
                argv = ["ostree", "admin", "undeploy", "0"]
            else:
                previous = next((d for d in current if d.rollback), None)
                if previous is None:
                    raise DeploymentError(
                        "ostree admin status: no pending or rollback deployment to roll back to"
                    )
                argv = ["ostree", "admin", "deploy", "--retain", previous.checksum]
            self._run(argv, DEPLOY_TIMEOUT)
            self._sync()
            if self.root is not None and not keep_marker:
                markers.clear(self.root / markers.PENDING)
            return {"ran": argv, "deployments": [d.as_dict() for d in self.status()]}

    def undo_staging(self) -> tuple[list[str], list[str]]:
        """Undo an upgrade a failed step left half-staged (the update loop's undo).

        Every deployment newer than the booted one is undeployed (the booted
        one is the default again, as after a cut-short upgrade the health
        monitor undoes), the ESP is synced to match, and a ``deploying`` or
        ``staged`` marker is removed. Never raises for the sync or the
        marker: returns (the commits undeployed, what could not be undone);
        an undeploy that fails raises :class:`DeploymentError`.
        """
        undone: list[str] = []
        problems: list[str] = []
        with self.lock:
            current = self.status()
            for _ in range(len(current)):
                if not current or current[0].booted:
                    break
                self._run(["ostree", "admin", "undeploy", "0"], DEPLOY_TIMEOUT)
                undone.append(current[0].checksum)
                current = self.status()
            if undone:
                try:
                    self._sync()
                except BootEntriesError as e:
                    problems.append(f"the ESP could not be synced after the undeploy: {e}")
            problems += self._drop_staging_marker()
        return undone, problems

    def _drop_staging_marker(self) -> list[str]:
        if self.root is None:
            return []
        path = self.root / markers.PENDING
        try:
            marker = markers.read_pending(path)
        except markers.MarkerError as e:
            return [str(e)]  # the monitor reports and removes it at the next start
        if marker is not None and marker.state in (
            markers.TrialState.DEPLOYING,
            markers.TrialState.STAGED,
        ):
            markers.clear(path)
        return []

    def reboot(self) -> list[str]:
        argv = ["systemctl", "reboot"]
        self._run(argv, REBOOT_TIMEOUT)
        return argv

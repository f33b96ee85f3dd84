"""Restart into a staged deployment: a userspace-only soft-reboot when the kernel allows it.

A deployment that boots the kernel already running, with the same kernel
arguments, does not need the firmware, the boot loader or a new kernel:
systemd's soft-reboot (``systemctl soft-reboot``) stops userspace, switches
into ``/run/nextroot`` when that is a mount point, and starts the new
deployment's systemd there. The kernel, its uptime and ``boot_id`` go on.

**The decision** (:func:`decide`, pure, table-tested) compares the running
kernel with the staged deployment's: its version (``uname -r`` against the
staged ``/usr/lib/modules/<kver>/vmlinuz``), the kernel image itself (same
inode, which ostree's hard links give identical files, or the same sha256),
and the kernel arguments (``/proc/cmdline`` against the staged boot entry's
``options``; ``ostree=`` and ``init=`` name the deployment and always
differ). Anything unknown or different, or the policy ``full``, is a full
reboot; the :class:`RestartDecision` says why, and the agent reports it.

**The next root** (:func:`nextroot_plan`) is prepared the way atoll's PID-1
step (``prepare_root.c``) prepares the first one, with ``mount``: the
deployment directory bound onto ``/run/nextroot`` (then made private, so the
mounts below do not propagate into the running system's ``/sysroot``), the
physical root on its ``/sysroot``, the stateroot's ``var`` on its ``/var``,
the physical ``/boot`` on its ``/boot``, its ``/usr`` read-only, all of it
private again at the end (systemd shares every mount after the switch, each
in its own peer group). ``/run`` is
carried across by systemd itself (with ``/run/ostree-booted`` and the
generator mask prepare-root left there). ostree's ``admin
prepare-soft-reboot`` appears only in releases after trixie's 2025.2 and
requires composefs, which atoll does not use.

**Bookkeeping.** The firmware does not see a soft-reboot: systemd-boot's
boot counter of the new entry is not consumed and ``boot_id`` does not
change. So the agent keeps its own: before ``systemctl soft-reboot`` it writes
``/run/atoll-soft-reboot.json`` (the number of soft-reboots in this kernel's
life, from and into which commit, the deployment path, why). ``/run``
survives a soft-reboot and not a firmware boot, so the record says "this
userspace was entered by a soft-reboot into that deployment":
:func:`atoll.agent.markers.current_boot_id` appends the count to ``boot_id``
(a soft-reboot is a new boot for the trial: counted once, and a return to the
previous commit is a fall-back, not a wait), and the agent blesses the entry
of the deployment it switched into (:func:`atoll.agent.bootentries.bless_node`
with the record's ``ostree=`` path) instead of the one the firmware booted.
The boot entries are synced *before* (the update loop's ESP sync, with the
new default's counter): a power cut or a later full reboot boots the new
deployment under the same trial rules.

The last restart an upgrade or a rollback used (kind, reason, version, time)
is kept in ``/var/lib/atoll/restart.json`` for ``GET /v1/status``.
Standard library only: this runs on the node.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from atoll.agent import command, failpoints, markers
from atoll.agent.deployments import CommandRunner, Deployment, DeploymentError
from atoll.wire.fleet import RebootPolicy, RestartKind

NEXTROOT = Path("/run/nextroot")
SOFT_RECORD = markers.SOFT_RECORD
SOFT_REBOOT_TARGET = Path("usr/lib/systemd/system/soft-reboot.target")  # systemd >= 254
LAST_RESTART = Path("var/lib/atoll/restart.json")  # under the agent's root
SYSROOT = Path("/sysroot")
MOUNT_TIMEOUT = 60.0  # one mount or umount
SOFT_REBOOT_TIMEOUT = 60.0  # systemctl soft-reboot: queues the job and returns
# Words of a kernel command line that name the deployment (they always differ)
# or that a boot loader adds; the rest must be equal for a soft-reboot.
_DEPLOYMENT_ARGS = ("ostree=", "init=", "BOOT_IMAGE=", "initrd=")


class SoftRebootError(DeploymentError):
    """The next root could not be prepared or the soft-reboot not started (names the step)."""


@dataclass(frozen=True)
class KernelFacts:
    """One side of the comparison: a kernel and the arguments it boots with."""

    version: str  # "6.12.43+deb13-cloud-amd64"; "" when unknown
    image: Path | None  # its vmlinuz; None when unknown
    args: tuple[str, ...]  # without the words naming the deployment
    problem: str = ""  # why the kernel is unknown


@dataclass(frozen=True)
class RestartDecision:
    kind: RestartKind
    reason: str


def kernel_args(cmdline: str) -> tuple[str, ...]:
    """The words of a kernel command line that must match, in order."""
    return tuple(w for w in cmdline.split() if not w.startswith(_DEPLOYMENT_ARGS))


def decide(
    running: KernelFacts,
    staged: KernelFacts,
    policy: RebootPolicy,
    same_image: Callable[[Path, Path], bool] | None = None,
) -> RestartDecision:
    """Soft or full, and why (the reason the agent reports).

    ``same_image`` compares two kernel images (default :func:`same_file`);
    the decision is otherwise a function of its arguments.
    """
    if policy is RebootPolicy.FULL:
        return RestartDecision(RestartKind.FULL, "policy full")
    for side, facts in (("running", running), ("staged", staged)):
        if not facts.version or facts.image is None:
            problem = facts.problem or "not found"
            return RestartDecision(RestartKind.FULL, f"{side} kernel unknown: {problem}")
    assert running.image is not None and staged.image is not None  # checked above
    if running.version != staged.version:
        return RestartDecision(
            RestartKind.FULL, f"kernel changed {running.version} -> {staged.version}"
        )
    if not (same_image or same_file)(running.image, staged.image):
        return RestartDecision(
            RestartKind.FULL, f"kernel {running.version} rebuilt (another vmlinuz)"
        )
    if running.args != staged.args:
        gone = [a for a in running.args if a not in staged.args]
        added = [a for a in staged.args if a not in running.args]
        change = " ".join([*(f"-{a}" for a in gone), *(f"+{a}" for a in added)])
        return RestartDecision(
            RestartKind.FULL, f"kernel arguments changed: {change or 'their order'}"
        )
    return RestartDecision(RestartKind.SOFT, "same kernel and arguments")


def same_file(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes: one inode (ostree hard-links equal
    objects) or the same sha256."""
    sa, sb = a.stat(), b.stat()
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if sa.st_size != sb.st_size:
        return False
    return _sha256(a) == _sha256(b)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deployment_dir(deployment: Deployment, sysroot: Path = SYSROOT) -> Path:
    name = f"{deployment.checksum}.{deployment.serial}"
    return sysroot / "ostree/deploy" / deployment.os / "deploy" / name


def deployment_ostree_arg(deployment: Deployment) -> str:
    """The ``ostree=`` value the ESP's (pinned) entry of ``deployment`` carries."""
    return f"/ostree/deploy/{deployment.os}/deploy/{deployment.checksum}.{deployment.serial}"


def running_kernel(root: Path = Path("/"), release: str | None = None) -> KernelFacts:
    """The kernel that runs: ``uname -r``'s vmlinuz in the booted root, ``/proc/cmdline``."""
    version = release if release is not None else os.uname().release
    image = root / "usr/lib/modules" / version / "vmlinuz"
    try:
        args = kernel_args((root / "proc/cmdline").read_text())
    except OSError as e:
        return KernelFacts(version, None, (), f"/proc/cmdline: {e.strerror}")
    if not image.is_file():
        return KernelFacts(version, None, args, f"{image} is missing")
    return KernelFacts(version, image, args)


def staged_kernel(deployment: Deployment, sysroot: Path = SYSROOT) -> KernelFacts:
    """The kernel ``deployment`` boots: its one ``/usr/lib/modules/*/vmlinuz``, and the
    options of the sysroot's boot entry whose ``ostree=`` leads to it."""
    tree = deployment_dir(deployment, sysroot)
    images = sorted(tree.glob("usr/lib/modules/*/vmlinuz"))
    if len(images) != 1:
        found = ", ".join(p.parent.name for p in images) or "none"
        return KernelFacts("", None, (), f"{tree}: one kernel expected, found {found}")
    image = images[0]
    options = _entry_options(tree, sysroot)
    if options is None:
        return KernelFacts(image.parent.name, None, (), f"no boot entry boots {tree}")
    return KernelFacts(image.parent.name, image, kernel_args(options))


def _entry_options(tree: Path, sysroot: Path) -> str | None:
    entries = sysroot / "boot/loader/entries"
    if not entries.is_dir():
        return None
    want = os.path.realpath(tree)
    for path in sorted(entries.glob("*.conf")):
        options = ""
        for line in path.read_text().splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "options":
                options = value.strip()
        for word in options.split():
            if word.startswith("ostree="):
                target = sysroot / word.removeprefix("ostree=").lstrip("/")
                if os.path.realpath(target) == want:
                    return options
    return None


def nextroot_plan(
    deployment: Deployment, sysroot: Path = SYSROOT, nextroot: Path = NEXTROOT
) -> list[list[str]]:
    """The ``mount`` commands that make ``nextroot`` the deployment as prepare-root would."""
    tree = deployment_dir(deployment, sysroot)
    stateroot_var = sysroot / "ostree/deploy" / deployment.os / "var"
    plan = [
        ["mount", "--bind", str(tree), str(nextroot)],
        # Private before anything is mounted below it: /sysroot's peer group
        # must not receive the binds (they would appear inside the sysroot).
        ["mount", "--make-private", str(nextroot)],
        ["mount", "--bind", str(sysroot), str(nextroot / "sysroot")],
        ["mount", "--bind", str(stateroot_var), str(nextroot / "var")],
    ]
    if (sysroot / "boot/loader").is_symlink() and (tree / "boot").is_dir():
        plan.append(["mount", "--bind", str(sysroot / "boot"), str(nextroot / "boot")])
    usr = str(nextroot / "usr")
    plan += [
        ["mount", "--bind", usr, usr],
        ["mount", "-o", "remount,bind,ro", usr],
        # The binds of /sysroot's paths joined its peer group: private, so that
        # systemd, which shares every mount again after the switch, gives each its
        # own (a mount under /var must not appear under /sysroot as well).
        ["mount", "--make-rprivate", str(nextroot)],
    ]
    return plan


def is_mounted(path: Path, mounts: Path = Path("/proc/self/mounts")) -> bool:
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return False
    return any(len(f) > 1 and f[1] == str(path) for f in (line.split() for line in lines))


@dataclass(frozen=True)
class SoftRecord:
    """``/run/atoll-soft-reboot.json``: this userspace came from a soft-reboot."""

    count: int  # soft-reboots since the firmware booted this kernel
    from_commit: str
    into_commit: str
    ostree: str  # the entered deployment, as its ESP entry names it (ostree=...)
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_soft_record(path: Path = SOFT_RECORD) -> SoftRecord | None:
    try:
        raw = json.loads(path.read_text())
        return SoftRecord(
            count=int(raw["count"]),
            from_commit=str(raw["from_commit"]),
            into_commit=str(raw["into_commit"]),
            ostree=str(raw["ostree"]),
            reason=str(raw["reason"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def switch_failed(record: Path = SOFT_RECORD, sysroot: Path = SYSROOT) -> SoftRecord | None:
    """The record of a soft-reboot whose switch into the next root did not happen.

    systemd switches only when ``/run/nextroot`` is a valid OS tree at the last
    moment; otherwise it starts again in the *old* root, whose ``/sysroot`` and
    ``/var`` its shutdown already unmounted. A userspace entered by a soft-reboot
    without the sysroot's repository cannot run ostree: the agent reboots fully,
    and the firmware boots the new default entry under the trial rules.

    The test is the repository itself, not whether ``/sysroot`` is a mount point:
    after a switch ``/sysroot`` is a bind mount of the physical root, on the same
    device as ``/``, which :func:`os.path.ismount` does not see as a mount (the
    VM test caught that: every switch that worked was taken for one that did not).
    """
    found = read_soft_record(record)
    return found if found is not None and not (sysroot / "ostree/repo/config").is_file() else None


def last_policy(root: Path = Path("/")) -> RebootPolicy:
    """The policy of the last restart an upgrade used (``restart.json``): a rollback
    restarts the way the pool asked for the upgrade it undoes. None recorded: full."""
    raw = (read_last_restart(root) or {}).get("policy", RebootPolicy.FULL.value)
    try:
        return RebootPolicy(raw)
    except ValueError:
        return RebootPolicy.FULL  # a file this agent did not write: the conservative choice


def read_last_restart(root: Path = Path("/")) -> dict[str, Any] | None:
    """The last restart an upgrade or rollback used (``GET /v1/status``), or None."""
    try:
        raw = json.loads((root / LAST_RESTART).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _label(deployment: Deployment) -> str:
    """``1.1.0 (2ce001d5fcd6)``, or the commit alone without a version, for the log."""
    short = deployment.checksum[:12]
    return f"{deployment.version} ({short})" if deployment.version else short


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Restarter:
    """Restart the node into the pending default deployment, soft when possible."""

    run: CommandRunner  # atoll.agent.command.output on the node
    root: Path = Path("/")
    sysroot: Path = SYSROOT
    nextroot: Path = NEXTROOT
    soft_record: Path = SOFT_RECORD
    running: Callable[[], KernelFacts] | None = None  # default: running_kernel(root)
    staged: Callable[[Deployment], KernelFacts] | None = None  # default: staged_kernel
    same_image: Callable[[Path, Path], bool] = same_file
    now: Callable[[], str] = _utc_now
    mounted: Callable[[Path], bool] = is_mounted
    log: Callable[[str], None] = field(default=lambda m: None)
    _asked: bool = field(default=False, init=False, repr=False)  # soft-reboot asked for
    _previous: SoftRecord | None = field(default=None, init=False, repr=False)
    _previous_restart: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def decision(self, into: Deployment, policy: RebootPolicy) -> RestartDecision:
        if policy is RebootPolicy.AUTO and not (self.root / SOFT_REBOOT_TARGET).is_file():
            # The running systemd performs it: bookworm's 252 has no soft-reboot.
            return RestartDecision(RestartKind.FULL, "this systemd has no soft-reboot (< 254)")
        running = self.running() if self.running else running_kernel(self.root)
        staged = self.staged(into) if self.staged else staged_kernel(into, self.sysroot)
        return decide(running, staged, policy, self.same_image)

    def restart(
        self,
        booted: Deployment,
        into: Deployment,
        why: str,
        policy: RebootPolicy | None = None,
    ) -> RestartDecision:
        """Record and start the restart from ``booted`` into ``into`` (the boot entries
        are already on the ESP). ``policy`` is the pool's (the grant's ``reboot``); None
        (a rollback): the policy of the upgrade it undoes (:func:`last_policy`). A
        soft-reboot that cannot be prepared, or that systemd refuses, falls back to a
        full reboot, and says so. Raises :class:`DeploymentError` when that fails too."""
        if policy is None:
            policy = last_policy(self.root)
        decision = self.decision(into, policy)
        if decision.kind is RestartKind.SOFT:
            try:
                self._prepare(into)
            except (SoftRebootError, OSError) as e:
                self._undo_nextroot()
                decision = RestartDecision(RestartKind.FULL, f"soft-reboot not prepared: {e}")
        label = _label(into)
        if decision.kind is RestartKind.SOFT:
            self._previous_restart = read_last_restart(self.root)
            self._remember(decision, policy, booted, into, why)
            self.log(f"{why}: {decision.kind} reboot into {label}: {decision.reason}")
            try:
                self._soft_reboot(booted, into, decision)
                return decision
            except SoftRebootError as e:
                # Refused (a rollback must not stay on the build that failed its trial,
                # nor an upgrade the controller granted): the firmware way, and say so.
                decision = RestartDecision(RestartKind.FULL, f"soft-reboot refused: {e}")
        self._remember(decision, policy, booted, into, why)
        self.log(f"{why}: {decision.kind} reboot into {label}: {decision.reason}")
        self._call(["systemctl", "reboot"], SOFT_REBOOT_TIMEOUT)
        return decision

    def full_reboot(
        self, current: Sequence[Deployment], why: str, reboot: Callable[[], object]
    ) -> RestartDecision | None:
        """A full reboot someone asked for (``POST /v1/upgrade`` with ``reboot``), with
        ``current`` the deployments as ``ostree admin status`` lists them: when it
        enters another deployment than the booted one (the default, first), record it
        as an upgrade's restart is recorded (policy full: a rollback of it reboots
        fully too), then ``reboot()``. The booted one still the default: a plain
        reboot, nothing recorded (``restart.json`` keeps the last upgrade's). Returns
        what was recorded; a ``reboot()`` that raises puts the last record back."""
        booted = next((d for d in current if d.booted), None)
        if booted is None or current[0].booted:
            reboot()
            return None
        into = current[0]
        decision = RestartDecision(RestartKind.FULL, "asked for through the API")
        self._previous_restart = read_last_restart(self.root)
        self._remember(decision, RebootPolicy.FULL, booted, into, why)
        label = _label(into)
        self.log(f"{why}: full reboot into {label}: {decision.reason}")
        try:
            reboot()
        except BaseException:
            self._put_back_last_restart()  # it did not happen: the last one is still the last
            raise
        return decision

    def _put_back_last_restart(self) -> None:
        if self._previous_restart is None:
            markers.clear(self.root / LAST_RESTART)
        else:
            markers.write_json(self.root / LAST_RESTART, self._previous_restart)

    def _remember(
        self,
        decision: RestartDecision,
        policy: RebootPolicy,
        booted: Deployment,
        into: Deployment,
        why: str,
    ) -> None:
        markers.write_json(
            self.root / LAST_RESTART,
            {
                "kind": str(decision.kind),
                "reason": decision.reason,
                "policy": policy.value,
                "why": why,
                "from": booted.checksum,
                "from_version": booted.version,
                "into": into.checksum,
                "into_version": into.version,
                "at": self.now(),
            },
        )

    def _call(self, argv: Sequence[str], timeout: float) -> str:
        try:
            return self.run(argv, timeout=timeout)
        except command.CommandError as e:
            raise SoftRebootError(str(e)) from e

    def _prepare(self, into: Deployment) -> None:
        self._undo_nextroot()
        self.nextroot.mkdir(parents=True, exist_ok=True)
        for argv in nextroot_plan(into, self.sysroot, self.nextroot):
            self._call(argv, MOUNT_TIMEOUT)

    def _undo_nextroot(self) -> None:
        """Unmount a next root left by an earlier attempt (never its contents)."""
        if self.mounted(self.nextroot):
            try:
                self.run(["umount", "--recursive", str(self.nextroot)], timeout=MOUNT_TIMEOUT)
            except command.CommandError as e:
                self.log(f"could not unmount {self.nextroot}: {e}")

    def _soft_reboot(self, booted: Deployment, into: Deployment, decision: RestartDecision) -> None:
        previous = read_soft_record(self.soft_record)
        record = SoftRecord(
            count=(previous.count if previous else 0) + 1,
            from_commit=booted.checksum,
            into_commit=into.checksum,
            ostree=deployment_ostree_arg(into),
            reason=decision.reason,
        )
        markers.write_json(self.soft_record, record.as_dict())
        self._asked, self._previous = True, previous
        try:
            # systemd carries unit states across a soft-reboot: the failures of the
            # userspace that ends (a rollback's broken unit) would read as the next
            # one's. Its journal keeps them; the health check also tells them apart.
            self.run(["systemctl", "reset-failed"], timeout=SOFT_REBOOT_TIMEOUT)
        except command.CommandError as e:
            self.log(f"before the soft-reboot: {e}")
        try:
            self.run(["systemctl", "soft-reboot"], timeout=SOFT_REBOOT_TIMEOUT)
        except command.CommandError as e:
            # Killed by a signal: the stop of the agent's unit, which the soft-reboot
            # it asked for begins with, reached systemctl before it exited; or it
            # failed after systemd had queued the job (its bus went away). Either way
            # the soft-reboot is under way: the next root and the record must stay
            # (undoing them is what sent systemd back into the old root). Still
            # running much later: the caller's :meth:`abandon`.
            if not (e.status is not None and e.status < 0) and not self._queued():
                self.abandon()  # refused: this userspace goes on
                raise SoftRebootError(str(e)) from e
            self.log(f"systemctl soft-reboot: {e}; the soft-reboot is under way")
        failpoints.hit("restart:soft", self.root)

    def _queued(self) -> bool:
        """Whether systemd holds a soft-reboot job (asked for, not refused)."""
        try:
            jobs = self.run(["systemctl", "list-jobs", "--no-legend", "--plain"], timeout=30.0)
        except command.CommandError:
            return False  # no answer: as refused, the conservative reading here
        return any(line.split()[1:2] == ["soft-reboot.target"] for line in jobs.splitlines())

    def abandon(self) -> None:
        """Take back a soft-reboot that did not happen (the agent still runs long after
        it was asked for, or systemctl refused it): this userspace goes on, so the
        record must not say otherwise, and the next root is unmounted."""
        if not self._asked:
            return
        self._asked = False
        if self._previous is None:
            markers.clear(self.soft_record)
        else:
            markers.write_json(self.soft_record, self._previous.as_dict())
        # restart.json says what the last restart was: this one did not happen.
        self._put_back_last_restart()
        self._undo_nextroot()

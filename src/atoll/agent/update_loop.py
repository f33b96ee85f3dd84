"""The node's update loop: follow the fleet controller, stage signed commits, reboot when allowed.

Standard library only (runs in the agent daemon on the node). One
:meth:`Updater.step` is one round of the protocol in ``docs/fleet.md``:

1. read the node's deployments (``ostree admin status``): the booted commit
   and version, and a pending deployment if one is staged;
2. report them, with health and the last restart (soft or full, and why:
   :func:`last_restart`), to the controller and get the desired version
   back (:class:`atoll.wire.fleet.FleetClient`, the protocol's typed messages;
   on a cluster :class:`atoll.agent.kubegrant.NodeGrants`, the operator's
   grant on the node's own Node);
3. if the controller says *stage* and the desired version is neither booted
   nor pending: resolve it to a commit through the signed channel
   (:func:`atoll.agent.fetch.check_channel`; a 64-hex version is a commit
   already), pull it with :func:`atoll.agent.fetch.pull` (objects checked by
   ostree), verify the commit's signature
   (:func:`atoll.agent.fetch.verify_pulled`, an unverifiable commit removed
   again) and deploy it beside the running one
   (:meth:`atoll.agent.deployments.Deployments.upgrade`; the running system is
   never modified). Staging does not make the node unavailable;
4. if the controller says *may reboot* and the desired version is the pending
   deployment: restart into it, with a soft-reboot when the kernel and its
   arguments are unchanged (:class:`atoll.agent.softreboot.Restarter`; the
   ESP is synced first, so a power cut boots it under the same trial rules),
   else a full reboot. The controller has already counted the node as
   unavailable; after the restart the next report says which version runs
   and whether it is healthy.

Between rounds the loop watches the controller
(:meth:`atoll.wire.fleet.FleetClient.watch`, ``docs/fleet.md``): the next
round starts the moment the controller changes the node's grant, when the
node's own health facts change, or when the controller's wait (about a
minute at most) runs out. A controller without watches (no ``etag`` in its
answers) is polled every ``interval`` seconds; a refused watch (503) is
retried after the controller's ``Retry-After`` with jitter, polling
meanwhile; a failed one (a controller restarting) after an exponential,
jittered delay (:class:`atoll.wire.fleet.WatchSchedule`). A round that
staged is followed by the next at once, so the controller hears it.

A step of 3 or 4 that fails (fetch, verify, deploy, boot-entry sync, reboot;
:class:`atoll.wire.fleet.Step`) is undone
(:meth:`atoll.agent.deployments.Deployments.undo_staging`: nothing stays
half-staged), audited (``record``, the agent's audit log) and reported at once
as the report's typed ``failure`` with ``staged`` null, so the node never
holds a reboot slot it cannot use; the controller then decides whether and
when it tries again (the loop follows Desired, it does not retry on its own).
A hung ``ostree`` fails its step the same way (every command has a timeout,
:mod:`atoll.agent.command`, and the deployments' lock is free again). A round
that cannot reach the controller is logged and the next round tries again
(an unsent failure goes with it): a controller that is down never stops the
agent.

Every external effect goes through injected callables, so a round is tested
on the build machine against a real controller and a real ostree repository
with the deployment commands recorded.

Configuration (:func:`load_config`): ``/etc/atoll/fleet.toml`` (written at
first boot from the user data's ``[fleet]`` table: ``controller``, optional
``labels`` and ``interval``) and the agent's settings (``updates.server``,
``updates.channel``, ``fleet.controller`` overriding the first-boot value).
A node that joins a cluster (the kubelet's join data, user data
``[kubernetes]``) and names no controller follows its Node
(:data:`KUBERNETES`). No controller, or no update server: no loop.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from atoll.agent import command, failpoints, markers
from atoll.agent.deployments import BootEntriesError, Deployment, DeploymentError, Deployments
from atoll.agent.fetch import PullError, Runner, check_channel, pull, verify_pulled
from atoll.agent.softreboot import Restarter, read_last_restart
from atoll.wire.channel import TrustedKey, VerificationError, load_trusted_keys
from atoll.wire.fleet import (
    Backoff,
    Desired,
    FleetClient,
    FleetError,
    ProtocolError,
    Restart,
    RestartKind,
    Step,
    StepFailure,
    Watched,
    WatchRefused,
    WatchSchedule,
)
from atoll.wire.kubelet import BOOTSTRAP_KUBECONFIG, KUBECONFIG
from atoll.wire.kubenode import one_line

if TYPE_CHECKING:
    from atoll.agent.kubenode import Publisher

COMMIT = re.compile(r"^[0-9a-f]{64}$")
KUBERNETES = "kubernetes"
"""The controller of a node that joins a cluster and names none: the fleet operator,
through the grant on the node's own Node (:mod:`atoll.agent.kubegrant`)."""
FLEET_CONFIG = Path("etc/atoll/fleet.toml")
SETTINGS = Path("etc/atoll/settings.json")
HEALTH = Path("var/lib/atoll/health.json")
CHANNEL_STATE = Path("var/lib/atoll/channels.json")
NODE_REPO = Path("ostree/repo")  # the sysroot's repository, seen from the booted root
DEFAULT_INTERVAL = 10.0
SETTLE_WAIT = 600.0  # at most this long for the health monitor's first decision
# Seconds a node still running after `systemctl reboot` failed waits before it calls
# the reboot failed (the shutdown usually kills systemctl, and the agent, first).
REBOOT_GRACE = 60.0
# Seconds the loop waits for the agent's own stop after `systemctl soft-reboot`.
SOFT_REBOOT_WAIT = 300.0


class UpdateError(Exception):
    """One round could not finish (message names the server, channel or version)."""


class RolledBackHere(UpdateError):
    """The version resolves to the very build whose health trial failed on this node."""


def failure_of(phase: Step, version: str, error: BaseException) -> StepFailure:
    """The step failure to report for ``error``, raised while the loop was in ``phase``.

    A failed ESP sync is ``boot-entries`` whatever called it (the deploy runs
    one), with the resource it names; during the fetch, a channel document
    that does not verify is ``verify``, a pull ostree could not finish stays
    ``fetch``. Errors of unexpected types carry their type in the reason.
    """
    step, resource = phase, None
    if isinstance(error, BootEntriesError):
        step, resource = Step.BOOT_ENTRIES, error.resource
    elif (
        phase is Step.FETCH
        and isinstance(error, VerificationError)
        and not isinstance(error, PullError)
    ):
        step = Step.VERIFY
    known = (UpdateError, VerificationError, DeploymentError, OSError, command.CommandError)
    reason = str(error) if isinstance(error, known) else f"{type(error).__name__}: {error}"
    return StepFailure.summarise(step, version, reason, resource)


@dataclass(frozen=True)
class UpdaterConfig:
    controller: str
    server: str
    channel: str
    node: str
    labels: Mapping[str, str] = field(default_factory=dict)
    interval: float = DEFAULT_INTERVAL


def _labels(raw: object, source: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise UpdateError(f"{source}: labels must be a table of strings")
    return dict(raw)


def load_config(root: Path = Path("/")) -> UpdaterConfig | None:
    """The loop's configuration, or None when the node follows no controller or server."""
    fleet: dict[str, Any] = {}
    path = root / FLEET_CONFIG
    if path.exists():
        try:
            fleet = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise UpdateError(f"{path}: {e}") from e
    settings: dict[str, Any] = {}
    if (root / SETTINGS).exists():
        settings = json.loads((root / SETTINGS).read_text())
    controller = str(settings.get("fleet.controller") or fleet.get("controller") or "")
    server = str(settings.get("updates.server") or fleet.get("server") or "")
    if not controller and joins_a_cluster(root):
        controller = KUBERNETES  # the operator's grant on the node's own Node
    if not controller or not server:
        return None
    hostname = root / "etc/hostname"
    node = hostname.read_text().strip() if hostname.exists() else socket.gethostname()
    interval = fleet.get("interval", DEFAULT_INTERVAL)
    if not isinstance(interval, int | float) or not 0.1 <= interval <= 3600:
        raise UpdateError(f"{path}: interval {interval!r} must be 0.1-3600 seconds")
    return UpdaterConfig(
        controller=controller,
        server=server,
        channel=str(settings.get("updates.channel") or fleet.get("channel") or "stable"),
        node=node,
        labels=_labels(fleet.get("labels", {}), str(path)),
        interval=float(interval),
    )


def joins_a_cluster(root: Path) -> bool:
    """Whether first boot wrote the kubelet's join data (user data ``[kubernetes]``)."""
    return any((root / name).exists() for name in (BOOTSTRAP_KUBECONFIG, KUBECONFIG))


@dataclass(frozen=True)
class HealthFacts:
    """What the health record says, split by cause (see :func:`health_facts`)."""

    healthy: bool
    unhealthy: bool  # unhealthy outside a trial: a failure whatever the controller wants
    rolled_back_from: str | None  # the commit this node's last automatic rollback left

    @property
    def failed(self) -> bool:
        return self.unhealthy or self.rolled_back_from is not None


def health_facts(root: Path = Path("/"), booted: str | None = None) -> HealthFacts:
    """The health record, as the fleet controller should hear it.

    No record yet: healthy (the agent runs). A record about another deployment
    (the one before a reboot; ``/var`` outlives it) or one written during a
    health trial says nothing yet about ``booted``: not healthy, not unhealthy,
    so the controller keeps the node's reboot slot until the trial ends. A
    rollback is reported with the commit it left (``rollback.json``, kept until
    the next upgrade is staged).
    """
    path = root / HEALTH
    rollback = markers.read_rollback(root / markers.ROLLBACK)
    rolled_from = rollback.from_commit if rollback is not None else None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return HealthFacts(True, False, rolled_from)
    if not isinstance(record, dict):
        return HealthFacts(True, False, rolled_from)
    if not record.get("rolled_back", False):
        rolled_from = None  # the record is the health monitor's word on it
    about = record.get("booted")
    if record.get("trial") or (booted is not None and about is not None and about != booted):
        return HealthFacts(False, False, rolled_from)
    healthy = bool(record.get("healthy", True))
    return HealthFacts(healthy, not healthy, rolled_from)


def read_health(root: Path = Path("/"), booted: str | None = None) -> tuple[bool, bool]:
    """(healthy, failed): failed = rolled back, or unhealthy outside a trial."""
    facts = health_facts(root, booted)
    return facts.healthy, facts.failed


def restart_of(record: Mapping[str, Any] | None) -> Restart | None:
    """The restart a report says, from the agent's record of its last one (``restart.json``,
    :func:`atoll.agent.softreboot.read_last_restart`): the kind, the reason (cut to one
    line), the version restarted into (its commit when it has none) and when. None
    without a record, or for one that cannot be said (an unknown kind, a bad time)."""
    if record is None:
        return None
    reason = one_line(str(record.get("reason") or "")) or "no reason recorded"
    into = record.get("into_version") or record.get("into")
    try:
        return Restart.from_json(
            {"kind": record.get("kind"), "reason": reason, "version": into, "at": record.get("at")}
        )
    except ProtocolError:
        return None


def last_restart(root: Path = Path("/")) -> Restart | None:
    """:func:`restart_of` the record under ``root``: what each report says."""
    return restart_of(read_last_restart(root))


def _identity(deployment: Deployment) -> str:
    return deployment.version or deployment.checksum


def _matches(deployment: Deployment | None, version: str) -> bool:
    return deployment is not None and version in (deployment.checksum, deployment.version)


class Controller(Protocol):
    """Who the loop reports to and takes its grants from: the standalone controller
    (:class:`atoll.wire.fleet.FleetClient`) or, on a cluster, the operator through the
    node's own Node (:class:`atoll.agent.kubegrant.NodeGrants`)."""

    base_url: str

    def register(
        self, name: str, labels: dict[str, str], version: str, *, healthy: bool
    ) -> object: ...

    def report(
        self,
        name: str,
        *,
        version: str,
        staged: str | None,
        healthy: bool,
        failed: bool,
        failure: StepFailure | None = None,
        restart: Restart | None = None,
    ) -> Desired: ...

    def desired(self, name: str) -> Desired: ...

    def watch(
        self, name: str, etag: str, *, interrupted: Callable[[], bool] = ...
    ) -> Desired | None: ...


@dataclass
class Updater:
    """One node's update loop (see the module docstring)."""

    config: UpdaterConfig
    deployments: Deployments
    keys: list[TrustedKey]
    root: Path = Path("/")
    run: Runner = command.output  # ostree for the pull (atoll.agent.fetch)
    health: Callable[[], tuple[bool, bool]] | None = None  # default: read_health(root)
    log: Callable[[str], None] = field(
        default=lambda m: print(f"atoll-agent: {m}", file=sys.stderr)
    )
    record: Callable[..., object] | None = None  # AuditLog.append: step failures
    # The grace after a failed reboot; None: wait for the agent's stop (the shutdown the
    # reboot began ends the wait at once, so the agent does not hold up its unit's stop).
    pause: Callable[[float], object] | None = None
    reboot_grace: float = REBOOT_GRACE
    soft_reboot_wait: float = SOFT_REBOOT_WAIT
    restarter: Restarter | None = None  # soft or full (softreboot); None: systemctl reboot
    stopping: threading.Event = field(default_factory=threading.Event)  # the agent stops
    controller: Controller | None = None  # default: FleetClient(config.controller)
    registered: bool = False
    _last_note: str = ""  # said once, not every round
    _unsent: StepFailure | None = None  # reported in the next report, once
    _phase: Step = Step.FETCH  # the step stage() is in (failure_of)
    _acted: bool = False  # this round staged: report it at once
    _unfollowed: bool = False  # this round's step failed: its answer is followed next round
    _booted: str | None = None  # the booted commit at the last report
    _local: object = None  # the health facts at the last report (a change ends a watch)

    def __post_init__(self) -> None:
        self.client: Controller = self.controller or FleetClient(
            self.config.controller, backoff=Backoff(base=0.5, cap=30.0, attempts=4), timeout=15
        )

    def _state(self) -> tuple[Deployment, Deployment | None]:
        current = self.deployments.status()
        booted = next((d for d in current if d.booted), None)
        if booted is None:
            raise UpdateError("ostree admin status: no booted deployment")
        pending = next((d for d in current if d.pending and not d.booted), None)
        return booted, pending

    def resolve(self, version: str) -> str:
        """The commit for ``version``: itself if a commit, else from the signed channel."""
        if COMMIT.match(version):
            return version
        channel = check_channel(
            self.config.server, self.config.channel, self.keys, self.root / CHANNEL_STATE
        )
        if channel.version == version:
            return channel.commit
        for entry in channel.history:
            if entry.get("version") == version and isinstance(entry.get("commit"), str):
                return str(entry["commit"])
        raise UpdateError(
            f"channel {self.config.channel!r} on {self.config.server}: no version {version!r}"
        )

    def stage(self, version: str) -> str:
        """Resolve, pull, verify and deploy ``version`` (with its ESP sync); the step it
        is in stays in ``_phase`` for :func:`failure_of` when one raises."""
        self._phase = Step.FETCH
        commit = self.resolve(version)
        rolled_back = markers.read_rollback(self.root / markers.ROLLBACK)
        if rolled_back is not None and rolled_back.from_commit == commit:
            # The health check already failed on this very build here; staging it
            # again would only loop. A different build (a fix) is staged as usual.
            raise RolledBackHere(
                f"{version} ({commit[:12]}) was rolled back on this node at {rolled_back.at} "
                f"({rolled_back.reason}); waiting for a different build"
            )
        repo = self.root / NODE_REPO
        pull(repo, self.config.server, commit, self.run)
        self._phase = Step.VERIFY
        verify_pulled(repo, commit, self.keys, self.run)
        failpoints.hit("update:pulled", self.root)
        self._phase = Step.DEPLOY
        self.deployments.upgrade(commit)
        return commit

    def _failed(self, facts: HealthFacts) -> bool:
        """Whether to report ``failed``.

        Unhealthy outside a trial: always. A rollback: only while the version
        the controller wants is still the build that rolled back here. Once a
        different build is published for it (the fix), or the pool wants
        another version, the rollback is history: reporting it would fail the
        node again right after the operator resumed the pool, before it could
        stage the fix.
        """
        if facts.unhealthy:
            return True
        if facts.rolled_back_from is None:
            return False
        try:
            wanted = self.client.desired(self.config.node)
            if wanted.pool is None or not wanted.version:
                return True  # in no pool: nothing supersedes the rollback
            return self.resolve(wanted.version) == facts.rolled_back_from
        except (FleetError, UpdateError, VerificationError, OSError) as e:
            # Unsure: report the failure (the conservative answer) and say why.
            self.log(f"reporting the rollback of {facts.rolled_back_from[:12]}: {e}")
            return True

    def _health(self, booted: Deployment) -> tuple[bool, bool]:
        if self.health:
            return self.health()
        facts = health_facts(self.root, booted.checksum)
        return facts.healthy, self._failed(facts)

    def _report(self) -> tuple[Desired, Deployment, Deployment | None]:
        """Register once, then report what runs, what is staged, health and the step
        failure not sent yet (with it, ``staged`` is None: the failure undid it).
        Returns the answer, and the booted and pending deployments it reported."""
        booted, pending = self._state()
        healthy, failed = self._health(booted)
        self._booted = booted.checksum
        self._local = self._local_now()
        if not self.registered:
            self.client.register(
                self.config.node, dict(self.config.labels), _identity(booted), healthy=healthy
            )
            self.registered = True
        failure = self._unsent
        staged = _identity(pending) if pending and failure is None else None
        desired = self.client.report(
            self.config.node, version=_identity(booted), staged=staged, healthy=healthy,
            failed=failed, failure=failure, restart=last_restart(self.root),
        )  # fmt: skip
        self._unsent = None  # sent once; the controller decides whether it is tried again
        return desired, booted, pending

    def step(self) -> Desired:
        """One round: report, then stage or reboot as the answer says. A step that
        fails is undone, audited and reported at once (:meth:`_fail`); the answer
        to that report is followed from the next round on."""
        self._acted = self._unfollowed = False
        desired, booted, pending = self._report()
        if _matches(booted, desired.version):
            return desired
        try:
            if desired.stage and not _matches(pending, desired.version):
                if not self._stage_now(desired):
                    return desired
                self._acted = True
                booted, pending = self._state()
            if desired.may_reboot and _matches(pending, desired.version):
                self._reboot(desired)
        except RolledBackHere:
            raise  # reported as the rollback it is (health_facts), not as a step failure
        except Exception as e:  # every failed step is reported, whatever its type
            undone = e.undone if isinstance(e, BootEntriesError) else []
            return self._fail(failure_of(self._phase, desired.version, e), undone)
        return desired

    def _stage_now(self, desired: Desired) -> bool:
        """Stage ``desired.version`` unless a trial decides first (then False)."""
        trial = self.deployments.trial()
        if trial is not None:
            # The marker of the deployment on trial decides it; a new upgrade
            # would replace it. Staged after the verdict (next rounds).
            label = trial.new_version or trial.new[:12]
            self._note(f"{desired.version} waits: {label} is {trial.state}")
            return False
        self.log(f"staging {desired.version} from {self.config.server}")
        commit = self.stage(desired.version)
        self.log(f"staged {desired.version} ({commit[:12]}); the running system is unchanged")
        return True

    def _reboot(self, desired: Desired) -> None:
        # Mirror the entries onto the ESP again first (idempotent): a sync that
        # failed after the deploy must not send the node into its old entry.
        self._phase = Step.BOOT_ENTRIES
        self.deployments.finish_staging()
        self._phase = Step.REBOOT
        self.log(f"rebooting into {desired.version} (granted by {self.config.controller})")
        try:
            kind = self._restart(desired)
        except DeploymentError as e:
            # Usually the shutdown it started has already killed systemctl (and
            # soon the agent). Still running after the grace: it did not start.
            self.log(f"reboot requested; systemctl: {e}")
            if self.pause is None:
                self.stopping.wait(self.reboot_grace)
            else:
                self.pause(self.reboot_grace)
            if self.stopping.is_set():
                return
            raise DeploymentError(f"{e}; the node still runs {self.reboot_grace:g} s later") from e
        # A soft-reboot's stop reaches the agent only once systemd gets to it: the
        # next round must not run meanwhile (it would prepare the next root again).
        waited = self.soft_reboot_wait
        if kind is RestartKind.SOFT and self.restarter and not self.stopping.wait(waited):
            self.restarter.abandon()
            raise DeploymentError(f"systemctl soft-reboot: the agent still runs {waited:g} s later")

    def _restart(self, desired: Desired) -> RestartKind:
        """Soft-reboot when the kernel allows it (:mod:`atoll.agent.softreboot`), else reboot."""
        if self.restarter is None:
            self.deployments.reboot()
            return RestartKind.FULL
        booted, pending = self._state()
        if pending is None or not _matches(pending, desired.version):
            raise UpdateError(f"{desired.version} is no longer the pending deployment")
        why = f"upgrade to {desired.version}"
        return self.restarter.restart(booted, pending, why, desired.reboot).kind

    def _fail(self, failure: StepFailure, undone_already: Sequence[str] = ()) -> Desired:
        """Undo what the failed step half-staged (beyond ``undone_already``, what the
        failing call undid itself), audit it, and report it now (or, with the
        controller unreachable, in the next round's report)."""
        try:
            undone, problems = self.deployments.undo_staging()
        except (DeploymentError, OSError) as e:
            undone, problems = [], [f"undoing it failed: {e}"]
        undone = [*undone_already, *undone]
        if problems:
            reason = f"{failure.reason}; {'; '.join(problems)}"
            failure = StepFailure.summarise(failure.step, failure.version, reason, failure.resource)
        self.log(
            f"{failure.step} of {failure.version} failed: {failure.reason}"
            + (f"; undeployed {', '.join(c[:12] for c in undone)}" if undone else "")
        )
        if self.record is not None:
            self.record(
                who="agent:update",
                role=None,
                what=f"update: {failure.step} failed",
                params={**failure.to_json(), "undeployed": undone},
                result="failed",
            )
        self._unsent = failure  # kept if this report does not get through: the next one
        self._unfollowed = True
        return self._report()[0]

    def run_forever(self, stop: threading.Event, after: threading.Event | None = None) -> None:
        """Run rounds until ``stop``; the first once ``after`` is set (the health monitor
        has settled this boot's marker), or after ``SETTLE_WAIT`` s.

        Between rounds the node watches the controller (:meth:`_watch`) when it
        takes watches, else waits ``interval`` s; a round that staged is
        followed by the next one at once (the controller must hear it)."""
        if after is not None:
            deadline = time.monotonic() + SETTLE_WAIT
            while not after.wait(1.0):
                if stop.is_set():
                    return
                if time.monotonic() >= deadline:
                    self.log(f"the health monitor has not settled in {SETTLE_WAIT:g} s: going on")
                    break
        self.stopping = stop
        schedule = WatchSchedule(self.config.interval)
        while not stop.is_set():
            desired: Desired | None = None
            try:
                desired = self.step()
            except (FleetError, UpdateError, VerificationError, OSError, RuntimeError) as e:
                self.log(f"update round failed: {e}")
            except Exception as e:
                # A bug in one round must not end the loop: say what it was, go on.
                self.log(f"update round failed: {type(e).__name__}: {e}")
            if desired is not None and self._acted:
                continue
            # The answer to a failed step's report is followed from the next round on,
            # after ``interval``: a watch on its etag would wait for a change that may
            # already be in it (a pool resumed meanwhile retries the node).
            etag = None if desired is None or self._unfollowed else desired.etag
            wait = schedule.next(etag, time.monotonic())
            if wait.watch and etag is not None:
                try:
                    wait_s = self._watch(schedule, etag, stop)
                except Exception as e:
                    # As for a round: a bug or an unexpected error in the watch must
                    # not end the loop; it counts as a failed watch (backoff).
                    self.log(f"watch failed: {type(e).__name__}: {e}")
                    wait_s = schedule.ended(Watched.FAILED, time.monotonic())
                stop.wait(wait_s)
            else:
                stop.wait(wait.seconds)

    def _local_now(self) -> object:
        """What the node's health facts are now (compared with the last report's)."""
        if self.health:
            return self.health()
        return health_facts(self.root, self._booted)

    def _watch(self, schedule: WatchSchedule, etag: str, stop: threading.Event) -> float:
        """Wait for the controller to change this node's grant (a watch), for the
        node's health facts to change, or for ``stop``; the seconds to wait
        before the next round (a refused or failed watch backs off with jitter)."""

        def interrupted() -> bool:
            return stop.is_set() or self._local_now() != self._local

        try:
            answer = self.client.watch(self.config.node, etag, interrupted=interrupted)
        except WatchRefused as e:
            self._note(f"watch refused, polling meanwhile: {e}")
            return schedule.ended(Watched.REFUSED, time.monotonic(), e.retry_after)
        except FleetError as e:
            self._note(f"watch failed: {e}")
            return schedule.ended(Watched.FAILED, time.monotonic())
        if answer is None:
            return schedule.ended(Watched.INTERRUPTED, time.monotonic())
        changed = answer.etag != etag
        return schedule.ended(Watched.CHANGED if changed else Watched.UNCHANGED, time.monotonic())

    def _note(self, note: str) -> None:
        """Log ``note`` unless it is the last one logged (said once, not every round)."""
        if note != self._last_note:
            self.log(note)
            self._last_note = note


def _log(message: str) -> None:
    print(f"atoll-agent: {message}", file=sys.stderr)


def start(
    deployments: Deployments,
    stop: threading.Event,
    root: Path = Path("/"),
    after: threading.Event | None = None,
    record: Callable[..., object] | None = None,
    publisher: Publisher | None = None,
) -> threading.Thread | None:
    """Start the loop in a daemon thread when the node is configured for it; ``record``
    (the agent's :meth:`atoll.agent.audit.AuditLog.append`) audits its step failures.
    On a cluster it follows the grant on the node's own Node, and ``publisher`` (the
    one writer of the agent's Node annotations) says what it reports."""
    try:
        config = load_config(root)
    except UpdateError as e:
        print(f"atoll-agent: no update loop: {e}", file=sys.stderr)
        return None
    if config is None:
        return None
    controller: Controller | None = None
    if config.controller == KUBERNETES:
        if publisher is None:
            _log("no update loop: it follows the node's Node, and nothing publishes there")
            return None
        from atoll.agent.kubegrant import NodeGrants  # noqa: PLC0415 - only on a cluster

        controller = NodeGrants(root, publisher)
    updater = Updater(
        config,
        deployments,
        load_trusted_keys(),
        root=root,
        record=record,
        restarter=Restarter(deployments.run, root=root, log=_log),
        controller=controller,
    )
    thread = threading.Thread(target=updater.run_forever, args=(stop, after), daemon=True)
    thread.start()
    return thread

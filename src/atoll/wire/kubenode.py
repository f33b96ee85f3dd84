"""The atoll Node protocol: what the node's agent and the fleet operator write on a
Kubernetes ``Node`` object for each other, typed.

On a cluster the Node is the mailbox of the rollout (docs/kubernetes.md, "The
Node protocol"): the agent (:mod:`atoll.agent.kubenode`, with the kubelet's own
credential, which NodeRestriction limits to its own Node) writes its OS state,
:class:`NodeState`; the operator (:mod:`atoll.fleet.operator`) writes its answer,
:class:`Grant`, the standalone controller's :class:`atoll.wire.fleet.Desired`.
Each side writes only its own keys, with one JSON merge patch
(``metadata.labels``/``annotations``; ``None`` removes a key), and reads the
other's with ``from_node``, which validates every value and raises
:class:`NodeProtocolError` naming the node and the key. Keys of ``atoll.dev/``
that neither structure names are ignored (the operator's own bookkeeping, a key
a newer side added first). The operator's private bookkeeping on the Node
(phase, cordon, drain) is :mod:`atoll.fleet.nodepool`'s, never read by the agent.

The current version is an annotation, the exact value; it is also the label
:data:`LABEL_VERSION` (``kubectl get nodes -L atoll.dev/version``, selectors) when
it is a valid label value (at most 63 of ``A-Z a-z 0-9 . _ -``, alphanumeric at
both ends). A manifest's version may be longer or hold ``+`` or ``~``: such a
node has no label (a stale one is removed), and its annotation still says it.

Standard library only: the agent imports this module on the node.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

from atoll.wire.fleet import (
    CONTROL,
    ETAG,
    REASON_MAX,
    VERSION,
    VERSION_MAX,
    By,
    Desired,
    ProtocolError,
    RebootPolicy,
    Report,
    Restart,
    StepFailure,
    grant_etag,
)

# --- written by the node's agent: its OS state ---------------------------------------------
LABEL_VERSION = "atoll.dev/version"
CURRENT_VERSION = "atoll.dev/current-version"
COMMIT = "atoll.dev/commit"
STAGED_VERSION = "atoll.dev/staged-version"
HEALTHY = "atoll.dev/healthy"
FAILED = "atoll.dev/failed"
FAILURE = "atoll.dev/failure"
HEALTH = "atoll.dev/health"
OBSERVED_GRANT = "atoll.dev/observed-grant"
RESTART = "atoll.dev/restart"
STEP_FAILURE = "atoll.dev/step-failure"
AGENT_LABELS = (LABEL_VERSION,)
AGENT_ANNOTATIONS = (
    CURRENT_VERSION,
    COMMIT,
    STAGED_VERSION,
    HEALTHY,
    FAILED,
    FAILURE,
    HEALTH,
    OBSERVED_GRANT,
    RESTART,
    STEP_FAILURE,
)
RETIRED = ("atoll.dev/update",)
"""Keys an earlier agent wrote (``staged <version>``, now :data:`STAGED_VERSION`):
the agent's patch removes them."""

# --- written by the operator: its answer to the agent --------------------------------------
POOL = "atoll.dev/pool"
DESIRED_VERSION = "atoll.dev/desired-version"
STAGE = "atoll.dev/stage"
MAY_REBOOT = "atoll.dev/may-reboot"
REASON = "atoll.dev/reason"
RESUMED = "atoll.dev/resumed"
REBOOT = "atoll.dev/reboot"
GRANT_ANNOTATIONS = (POOL, DESIRED_VERSION, STAGE, MAY_REBOOT, REASON, RESUMED, REBOOT)

COMMIT_MAX = 128
LABEL_VALUE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
"""A Kubernetes label value (empty aside): at most 63 characters, matched whole."""
_COMMIT = re.compile(rf"[0-9A-Za-z]{{1,{COMMIT_MAX}}}")
_POOL = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")  # an object name (RFC 1123)
_RESTART_MAX = 2048  # characters of a restart's JSON (its reason is at most 500)
_STEP_FAILURE_MAX = 2048  # characters of a step failure's JSON (its reason is at most 500)
_T = TypeVar("_T")


class NodeProtocolError(ProtocolError):
    """A Node's label or annotation that does not follow the protocol; the message
    names the node and the key."""


class Health(StrEnum):
    """The agent's health checks and the trial of a new deployment."""

    UNKNOWN = "unknown"  # no health round yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # outside a trial
    TRIAL = "in trial"  # a new deployment's health trial runs
    ROLLED_BACK = "rolled back"  # a trial failed and the node went back by itself


def version_label(version: str) -> str | None:
    """``version`` as the value of :data:`LABEL_VERSION`, or ``None`` when it is not
    a valid label value (the label is then removed; the annotation keeps the value)."""
    return version if LABEL_VALUE.fullmatch(version) else None


def one_line(text: str, limit: int = REASON_MAX) -> str:
    """``text`` as one line of at most ``limit`` characters: control characters and
    runs of white space become one space, a longer text is cut (ending in an ellipsis)."""
    line = " ".join(CONTROL.sub(" ", text).split())
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class NodeState:
    """What the agent says about its node: the four facts of the fleet protocol's
    :class:`Report` (``version``, ``staged``, ``healthy``, ``failed``), why it
    failed, the booted commit, its health checks' state and its last restart."""

    version: str
    staged: str | None = None
    healthy: bool = True
    failed: bool = False
    failure: str | None = None
    """Why ``failed`` (one line); only with ``failed``."""
    commit: str | None = None
    health: Health = Health.UNKNOWN
    observed: str | None = None
    """The etag of the grant this state answers (:meth:`Grant.etag`), as
    ``observedGeneration`` does for a spec: the operator counts ``failed`` only
    from a state that has seen its current grant. ``None``: the agent does not
    know yet (it has just started); the Node keeps the last one written."""
    restart: Restart | None = None
    """The last restart into a version its agent recorded (soft or full, and why):
    :data:`RESTART`, the fleet protocol's :class:`Restart` as compact JSON."""
    step_failure: StepFailure | None = None
    """The step of an update round that failed under the grant :attr:`observed`
    (fetch, verify, deploy, boot-entries, reboot), as the fleet protocol's
    :class:`StepFailure` (:data:`STEP_FAILURE`, compact JSON); only with ``failed``,
    whose ``failure`` line says the same to people. The operator applies the pool's
    ``onStepFailure`` to it (a retry after a backoff) as the standalone controller
    does; without it ``failed`` is the agent's verdict on its health."""

    def __post_init__(self) -> None:
        _version("version", self.version)
        if self.observed is not None and not ETAG.fullmatch(self.observed):
            raise ProtocolError(f"observed: expected an etag, got {_shown(self.observed)}")
        if self.staged is not None:
            _version("staged", self.staged)
        if self.commit is not None and not _COMMIT.fullmatch(self.commit):
            raise ProtocolError(
                f"commit: expected 1-{COMMIT_MAX} letters and digits, got {_shown(self.commit)}"
            )
        if self.failure is not None:
            if not self.failed:
                raise ProtocolError(f"failure {_shown(self.failure)} without failed")
            _line("failure", self.failure)
        if not isinstance(self.health, Health):
            raise ProtocolError(f"health must be a Health, not {self.health!r}")
        if self.restart is not None and not isinstance(self.restart, Restart):
            raise ProtocolError(f"restart must be a Restart, not {self.restart!r}")
        if self.step_failure is not None:
            if not isinstance(self.step_failure, StepFailure):
                raise ProtocolError(
                    f"step_failure must be a StepFailure, not {self.step_failure!r}"
                )
            if not self.failed:
                raise ProtocolError("a step failure without failed")

    def labels(self) -> dict[str, str | None]:
        return {LABEL_VERSION: version_label(self.version)}

    def annotations(self) -> dict[str, str | None]:
        """Every agent annotation (``None``: absent, removed by a merge patch), but
        :data:`OBSERVED_GRANT` only when known (an unknown one leaves the Node's)."""
        notes: dict[str, str | None] = {
            CURRENT_VERSION: self.version,
            COMMIT: self.commit,
            STAGED_VERSION: self.staged,
            HEALTHY: _bool(self.healthy),
            FAILED: _bool(self.failed),
            FAILURE: self.failure,
            HEALTH: self.health.value,
            RESTART: None if self.restart is None else restart_text(self.restart),
            STEP_FAILURE: None
            if self.step_failure is None
            else compact_json(self.step_failure.to_json()),
            **dict.fromkeys(RETIRED),
        }
        if self.observed is not None:
            notes[OBSERVED_GRANT] = self.observed
        return notes

    def answers(self, grant: Grant | None) -> bool:
        """Whether this state answers ``grant``: it says which grant it has seen and
        that is ``grant``, or it does not say (an agent before this key), or there
        is no grant. A failure said before the agent saw a new grant (a resume) is
        the old grant's, not the new one's."""
        return self.observed is None or grant is None or self.observed == grant.etag()

    def patch(self) -> dict[str, Any]:
        """The JSON merge patch of ``nodes/<name>`` that says this state (and removes
        what it does not say: a stale staged version, failure or label)."""
        return {"metadata": {"labels": self.labels(), "annotations": self.annotations()}}

    def report(self) -> Report:
        """The same facts in the standalone controller's protocol: a step failure is
        its ``failure`` (``failed`` then false, ``staged`` none: the node undid it)."""
        if self.step_failure is not None:
            return Report(self.version, None, self.healthy, False, self.step_failure, self.restart)
        return Report(self.version, self.staged, self.healthy, self.failed, restart=self.restart)

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeState | None:
        """The agent's state on ``node`` (a Node object as the API returns it); ``None``
        when its agent has not said anything yet (no :data:`CURRENT_VERSION`)."""
        name, notes = _name(node), _annotations(node)
        if notes.get(CURRENT_VERSION) is None:
            return None
        with _naming(name):
            health = notes.get(HEALTH, Health.UNKNOWN.value)
            if health not in {h.value for h in Health}:
                allowed = ", ".join(repr(h.value) for h in Health)
                raise _KeyError(HEALTH, f"expected one of {allowed}, got {_shown(health)}")
            failed = _read_bool(notes, FAILED, default=False)
            return cls(
                version=_read(notes, CURRENT_VERSION, _version),
                staged=_read_optional(notes, STAGED_VERSION, _version),
                healthy=_read_bool(notes, HEALTHY, default=True),
                failed=failed,
                failure=_read_optional(notes, FAILURE, _line) if failed else None,
                commit=_read_optional(notes, COMMIT, _commit),
                health=Health(health),
                observed=_read_optional(notes, OBSERVED_GRANT, _etag),
                # Display only: a value that is not a restart decides nothing, so it
                # must not make the Node unreadable (that stops its pool's planning);
                # it reads as none here, and read_restart names it for the views.
                restart=_restart_or_none(notes),
                step_failure=read_step_failure(notes) if failed else None,
            )


@dataclass(frozen=True)
class Grant:
    """The operator's answer to a node's agent: the standalone controller's
    :class:`Desired` (``GET /v1/nodes/{name}/desired``). Stage ``version`` when
    ``stage``; switch to it and reboot only when ``may_reboot`` (the operator has
    then cordoned and drained the node and counts it unavailable), the way its
    pool says (``reboot``: ``auto``, soft when the kernel allows, or ``full``;
    :data:`REBOOT`, absent: ``full``). ``reason`` says why it waits (cut to one
    line of :data:`REASON_MAX` characters)."""

    version: str
    stage: bool
    may_reboot: bool
    pool: str
    reason: str = ""
    resumed: str = ""
    """Which resume of the pool this grant belongs to (:func:`resume_token` of the
    pool's ``atoll.dev/resume``; empty before any): part of the grant's etag, so a
    resume is a new grant for every node of the pool, also one whose stage and
    reboot did not change, and a failure said before it is not taken as an answer
    to it (:meth:`NodeState.answers`)."""
    reboot: RebootPolicy = RebootPolicy.FULL
    """The pool's reboot policy; not part of the etag (:meth:`etag`)."""

    def __post_init__(self) -> None:
        _version("version", self.version)
        if not _POOL.fullmatch(self.pool):
            raise ProtocolError(f"pool: expected an object name, got {self.pool!r}")
        if self.resumed and not ETAG.fullmatch(self.resumed):
            raise ProtocolError(f"resumed: expected an etag, got {_shown(self.resumed)}")
        if not isinstance(self.reboot, RebootPolicy):
            raise ProtocolError(f"reboot: expected a RebootPolicy, got {self.reboot!r}")
        object.__setattr__(self, "reason", one_line(self.reason))

    def annotations(self) -> dict[str, str | None]:
        return {
            POOL: self.pool,
            DESIRED_VERSION: self.version,
            STAGE: _bool(self.stage),
            MAY_REBOOT: _bool(self.may_reboot),
            REASON: self.reason,
            RESUMED: self.resumed or None,
            REBOOT: self.reboot.value,
        }

    def patch(self) -> dict[str, Any]:
        """The JSON merge patch of ``nodes/<name>`` that says this grant."""
        return {"metadata": {"annotations": self.annotations()}}

    def desired(self) -> Desired:
        """The same answer in the standalone controller's protocol."""
        return Desired(
            self.version, self.stage, self.may_reboot, self.reason, self.pool, reboot=self.reboot
        )

    def etag(self) -> str:
        """The etag of this grant's state (pool, version, stage, may-reboot and the
        resume it belongs to; not the reason, nor the reboot policy): what a watch
        waits on and what :data:`OBSERVED_GRANT` says. Before any resume it is the
        standalone answer's (:meth:`Desired.tagged`).

        The policy is left out as the standalone etag leaves it out: it matters only
        when the node restarts, and it does so in the round that follows a grant of
        ``may_reboot`` (a change of the etag), reading the grant, with the pool's
        policy as it is then, in that round; a new policy wakes no watching node for
        nothing, and a failure said under the old one still answers the grant."""
        parts = self.desired().grant()
        return grant_etag((*parts, self.resumed) if self.resumed else parts)

    def tagged(self) -> Desired:
        """The standalone answer with this grant's etag (what the agent's loop follows)."""
        return replace(self.desired(), etag=self.etag())

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> Grant | None:
        """The operator's grant on ``node``; ``None`` before any (no :data:`DESIRED_VERSION`:
        no pool selects the node, or the operator has not planned it yet)."""
        name, notes = _name(node), _annotations(node)
        if notes.get(DESIRED_VERSION) is None:
            return None
        with _naming(name):
            return cls(
                version=_read(notes, DESIRED_VERSION, _version),
                stage=_read_bool(notes, STAGE, default=False),
                may_reboot=_read_bool(notes, MAY_REBOOT, default=False),
                pool=_read(notes, POOL, _pool),
                reason=_read_optional(notes, REASON, _reason) or "",
                resumed=_read_optional(notes, RESUMED, _etag) or "",
                reboot=RebootPolicy(_read_optional(notes, REBOOT, _reboot) or "full"),
            )


# --- validation ---------------------------------------------------------------------------


def resume_token(resume: str) -> str:
    """What :attr:`Grant.resumed` says for a pool's ``atoll.dev/resume`` value (any text
    a person chose): 16 hex digits of its digest."""
    return hashlib.blake2b(resume.encode(), digest_size=8).hexdigest()


def compact_json(body: Mapping[str, Any]) -> str:
    """``body`` as the JSON of one annotation value: compact, no spaces."""
    return json.dumps(body, separators=(",", ":"))


def restart_text(restart: Restart) -> str:
    """``restart`` as the value of :data:`RESTART`: its JSON, compact."""
    return compact_json(restart.to_json())


def _json_note(
    notes: Mapping[str, object], key: str, limit: int, what: str, parse: Callable[[Any], _T]
) -> _T | None:
    """The value of annotation ``key`` parsed as JSON by ``parse``; None when absent.
    :class:`ProtocolError` naming the key when it is longer than ``limit``, not JSON,
    or not what ``parse`` takes (``what`` names it: "a restart")."""
    raw = notes.get(key)
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw) > limit:
        raise _KeyError(key, f"expected {what}'s JSON, got {_shown(raw)}")
    try:
        return parse(json.loads(raw))
    except ValueError as e:  # not JSON, or not what parse takes (ProtocolError)
        raise _KeyError(key, f"expected {what}'s JSON ({e}), got {_shown(raw)}") from e


def read_step_failure(notes: Mapping[str, object]) -> StepFailure | None:
    """The step failure :data:`STEP_FAILURE` says among a Node's annotations ``notes``;
    None when absent. :class:`ProtocolError` naming the key when it is not one, or
    one the controller recorded (a node reports its own)."""
    failure = _json_note(
        notes, STEP_FAILURE, _STEP_FAILURE_MAX, "a step failure", StepFailure.from_json
    )
    if failure is not None and failure.by is not By.NODE:
        raise _KeyError(STEP_FAILURE, f"a node reports its own failures, not {failure.by.value!r}")
    return failure


def read_restart(notes: Mapping[str, object]) -> Restart | None:
    """The restart :data:`RESTART` says among a Node's annotations ``notes``; None when
    absent. :class:`ProtocolError` naming the key when it is not a restart."""
    return _json_note(notes, RESTART, _RESTART_MAX, "a restart", Restart.from_json)


def _restart_or_none(notes: Mapping[str, object]) -> Restart | None:
    try:
        return read_restart(notes)
    except ProtocolError:
        return None


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _version(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip() or not VERSION.fullmatch(value):
        raise ProtocolError(
            f"{key}: expected a version (1-{VERSION_MAX} printable ASCII characters), "
            f"got {_shown(value)}"
        )
    return value


def _commit(key: str, value: object) -> str:
    if not isinstance(value, str) or not _COMMIT.fullmatch(value):
        raise ProtocolError(
            f"{key}: expected 1-{COMMIT_MAX} letters and digits, got {_shown(value)}"
        )
    return value


def _etag(key: str, value: object) -> str:
    if not isinstance(value, str) or not ETAG.fullmatch(value):
        raise ProtocolError(f"{key}: expected 1-64 of 0-9 a-z, got {_shown(value)}")
    return value


def _pool(key: str, value: object) -> str:
    if not isinstance(value, str) or not _POOL.fullmatch(value):
        raise ProtocolError(f"{key}: expected a NodePool's name, got {_shown(value)}")
    return value


def _reboot(key: str, value: object) -> str:
    if not isinstance(value, str) or value not in {p.value for p in RebootPolicy}:
        allowed = ", ".join(repr(p.value) for p in RebootPolicy)
        raise ProtocolError(f"{key}: expected one of {allowed}, got {_shown(value)}")
    return str(value)


def _line(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or value != one_line(value):
        raise ProtocolError(
            f"{key}: expected one line of at most {REASON_MAX} characters without control "
            f"characters, got {_shown(value)}"
        )
    return value


def _reason(key: str, value: object) -> str:
    return "" if value == "" else _line(key, value)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


_Check = Callable[[str, object], str]


class _KeyError(ProtocolError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"annotation {key}: {message}")


def _read(notes: Mapping[str, object], key: str, check: _Check) -> str:
    value = notes.get(key)
    try:
        return check(key, value)
    except ProtocolError as e:
        raise _KeyError(key, str(e).removeprefix(f"{key}: ")) from e


def _read_optional(notes: Mapping[str, object], key: str, check: _Check) -> str | None:
    return None if notes.get(key) is None else _read(notes, key, check)


def _read_bool(notes: Mapping[str, object], key: str, *, default: bool) -> bool:
    value = notes.get(key)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise _KeyError(key, f'expected "true" or "false", got {_shown(value)}')
    return value == "true"


@contextmanager
def _naming(node: str) -> Iterator[None]:
    """A :class:`ProtocolError` inside becomes a :class:`NodeProtocolError` naming ``node``."""
    try:
        yield
    except NodeProtocolError:
        raise
    except ProtocolError as e:
        raise NodeProtocolError(f"node {node}: {e}") from e


def _name(node: Mapping[str, Any]) -> str:
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else "(no name)"


def _annotations(node: Mapping[str, Any]) -> Mapping[str, object]:
    meta = node.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, Mapping) else None
    if notes is None:
        return {}
    if not isinstance(notes, Mapping):
        raise NodeProtocolError(f"node {_name(node)}: metadata.annotations is not an object")
    return notes

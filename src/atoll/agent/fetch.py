"""The node's side of signed updates: follow a channel, pull, verify.

Used by the agent's upgrade path (standard library only):

1. :func:`check_channel` downloads ``<server>/channels/<name>.json``,
   verifies its signature and refuses replays and unsigned downgrades against
   the last document this node accepted (kept in ``state``, written only
   after a successful verification);
2. :func:`pull_verified` lets ostree pull the commit from
   ``<server>/repo`` (:func:`pull`: every object checked against its
   checksum, deltas used when the server has one from the node's commit,
   downloads resumed), then verifies the commit's signature before anything
   deploys it (:func:`verify_pulled`). A refused commit is removed from the
   node's repository again. The update loop runs the two separately, so a
   failure names its step (fetch or verify).

ostree is run through an injectable ``run``
(:class:`atoll.agent.command.Runner`, :func:`atoll.agent.command.output` by
default), so the logic is tested on the build machine against a real ostree
repository. Every call has a timeout (``*_TIMEOUT``): a pull that hangs fails
the round instead of stalling the update loop.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path

from atoll.agent import command
from atoll.durable import write_atomic
from atoll.wire.channel import (
    Channel,
    TrustedKey,
    VerificationError,
    verify_channel,
    verify_commit,
)

Runner = command.Runner
REMOTE = "atoll-updates"
# Seconds each ostree call may take: generous for a slow link or node, never endless.
REMOTE_TIMEOUT = 60.0  # ostree remote add/delete: edits the repository's config
PULL_TIMEOUT = 3600.0  # a whole commit over a slow link (an upgrade with a delta is smaller)
PRUNE_TIMEOUT = 1800.0  # prune walks every object of the repository


def _load_state(state: Path, name: str) -> Channel | None:
    if not state.exists():
        return None
    data = json.loads(state.read_text()).get(name)
    if not data:
        return None
    return Channel(
        name=name,
        ref=data["ref"],
        commit=data["commit"],
        version=data["version"],
        serial=int(data["serial"]),
        rollback=bool(data.get("rollback", False)),
        history=(),
        signed_by=data.get("signed_by", ""),
    )


def _save_state(state: Path, channel: Channel) -> None:
    current = json.loads(state.read_text()) if state.exists() else {}
    current[channel.name] = {
        "ref": channel.ref,
        "commit": channel.commit,
        "version": channel.version,
        "serial": channel.serial,
        "rollback": channel.rollback,
        "signed_by": channel.signed_by,
    }
    write_atomic(state, json.dumps(current, indent=1, sort_keys=True))


def check_channel(
    server: str, name: str, keys: list[TrustedKey], state: Path, timeout: float = 30
) -> Channel:
    """The verified channel document; raises :class:`VerificationError` or ``OSError``."""
    url = f"{server.rstrip('/')}/channels/{name}.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            data = response.read()
    except urllib.error.URLError as e:
        raise OSError(f"{url}: {e.reason}") from e
    channel = verify_channel(data, keys, name=name, accepted=_load_state(state, name))
    _save_state(state, channel)
    return channel


class PullError(VerificationError):
    """ostree could not fetch the commit from the update server (a fetch that
    failed, not a signature that did not verify; a :class:`VerificationError`
    for the callers that treat both alike)."""


def pull(repo: Path, server: str, commit: str, run: Runner = command.output) -> None:
    """Let ostree pull ``commit`` from ``<server>/repo`` into ``repo`` (objects checked
    against their checksums); :class:`PullError` or ``OSError`` naming the URL."""
    url = f"{server.rstrip('/')}/repo"
    ostree = ["ostree", f"--repo={repo}"]
    with contextlib.suppress(command.CommandError):  # a failure shows in the add
        run([*ostree, "remote", "delete", "--if-exists", REMOTE], timeout=REMOTE_TIMEOUT)
    try:
        run([*ostree, "remote", "add", "--no-gpg-verify", REMOTE, url], timeout=REMOTE_TIMEOUT)
    except command.CommandError as e:
        raise OSError(f"ostree remote add {url}: {e.detail}") from e
    try:
        run([*ostree, "pull", REMOTE, commit], timeout=PULL_TIMEOUT)
    except command.CommandError as e:
        detail = e.stderr_tail[-1] if e.stderr_tail and e.status is not None else e.what
        raise PullError(f"pull of {commit[:12]} from {url} failed: {detail}") from e


def verify_pulled(
    repo: Path, commit: str, keys: list[TrustedKey], run: Runner = command.output
) -> None:
    """Verify the pulled commit's signature; a refused commit is removed from ``repo``."""
    try:
        verify_commit(repo, commit, keys)
    except VerificationError:
        # Never leave an untrusted commit where a later deploy could pick it up.
        ostree = ["ostree", f"--repo={repo}"]
        with contextlib.suppress(command.CommandError):  # the VerificationError says more
            run([*ostree, "prune", f"--delete-commit={commit}"], timeout=PRUNE_TIMEOUT)
        raise


def pull_verified(
    repo: Path, server: str, commit: str, keys: list[TrustedKey], run: Runner = command.output
) -> None:
    """Pull ``commit`` from the update server into ``repo`` and verify its signature."""
    pull(repo, server, commit, run)
    verify_pulled(repo, commit, keys, run)

"""``atoll publish``: sign a composed commit, ship deltas, advance a channel.

The served directory (``--to``) holds an ostree archive repository
(``repo/``, what ``ostree pull`` talks to) and the signed channel documents
(``channels/``); any static web server can serve it. A publish, in order:

1. copy the commit's objects from the build repository (``pull-local``);
2. sign the commit (:mod:`atoll.publish.sign`);
3. generate static deltas from each of the channel's last N distinct
   versions to the new commit, so a node downloads only what changed;
4. keep the commit alive with a ref ``history/<channel>/<serial>``;
5. write the new channel document: **the commit point**; until this rename
   nothing a node reads has changed, so an interrupted publish leaves every
   channel where it was;
6. point the plain ostree ref ``channels/<channel>`` at it and regenerate
   the summary (for plain ostree clients and delta discovery).

``prune`` keeps the last N versions of every channel and deletes only what
no channel history and no kept delta needs.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atoll.durable import write_atomic
from atoll.errors import AtollError, InputError
from atoll.progress import Reporter
from atoll.publish.channels import (
    ChannelUpdate,
    check_name,
    list_channels,
    next_document,
    read_channel,
    write_channel,
)
from atoll.publish.keys import PUBLIC_NAME, public_bytes
from atoll.publish.sign import sign_commit
from atoll.tools import ostree
from atoll.wire.channel import Channel, TrustedKey, VerificationError, verify_commit

DEFAULT_DELTAS = 3


@dataclass
class PublishResult:
    channel: str
    commit: str
    version: str
    serial: int
    deltas: list[str] = field(default_factory=list)  # "from->to" checksums


def served_repo(updates: Path) -> Path:
    return updates / "repo"


def _init_updates(updates: Path, key: Ed25519PrivateKey) -> Path:
    repo = served_repo(updates)
    ostree.init_repo(repo, mode="archive")
    (updates / "channels").mkdir(parents=True, exist_ok=True)
    # The public key beside the channels, for operators; nodes trust the copy in their image.
    write_atomic(updates / PUBLIC_NAME, base64.b64encode(public_bytes(key)).decode() + "\n")
    return repo


def publish(
    source: Path,
    ref: str,
    updates: Path,
    channel: str,
    key: Ed25519PrivateKey,
    reporter: Reporter,
    *,
    deltas: int = DEFAULT_DELTAS,
) -> PublishResult:
    check_name(channel)
    if not (source / "config").exists():
        raise InputError(f"{source}: not an ostree repository")
    commit = ostree.rev_parse(source, ref)
    if commit is None:
        raise InputError(f"{source}: no ref or commit {ref!r} (refs: {ostree.refs(source)})")
    version = str(ostree.commit_metadata(source, commit, ["version"]).get("version", ""))
    if not version:
        raise InputError(f"{source}: commit {commit[:12]} has no version metadata")
    repo = _init_updates(updates, key)
    current = read_channel(updates, channel, key)
    # Refuse a downgrade before doing any work.
    document = next_document(current, ChannelUpdate(channel, ref, commit, version), key)
    with reporter.stage("publish", f"{ref} {version} -> {channel}"):
        ostree.pull_local(repo, source, commit)
        sign_commit(repo, commit, key)
        made = _deltas(repo, current, commit, deltas, reporter)
        serial = (current.serial + 1) if current else 1
        ostree.set_ref(repo, f"history/{channel}/{serial}", commit)
        write_channel(updates, channel, document)
        ostree.set_ref(repo, f"channels/{channel}", commit)
        ostree.update_summary(repo)
    return PublishResult(channel, commit, version, serial, made)


def _deltas(
    repo: Path, current: Channel | None, commit: str, count: int, reporter: Reporter
) -> list[str]:
    sources: list[str] = []
    for entry in current.history if current else ():
        old = str(entry.get("commit", ""))
        if old and old != commit and old not in sources and ostree.has_commit(repo, old):
            sources.append(old)
        if len(sources) >= count:
            break
    made = []
    for old in sources:
        reporter.info(f"static delta {old[:12]} -> {commit[:12]}")
        ostree.generate_static_delta(repo, old, commit)
        made.append(f"{old}->{commit}")
    return made


def promote(
    updates: Path, source: str, target: str, key: Ed25519PrivateKey, reporter: Reporter
) -> PublishResult:
    """Point ``target`` at what ``source`` points to (e.g. beta -> stable)."""
    origin = read_channel(updates, check_name(source), key)
    if origin is None:
        raise InputError(f"{updates}: no channel {source!r} (channels: {list_channels(updates)})")
    return _move(updates, target, origin.ref, origin.commit, origin.version, key, reporter)


def rollback(
    updates: Path, channel: str, key: Ed25519PrivateKey, reporter: Reporter
) -> PublishResult:
    """Move ``channel`` back to its previous version, as a signed, explicit rollback."""
    current = read_channel(updates, check_name(channel), key)
    if current is None:
        raise InputError(f"{updates}: no channel {channel!r}")
    previous = next((e for e in current.history if str(e.get("commit")) != current.commit), None)
    if previous is None:
        raise InputError(f"channel {channel}: no earlier version to roll back to")
    return _move(
        updates,
        channel,
        current.ref,
        str(previous["commit"]),
        str(previous["version"]),
        key,
        reporter,
        rollback=True,
    )


def _move(
    updates: Path,
    channel: str,
    ref: str,
    commit: str,
    version: str,
    key: Ed25519PrivateKey,
    reporter: Reporter,
    *,
    rollback: bool = False,
) -> PublishResult:
    repo = served_repo(updates)
    current = read_channel(updates, check_name(channel), key)
    update = ChannelUpdate(channel, ref, commit, version, rollback=rollback)
    document = next_document(current, update, key)
    if not ostree.has_commit(repo, commit):
        raise AtollError(f"{repo}: commit {commit[:12]} is no longer published (pruned?)")
    with reporter.stage("channel", f"{channel} -> {version}{' (rollback)' if rollback else ''}"):
        made = _deltas(repo, current, commit, DEFAULT_DELTAS, reporter)
        serial = (current.serial + 1) if current else 1
        ostree.set_ref(repo, f"history/{channel}/{serial}", commit)
        write_channel(updates, channel, document)
        ostree.set_ref(repo, f"channels/{channel}", commit)
        ostree.update_summary(repo)
    return PublishResult(channel, commit, version, serial, made)


def prune(updates: Path, keep: int, key: Ed25519PrivateKey, reporter: Reporter) -> dict[str, int]:
    """Keep the last ``keep`` versions of every channel; delete the rest."""
    if keep < 1:
        raise InputError(f"--prune {keep}: keep at least one version per channel")
    repo = served_repo(updates)
    kept: set[str] = set()
    for name in list_channels(updates):
        channel = read_channel(updates, name, key)
        assert channel is not None
        kept.add(channel.commit)
        seen: list[str] = []
        for entry in channel.history:
            commit = str(entry.get("commit", ""))
            if commit not in seen:
                seen.append(commit)
        kept.update(seen[:keep])
    refs_removed = 0
    for ref in ostree.refs(repo):
        if ref.startswith("history/"):
            target = ostree.rev_parse(repo, ref)
            if target not in kept:
                ostree.delete_ref(repo, ref)
                refs_removed += 1
    deltas_removed = 0
    for name in ostree.static_deltas(repo):
        if not all(end in kept for end in name.split("-")):
            ostree.delete_static_delta(repo, name)
            deltas_removed += 1
    reporter.info(ostree.prune_unreachable(repo))
    ostree.update_summary(repo)
    return {
        "kept_commits": len(kept),
        "refs_removed": refs_removed,
        "deltas_removed": deltas_removed,
    }


def pull_verified(repo: Path, server: str, commit: str, keys: list[TrustedKey]) -> None:
    """What a node does before it deploys: pull ``commit`` from the update server, check
    its signature (the node's code does the same with its own runner)."""
    ostree.pull(repo, f"{server.rstrip('/')}/repo", commit, remote="atoll-updates")
    try:
        verify_commit(repo, commit, keys)
    except VerificationError as e:
        raise AtollError(f"{server}: {e}") from e

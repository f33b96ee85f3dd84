"""Signed channel documents: what each channel points to, with its history.

``<updates>/channels/<name>.json`` is the single source of truth for a
channel (format in :mod:`atoll.agent.verify` and docs/updates.md). Writing it
is one ``rename()``, so a channel moves atomically, and everything a publish
does before that (objects, signatures, deltas) leaves the channel where it
was when interrupted. The serial number grows with every change; the version
only grows unless the change is an explicit, signed rollback.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atoll.agent.verify import Channel, compare_versions, key_id, parse_public_key, verify_channel
from atoll.errors import InputError
from atoll.publish.keys import public_bytes

HISTORY_LIMIT = 50
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class ChannelUpdate:
    name: str
    ref: str
    commit: str
    version: str
    rollback: bool = False


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InputError(f"channel {name!r}: use lowercase letters, digits, '.', '_' or '-'")
    return name


def channel_path(updates: Path, name: str) -> Path:
    return updates / "channels" / f"{check_name(name)}.json"


def read_channel(updates: Path, name: str, key: Ed25519PrivateKey) -> Channel | None:
    """The current document of ``name``, verified with the publisher's own key."""
    path = channel_path(updates, name)
    if not path.exists():
        return None
    trusted = parse_public_key(base64.b64encode(public_bytes(key)).decode(), "publisher key")
    return verify_channel(path.read_bytes(), [trusted], name=name)


def list_channels(updates: Path) -> list[str]:
    directory = updates / "channels"
    return sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []


def read_unverified(updates: Path, name: str) -> dict[str, object]:
    """The payload of a channel document, for display (``atoll channel show``)."""
    path = channel_path(updates, name)
    if not path.exists():
        raise InputError(f"{updates}: no channel {name!r} (channels: {list_channels(updates)})")
    envelope = json.loads(path.read_bytes())
    payload = json.loads(base64.b64decode(envelope["payload"]))
    assert isinstance(payload, dict)
    return payload


def next_document(current: Channel | None, update: ChannelUpdate, key: Ed25519PrivateKey) -> bytes:
    """The signed document that moves a channel from ``current`` to ``update``."""
    if (
        current is not None
        and not update.rollback
        and compare_versions(update.version, current.version) < 0
    ):
        raise InputError(
            f"channel {update.name}: {update.version} is older than the current "
            f"{current.version}; use an explicit rollback to go back"
        )
    entry = {
        "serial": (current.serial + 1) if current else 1,
        "commit": update.commit,
        "version": update.version,
        "time": int(time.time()),
        "rollback": update.rollback,
    }
    history = [entry, *(current.history if current else ())][:HISTORY_LIMIT]
    payload = {
        "channel": update.name,
        "ref": update.ref,
        "commit": update.commit,
        "version": update.version,
        "serial": entry["serial"],
        "rollback": update.rollback,
        "history": history,
    }
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    signature = key.sign(raw)
    envelope = {
        "payload": base64.b64encode(raw).decode(),
        "signatures": [
            {"key": key_id(public_bytes(key)), "sig": base64.b64encode(signature).decode()}
        ],
    }
    return json.dumps(envelope, indent=1).encode() + b"\n"


def write_channel(updates: Path, name: str, document: bytes) -> None:
    """Replace the channel document in one rename (the commit point of a publish)."""
    path = channel_path(updates, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial")
    with staged.open("wb") as f:
        f.write(document)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)

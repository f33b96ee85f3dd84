"""Signed channel documents: what each channel points to, with its history.

``<updates>/channels/<name>.json`` is the single source of truth for a
channel (format in :mod:`atoll.wire.channel` and docs/updates.md: that module
encodes and verifies, this one signs). Writing it is one durable ``rename()``
(:func:`atoll.durable.write_atomic`), so a channel moves atomically, and
everything a publish does before that (objects, signatures, deltas) leaves the
channel where it was when interrupted. The serial number grows with every change; the version
only grows unless the change is an explicit, signed rollback.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atoll.durable import write_atomic
from atoll.errors import AtollError, InputError
from atoll.publish.keys import public_bytes
from atoll.wire.channel import (
    Channel,
    VerificationError,
    compare_versions,
    decode_envelope,
    encode_envelope,
    encode_payload,
    key_id,
    parse_public_key,
    verify_channel,
)

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
    try:
        return verify_channel(path.read_bytes(), [trusted], name=name)
    except VerificationError as e:
        raise AtollError(f"{path}: {e}") from e


def list_channels(updates: Path) -> list[str]:
    directory = updates / "channels"
    return sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []


def read_unverified(updates: Path, name: str) -> dict[str, object]:
    """The payload of a channel document, for display (``atoll channel show``)."""
    path = channel_path(updates, name)
    if not path.exists():
        raise InputError(f"{updates}: no channel {name!r} (channels: {list_channels(updates)})")
    try:
        raw, _signatures = decode_envelope(path.read_bytes(), name)
    except VerificationError as e:
        raise AtollError(f"{path}: {e}") from e
    payload = json.loads(raw)
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
    serial = (current.serial + 1) if current else 1
    entry = {
        "serial": serial,
        "commit": update.commit,
        "version": update.version,
        "time": int(time.time()),
        "rollback": update.rollback,
    }
    signer = key_id(public_bytes(key))
    payload = encode_payload(
        Channel(
            name=update.name,
            ref=update.ref,
            commit=update.commit,
            version=update.version,
            serial=serial,
            rollback=update.rollback,
            history=tuple([entry, *(current.history if current else ())][:HISTORY_LIMIT]),
            signed_by=signer,
        )
    )
    return encode_envelope(payload, [(signer, key.sign(payload))])


def write_channel(updates: Path, name: str, document: bytes) -> None:
    """Replace the channel document in one rename (the commit point of a publish)."""
    write_atomic(channel_path(updates, name), document)

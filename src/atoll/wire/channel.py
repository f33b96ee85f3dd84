"""Signed updates: channel documents, commit signatures, trusted keys, versions.

The update server's formats, written on the build machine by ``atoll
publish`` (:mod:`atoll.publish.channels`, :mod:`atoll.publish.sign`, which
sign with ``cryptography``) and checked on the node by the agent before it
trusts an update (:mod:`atoll.agent.fetch`). Standard library only. Each
refusal raises :class:`VerificationError` with a reason that names what failed:

* **commit signatures**: a commit is trusted when its detached metadata
  (``<commit>.commitmeta`` next to the ``.commit`` object, ostree's own
  ``ostree.sign.ed25519`` format) holds an Ed25519 signature of the commit
  object's bytes by one of the node's trusted keys, and the commit object
  hashes to its name. Every other object is checked by ostree itself while it
  pulls (content addressed: a tampered or truncated object never lands).
* **channel documents**: a channel (``channels/<name>.json``) is a signed
  envelope ``{"payload": base64(json), "signatures": [{"key", "sig"}]}``
  (:func:`encode_envelope`); the payload (:func:`encode_payload`, canonical
  JSON) names the commit, version and a serial number that grows with every
  publish. A node remembers the last serial it accepted per channel and
  refuses anything older or equal-but-different (a replay), and refuses a
  version lower than the one it accepted unless the payload carries an
  operator-signed ``"rollback": true`` (:func:`check_succession`).
* **trusted keys**: base64 Ed25519 public keys, one per file, in the image's
  ``/usr/lib/atoll/trusted-keys.d/`` and the node's ``/etc/atoll/trusted-keys.d/``
  (``*.pub``); the key id is the first 16 hex digits of the key's sha256.
* **versions** compare numerically where numeric (:func:`compare_versions`):
  publish refuses a downgrade without a rollback, the node too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atoll.wire import ed25519
from atoll.wire.gvariant import GVariantError, Variant, decode

SIGNATURE_KEY = "ostree.sign.ed25519"
TRUSTED_KEY_DIRS = (Path("/usr/lib/atoll/trusted-keys.d"), Path("/etc/atoll/trusted-keys.d"))


class VerificationError(Exception):
    """An update the node must refuse; the message says why."""


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    public: bytes
    source: str


@dataclass(frozen=True)
class Channel:
    name: str
    ref: str
    commit: str
    version: str
    serial: int
    rollback: bool
    history: tuple[dict[str, object], ...]
    signed_by: str


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def parse_public_key(text: str, source: str) -> TrustedKey:
    try:
        public = base64.b64decode(text.strip(), validate=True)
    except binascii.Error as e:
        raise VerificationError(f"{source}: not a base64 Ed25519 public key") from e
    if len(public) != 32:
        raise VerificationError(f"{source}: an Ed25519 public key has 32 bytes, not {len(public)}")
    return TrustedKey(key_id(public), public, source)


def load_trusted_keys(directories: tuple[Path, ...] = TRUSTED_KEY_DIRS) -> list[TrustedKey]:
    keys = []
    for directory in directories:
        if directory.is_dir():
            for path in sorted(directory.glob("*.pub")):
                keys.append(parse_public_key(path.read_text(), str(path)))
    return keys


def _object_path(repo: Path, checksum: str, suffix: str) -> Path:
    return repo / "objects" / checksum[:2] / f"{checksum[2:]}.{suffix}"


def commit_signatures(commitmeta: bytes) -> list[bytes]:
    """The ed25519 signatures in a commit's detached metadata."""
    try:
        metadata = decode("a{sv}", commitmeta)
    except (GVariantError, UnicodeDecodeError, AssertionError) as e:
        raise VerificationError(f"detached metadata is not a GVariant dictionary: {e}") from e
    assert isinstance(metadata, dict)
    value = metadata.get(SIGNATURE_KEY)
    if not isinstance(value, Variant) or value.type != "aay":
        return []
    assert isinstance(value.value, list)
    return [bytes(s) for s in value.value]


def verify_commit_bytes(
    checksum: str, commit: bytes, commitmeta: bytes | None, keys: list[TrustedKey]
) -> TrustedKey:
    """Return the trusted key that signed this commit, or raise why not."""
    if hashlib.sha256(commit).hexdigest() != checksum:
        raise VerificationError(f"commit {checksum[:12]}: object does not match its checksum")
    if not keys:
        raise VerificationError("no trusted keys on this node: refusing every update")
    if commitmeta is None:
        raise VerificationError(f"commit {checksum[:12]}: unsigned (no detached metadata)")
    signatures = commit_signatures(commitmeta)
    if not signatures:
        raise VerificationError(f"commit {checksum[:12]}: unsigned (no {SIGNATURE_KEY})")
    for signature in signatures:
        for key in keys:
            if ed25519.verify(key.public, commit, signature):
                return key
    raise VerificationError(
        f"commit {checksum[:12]}: {len(signatures)} signature(s), none by a trusted key "
        f"({', '.join(k.key_id for k in keys)})"
    )


def verify_commit(repo: Path, checksum: str, keys: list[TrustedKey]) -> TrustedKey:
    """Verify a commit in a local ostree repository (after ``ostree pull``)."""
    commit_path = _object_path(repo, checksum, "commit")
    if not commit_path.exists():
        raise VerificationError(f"commit {checksum[:12]}: not in {repo}")
    meta_path = _object_path(repo, checksum, "commitmeta")
    commitmeta = meta_path.read_bytes() if meta_path.exists() else None
    return verify_commit_bytes(checksum, commit_path.read_bytes(), commitmeta, keys)


def encode_payload(channel: Channel) -> bytes:
    """The canonical payload bytes of ``channel`` (what the signatures cover).

    ``signed_by`` is not part of the document: it is what verification found."""
    body = {
        "channel": channel.name,
        "ref": channel.ref,
        "commit": channel.commit,
        "version": channel.version,
        "serial": channel.serial,
        "rollback": channel.rollback,
        "history": list(channel.history),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def encode_envelope(payload: bytes, signatures: Sequence[tuple[str, bytes]]) -> bytes:
    """The channel document: ``payload`` with ``(key id, signature)`` pairs."""
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"key": key, "sig": base64.b64encode(signature).decode()}
            for key, signature in signatures
        ],
    }
    return json.dumps(envelope, indent=1).encode() + b"\n"


def decode_envelope(data: bytes, name: str) -> tuple[bytes, list[bytes]]:
    """The payload bytes and the signatures of a channel document (none verified)."""
    try:
        envelope = json.loads(data)
        payload = base64.b64decode(envelope["payload"], validate=True)
        entries = envelope["signatures"]
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise VerificationError(f"channel {name}: not a signed channel document ({e})") from e
    signatures = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            signatures.append(base64.b64decode(entry["sig"], validate=True))
        except (KeyError, TypeError, binascii.Error):
            continue  # an unreadable signature is no signature; the others may do
    return payload, signatures


def decode_payload(payload: bytes, name: str, signed_by: str = "") -> Channel:
    """The channel a payload describes (as signed; nothing checked against history)."""
    try:
        body = json.loads(payload)
        return Channel(
            name=str(body["channel"]),
            ref=str(body["ref"]),
            commit=str(body["commit"]),
            version=str(body["version"]),
            serial=int(body["serial"]),
            rollback=bool(body.get("rollback", False)),
            history=tuple(body.get("history", ())),
            signed_by=signed_by,
        )
    except (ValueError, KeyError, TypeError) as e:
        raise VerificationError(f"channel {name}: malformed payload ({e})") from e


def _signer(payload: bytes, signatures: list[bytes], keys: list[TrustedKey]) -> TrustedKey | None:
    for signature in signatures:
        for key in keys:
            if ed25519.verify(key.public, payload, signature):
                return key
    return None


def verify_channel(
    data: bytes,
    keys: list[TrustedKey],
    *,
    name: str,
    accepted: Channel | None = None,
) -> Channel:
    """Verify signed channel metadata against what this node accepted before."""
    payload, signatures = decode_envelope(data, name)
    signer = _signer(payload, signatures, keys)
    if signer is None:
        raise VerificationError(f"channel {name}: not signed by a trusted key")
    channel = decode_payload(payload, name, signer.key_id)
    if channel.name != name:
        raise VerificationError(f"channel {name}: document is for channel {channel.name!r}")
    if accepted is not None:
        check_succession(accepted, channel)
    return channel


def check_succession(accepted: Channel, channel: Channel) -> None:
    """Refuse a replay, a reused serial and a downgrade without a signed rollback."""
    name = channel.name
    if channel.serial < accepted.serial:
        raise VerificationError(
            f"channel {name}: serial {channel.serial} is older than the accepted "
            f"{accepted.serial} (replayed metadata)"
        )
    if channel.serial == accepted.serial and channel.commit != accepted.commit:
        raise VerificationError(f"channel {name}: serial {channel.serial} reused")
    if (
        channel.serial > accepted.serial
        and compare_versions(channel.version, accepted.version) < 0
        and not channel.rollback
    ):
        raise VerificationError(
            f"channel {name}: version {channel.version} is lower than {accepted.version} "
            "and the channel does not carry a signed rollback"
        )


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts: list[tuple[int, int | str]] = []
    for part in version.replace("-", ".").replace("+", ".").split("."):
        parts.append((0, int(part)) if part.isdigit() else (1, part))
    return tuple(parts)


def compare_versions(a: str, b: str) -> int:
    """-1, 0, 1 for dotted versions compared numerically where numeric."""
    ka, kb = _version_key(a), _version_key(b)
    return (ka > kb) - (ka < kb)

"""Sign ostree commits in ostree's own ed25519 format (detached metadata).

The signature covers the commit object's bytes (the ``.commit`` file, whose
sha256 is the commit's name) and is stored under ``ostree.sign.ed25519`` in
the commit's detached metadata (``.commitmeta``), as ``ostree sign`` does when
built with ed25519 support; Debian's ostree 2022.7 is not, so atoll writes it
(:mod:`atoll.wire.gvariant`; the node verifies with :mod:`atoll.wire.channel`).
Other detached metadata is kept; the metadata file is replaced atomically and
durably (:func:`atoll.durable.write_atomic`).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atoll.durable import write_atomic
from atoll.errors import AtollError
from atoll.wire.channel import SIGNATURE_KEY
from atoll.wire.gvariant import Variant, decode, encode


def _object(repo: Path, checksum: str, suffix: str) -> Path:
    return repo / "objects" / checksum[:2] / f"{checksum[2:]}.{suffix}"


def sign_commit(repo: Path, checksum: str, key: Ed25519PrivateKey) -> bool:
    """Add ``key``'s signature to ``checksum``; return False if it was already there."""
    commit_path = _object(repo, checksum, "commit")
    if not commit_path.exists():
        raise AtollError(f"{repo}: no commit object {checksum}")
    signature = key.sign(commit_path.read_bytes())
    meta_path = _object(repo, checksum, "commitmeta")
    metadata: dict[str, Variant] = {}
    if meta_path.exists():
        parsed = decode("a{sv}", meta_path.read_bytes())
        assert isinstance(parsed, dict)
        metadata = parsed
    existing = metadata.get(SIGNATURE_KEY)
    signatures: list[bytes] = []
    if existing is not None and existing.type == "aay":
        assert isinstance(existing.value, list)
        signatures = list(existing.value)
    if signature in signatures:
        return False
    metadata[SIGNATURE_KEY] = Variant("aay", [*signatures, signature])
    write_atomic(meta_path, encode("a{sv}", metadata))
    return True

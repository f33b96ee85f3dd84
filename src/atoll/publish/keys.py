"""Signing keys: an Ed25519 key pair per publisher, made with ``cryptography``.

``atoll keys init DIR`` writes ``atoll-ed25519.key`` (PKCS#8 PEM, mode 0600,
never leaves the build machine) and ``atoll-ed25519.pub`` (the raw 32-byte
public key in base64, ostree's format for ed25519 keys, which images carry in
``/usr/lib/atoll/trusted-keys.d/``; key ids and the key file format are
:mod:`atoll.wire.channel`'s). Both files are written atomically and durably,
and never over an existing one (:func:`atoll.durable.write_atomic`).
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atoll.durable import write_atomic
from atoll.errors import InputError
from atoll.wire.channel import key_id

PRIVATE_NAME = "atoll-ed25519.key"
PUBLIC_NAME = "atoll-ed25519.pub"


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def init_keys(directory: Path) -> tuple[Path, Path, str]:
    """Create a key pair in ``directory``; refuse to overwrite one."""
    private, public = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if private.exists() or public.exists():
        raise InputError(f"{directory}: already holds a key pair; not overwriting it")
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(private, pem, mode=0o600, exclusive=True)
    raw = public_bytes(key)
    write_atomic(public, base64.b64encode(raw).decode() + "\n", exclusive=True)
    return private, public, key_id(raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"--key {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise InputError(f"--key {path}: not a PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"--key {path}: not an Ed25519 key")
    return key

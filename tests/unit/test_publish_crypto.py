"""Node-side verification primitives: Ed25519, GVariant, signed channels."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atoll.errors import InputError
from atoll.publish.channels import ChannelUpdate, next_document
from atoll.publish.keys import public_bytes
from atoll.wire import ed25519
from atoll.wire.channel import (
    Channel,
    VerificationError,
    compare_versions,
    parse_public_key,
    verify_channel,
    verify_commit_bytes,
)
from atoll.wire.gvariant import Variant, decode, encode

# RFC 8032, section 7.1, tests 1 and 2.
VECTORS = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("public", "message", "signature"), VECTORS)
def test_rfc8032_vectors(public: str, message: str, signature: str) -> None:
    pk, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert ed25519.verify(pk, msg, sig)
    assert not ed25519.verify(pk, msg + b"x", sig)
    assert not ed25519.verify(pk, msg, sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not ed25519.verify(pk, msg, sig[:10])


def test_verifies_what_cryptography_signs() -> None:
    key = Ed25519PrivateKey.generate()
    message = b"atoll commit object"
    assert ed25519.verify(public_bytes(key), message, key.sign(message))
    other = Ed25519PrivateKey.generate()
    assert not ed25519.verify(public_bytes(other), message, key.sign(message))


def test_gvariant_detached_metadata_round_trip() -> None:
    signatures = [bytes(range(64)), bytes(range(64, 128))]
    data = encode("a{sv}", {"ostree.sign.ed25519": Variant("aay", signatures), "n": "x"})
    parsed = decode("a{sv}", data)
    assert parsed == {
        "n": Variant("s", "x"),
        "ostree.sign.ed25519": Variant("aay", signatures),
    }
    # One 64-byte signature: entry = key(20) + pad(4) + aay(64+1) + NUL + "aay" + offset.
    single = encode("a{sv}", {"ostree.sign.ed25519": Variant("aay", [bytes(64)])})
    assert len(single) == 95 and single[-1] == 94


def _signed(key: Ed25519PrivateKey, current: Channel | None, version: str, **kw: bool) -> bytes:
    update = ChannelUpdate("stable", "atoll/x86_64/minimal", version * 8, version, **kw)
    return next_document(current, update, key)


def test_channel_replay_downgrade_and_rollback() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = [parse_public_key(base64.b64encode(public_bytes(key)).decode(), "test")]
    first_doc = _signed(key, None, "1.0.0")
    first = verify_channel(first_doc, trusted, name="stable")
    second_doc = _signed(key, first, "1.1.0")
    second = verify_channel(second_doc, trusted, name="stable", accepted=first)
    assert (first.serial, second.serial) == (1, 2)
    assert [h["version"] for h in second.history] == ["1.1.0", "1.0.0"]
    with pytest.raises(VerificationError, match="replayed"):
        verify_channel(first_doc, trusted, name="stable", accepted=second)
    with pytest.raises(InputError, match="explicit rollback"):
        _signed(key, second, "1.0.0")
    back = verify_channel(
        _signed(key, second, "1.0.0", rollback=True), trusted, name="stable", accepted=second
    )
    assert back.rollback and back.serial == 3
    with pytest.raises(VerificationError, match="other"):
        verify_channel(second_doc, trusted, name="other")


def test_channel_refuses_unknown_keys_and_tampering() -> None:
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trusted = [parse_public_key(base64.b64encode(public_bytes(key)).decode(), "test")]
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        verify_channel(_signed(stranger, None, "1.0.0"), trusted, name="stable")
    document = _signed(key, None, "1.0.0").replace(b'"payload": "', b'"payload": "e')
    with pytest.raises(VerificationError):
        verify_channel(document, trusted, name="stable")
    with pytest.raises(VerificationError, match="not a signed channel"):
        verify_channel(b'{"payload": ', trusted, name="stable")


def test_commit_verification_reasons() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = [parse_public_key(base64.b64encode(public_bytes(key)).decode(), "test")]
    commit = b"commit object bytes"
    checksum = hashlib.sha256(commit).hexdigest()
    meta = encode("a{sv}", {"ostree.sign.ed25519": Variant("aay", [key.sign(commit)])})
    assert verify_commit_bytes(checksum, commit, meta, trusted).public == public_bytes(key)
    with pytest.raises(VerificationError, match="unsigned"):
        verify_commit_bytes(checksum, commit, None, trusted)
    with pytest.raises(VerificationError, match="does not match its checksum"):
        verify_commit_bytes(checksum, commit + b"!", meta, trusted)
    stranger = Ed25519PrivateKey.generate()
    other = encode("a{sv}", {"ostree.sign.ed25519": Variant("aay", [stranger.sign(commit)])})
    with pytest.raises(VerificationError, match="none by a trusted key"):
        verify_commit_bytes(checksum, commit, other, trusted)


def test_versions_compare_numerically() -> None:
    assert compare_versions("1.10.0", "1.9.0") == 1
    assert compare_versions("1.0.0", "1.0.0") == 0
    assert compare_versions("0.9", "1.0") == -1

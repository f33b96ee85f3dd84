"""The little of GVariant that ostree's signatures need, standard library only.

ostree keeps a commit's signatures in its *detached metadata*, a GVariant
dictionary ``a{sv}`` stored next to the commit object (``.commitmeta``); its
ed25519 engine uses the key ``ostree.sign.ed25519`` with a value of type
``aay`` (a list of 64-byte signatures over the commit object's bytes).
Writing exactly that format lets any ostree built with ed25519 support verify
atoll's commits; Debian's ostree 2022.7 is built without it, so atoll signs on
the build machine (:mod:`atoll.publish.sign`) and verifies on the node
itself, with this module and :mod:`atoll.wire.ed25519`.

Supported: ``s``, ``ay``, ``aay``, ``b``, ``t``, ``v`` and ``a{sv}`` in
GVariant's normal form (little-endian, framing offsets sized to the
container). Anything else in a dictionary is kept as raw bytes with its type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass


class GVariantError(ValueError):
    """Bytes that are not the GVariant we expected."""


@dataclass(frozen=True)
class Variant:
    """A value together with its GVariant type string."""

    type: str
    value: object


def _offset_size(body: int, count: int) -> int:
    for size in (1, 2, 4, 8):
        if body + count * size < 1 << (8 * size):
            return size
    raise GVariantError("container too large")


def _pack_offsets(offsets: list[int], size: int) -> bytes:
    return b"".join(o.to_bytes(size, "little") for o in offsets)


def _align(data: bytearray, alignment: int) -> None:
    while len(data) % alignment:
        data.append(0)


def encode(type_string: str, value: object) -> bytes:
    """Serialize ``value`` as ``type_string`` (the supported subset)."""
    encoder = _ENCODERS.get(type_string)
    if encoder is None:
        raise GVariantError(f"type {type_string!r} is not supported")
    return encoder(value)


def _encode_string(value: object) -> bytes:
    assert isinstance(value, str)
    return value.encode() + b"\0"


def _encode_uint64(value: object) -> bytes:
    assert isinstance(value, int)
    return struct.pack("<Q", value)


def _encode_bytes(value: object) -> bytes:
    assert isinstance(value, bytes | bytearray)
    return bytes(value)


def _encode_variant(value: object) -> bytes:
    assert isinstance(value, Variant)
    return encode(value.type, value.value) + b"\0" + value.type.encode()


def _encode_byte_strings(value: object) -> bytes:
    assert isinstance(value, list | tuple)
    return _variable_array([encode("ay", v) for v in value], 1)


def _encode_dictionary(value: object) -> bytes:
    assert isinstance(value, dict)
    return _variable_array([_dict_entry(k, v) for k, v in sorted(value.items())], 8)


_ENCODERS: dict[str, Callable[[object], bytes]] = {
    "s": _encode_string,
    "b": lambda value: b"\1" if value else b"\0",
    "t": _encode_uint64,
    "ay": _encode_bytes,
    "v": _encode_variant,
    "aay": _encode_byte_strings,
    "a{sv}": _encode_dictionary,
}


def _variable_array(elements: list[bytes], alignment: int) -> bytes:
    body = bytearray()
    ends = []
    for element in elements:
        _align(body, alignment)
        body += element
        ends.append(len(body))
    if not elements:
        return b""
    size = _offset_size(len(body), len(ends))
    return bytes(body) + _pack_offsets(ends, size)


def _dict_entry(key: str, value: object) -> bytes:
    variant = value if isinstance(value, Variant) else _guess(value)
    body = bytearray(encode("s", key))
    key_end = len(body)
    _align(body, 8)
    body += encode("v", variant)
    size = _offset_size(len(body), 1)
    return bytes(body) + _pack_offsets([key_end], size)


def _guess(value: object) -> Variant:
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, str):
        return Variant("s", value)
    if isinstance(value, bytes):
        return Variant("ay", value)
    if isinstance(value, list) and all(isinstance(v, bytes) for v in value):
        return Variant("aay", value)
    raise GVariantError(f"cannot choose a GVariant type for {type(value).__name__}")


def _read_offsets(data: bytes, count_hint: int | None = None) -> tuple[list[int], int]:
    """Framing offsets at the end of a variable-size array: (ends, body length)."""
    if not data:
        return [], 0
    size = 1
    for candidate in (1, 2, 4, 8):
        if len(data) < 1 << (8 * candidate):
            size = candidate
            break
    last = int.from_bytes(data[-size:], "little")
    if last > len(data) or (len(data) - last) % size:
        raise GVariantError("bad framing offsets")
    count = (len(data) - last) // size
    if count_hint is not None and count != count_hint:
        raise GVariantError("unexpected element count")
    table = data[last:]
    ends = [int.from_bytes(table[i * size : (i + 1) * size], "little") for i in range(count)]
    return ends, last


def decode(type_string: str, data: bytes) -> object:
    """Parse ``data`` as ``type_string`` (the supported subset; others stay raw bytes)."""
    decoder = _DECODERS.get(type_string)
    if decoder is None:
        return Variant(type_string, bytes(data))
    return decoder(data)


def _decode_string(data: bytes) -> str:
    if not data.endswith(b"\0"):
        raise GVariantError("string without its terminating NUL")
    return data[:-1].decode()


def _decode_uint64(data: bytes) -> int:
    if len(data) != 8:
        raise GVariantError("uint64 of the wrong size")
    return int(struct.unpack("<Q", data)[0])


def _decode_variant(data: bytes) -> Variant:
    zero = data.rfind(b"\0")
    if zero < 0:
        raise GVariantError("variant without a type")
    inner = data[zero + 1 :].decode()
    return Variant(inner, decode(inner, data[:zero]))


def _decode_dictionary(data: bytes) -> dict[str, Variant]:
    result: dict[str, Variant] = {}
    for entry in _elements(data, 8):
        key, value = _decode_entry(entry)
        result[key] = value
    return result


_DECODERS: dict[str, Callable[[bytes], object]] = {
    "s": _decode_string,
    "b": lambda data: data == b"\1",
    "t": _decode_uint64,
    "ay": bytes,
    "v": _decode_variant,
    "aay": lambda data: [bytes(part) for part in _elements(data, 1)],
    "a{sv}": _decode_dictionary,
}


def _elements(data: bytes, alignment: int) -> list[bytes]:
    ends, body_end = _read_offsets(data)
    parts = []
    start = 0
    for end in ends:
        if end > body_end or end < start:
            raise GVariantError("framing offset out of range")
        parts.append(data[start:end])
        start = end + (-end % alignment)
    return parts


def _decode_entry(data: bytes) -> tuple[str, Variant]:
    size = 1
    for candidate in (1, 2, 4, 8):
        if len(data) < 1 << (8 * candidate):
            size = candidate
            break
    key_end = int.from_bytes(data[-size:], "little")
    if key_end > len(data) - size:
        raise GVariantError("bad dictionary entry")
    key = decode("s", data[:key_end])
    value_start = key_end + (-key_end % 8)
    value = decode("v", data[value_start : len(data) - size])
    assert isinstance(key, str) and isinstance(value, Variant)
    return key, value

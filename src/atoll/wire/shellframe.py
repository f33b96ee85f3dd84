"""The frames of the ops shell: what ``atoll node shell`` and the agent send each other.

``POST /v1/shell`` with ``Connection: Upgrade`` and ``Upgrade: atoll-shell/1``
(:data:`PROTOCOL`) is answered ``101 Switching Protocols``; from then on the
same mutual-TLS connection carries frames both ways, because a byte stream
alone could not say "stdin closed", "the window changed" or "exited 3 because
the TTL ran out". A frame is a header (:data:`HEADER`: type, payload length;
big-endian) and at most :data:`MAX_FRAME` bytes of payload:

* ``DATA`` (both ways): terminal bytes;
* ``RESIZE`` (client to agent): :data:`WINSIZE` (rows, cols);
* ``EOF`` (client to agent): the client's stdin is closed (empty payload);
* ``EXIT`` (agent to client, the last frame): JSON :class:`ExitFrame`.

The client is :mod:`atoll.ops.shell`, the agent's side :mod:`atoll.agent.shell`
(which runs the session). Standard library only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum

PROTOCOL = "atoll-shell/1"
MAX_FRAME = 64 * 1024
HEADER = struct.Struct(">BI")  # frame type, payload length
WINSIZE = struct.Struct(">HH")  # rows, cols


class Frame(IntEnum):
    """Frame types: ``HEADER`` (type, length) then the payload."""

    DATA = 1  # both ways: terminal bytes
    RESIZE = 2  # client -> agent: WINSIZE (rows, cols)
    EOF = 3  # client -> agent: stdin is closed (empty payload)
    EXIT = 4  # agent -> client: JSON ExitFrame; the last frame


class End(StrEnum):
    """Why a session ended (the ``end`` of the EXIT frame and of the audit record)."""

    EXIT = "exit"  # the command exited
    TTL = "ttl"  # the TTL expired: killed
    DISCONNECT = "disconnect"  # the client went away: killed
    ERROR = "error"  # the relay failed (the message is in the audit record): killed


@dataclass(frozen=True)
class ExitFrame:
    """The payload of the last frame: ``{"id", "end", "exit_status"}``.

    ``end`` is an :class:`End` value (kept as text so a newer agent's reason
    still reads); ``exit_status`` is the command's exit code, negative when a
    signal killed it, null when it could not be reaped."""

    session: str
    end: str
    exit_status: int | None

    def to_json(self) -> bytes:
        return json.dumps(
            {"id": self.session, "end": self.end, "exit_status": self.exit_status}
        ).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> ExitFrame:
        """Parse an EXIT payload; ``ValueError`` names the field that is wrong."""
        try:
            body = json.loads(payload)
        except ValueError as e:
            raise ValueError(f"exit frame: not JSON ({e})") from e
        if not isinstance(body, dict):
            raise ValueError("exit frame: not a JSON object")
        status = body.get("exit_status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise ValueError(f"exit frame: exit_status {status!r} is not an integer or null")
        for key in ("id", "end"):
            if not isinstance(body.get(key), str):
                raise ValueError(f"exit frame: {key} {body.get(key)!r} is not a string")
        return cls(body["id"], body["end"], status)


def encode_frame(kind: Frame, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def encode_resize(rows: int, cols: int) -> bytes:
    """A RESIZE frame for a terminal of ``rows`` x ``cols``."""
    return encode_frame(Frame.RESIZE, WINSIZE.pack(rows, cols))


class FrameReader:
    """Accumulates bytes and yields complete frames (bounded sizes, unknown types refused)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Frame, bytes]]:
        self._buffer += data
        out: list[tuple[Frame, bytes]] = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes (at most {MAX_FRAME})")
            if kind not in Frame.__members__.values():
                raise ValueError(f"unknown frame type {kind}")
            if len(self._buffer) < HEADER.size + length:
                break
            payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            out.append((Frame(kind), payload))
        return out

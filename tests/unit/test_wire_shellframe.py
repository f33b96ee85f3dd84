"""The ops shell's frames (atoll.wire.shellframe): the codec and the EXIT frame both sides read."""

from __future__ import annotations

import pytest

from atoll.wire.shellframe import (
    WINSIZE,
    End,
    ExitFrame,
    Frame,
    FrameReader,
    encode_frame,
    encode_resize,
)


def test_frames_split_anywhere_come_out_whole() -> None:
    stream = encode_frame(Frame.DATA, b"hello") + encode_resize(40, 120) + encode_frame(Frame.EOF)
    reader = FrameReader()
    frames = [frame for i in range(len(stream)) for frame in reader.feed(stream[i : i + 1])]
    assert frames == [
        (Frame.DATA, b"hello"),
        (Frame.RESIZE, WINSIZE.pack(40, 120)),
        (Frame.EOF, b""),
    ]


def test_exit_frame_round_trip() -> None:
    frame = ExitFrame("20261206T101010Z-abc", End.TTL, -9)
    assert frame.to_json() == b'{"id": "20261206T101010Z-abc", "end": "ttl", "exit_status": -9}'
    assert ExitFrame.from_json(frame.to_json()) == frame
    assert (
        ExitFrame.from_json(b'{"id": "s", "end": "exit", "exit_status": null}').exit_status is None
    )


@pytest.mark.parametrize(
    ("payload", "names"),
    [
        (b"[1]", "not a JSON object"),
        (b"{", "not JSON"),
        (b'{"id": "s", "end": "exit", "exit_status": "3"}', "exit_status"),
        (b'{"id": "s", "end": "exit", "exit_status": true}', "exit_status"),
        (b'{"end": "exit", "exit_status": 0}', "id"),
        (b'{"id": "s", "exit_status": 0}', "end"),
    ],
)
def test_exit_frame_refusals_name_the_field(payload: bytes, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        ExitFrame.from_json(payload)

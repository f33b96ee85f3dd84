"""The pure parts of the agent's grant client: a watch's chunked stream cut into
events, and what a Node's grant asks of the update loop."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from typing import Any

import pytest

from atoll.agent.kubegrant import NO_POOL, ChunkedLines, desired_of
from atoll.wire.fleet import RebootPolicy
from atoll.wire.kubenode import Grant, NodeProtocolError

EVENTS = b'{"type":"ADDED"}\n{"type":"MODIFIED"}\n'


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "feeds",
    [
        [_chunked(EVENTS)],  # all at once
        [bytes([b]) for b in _chunked(EVENTS)],  # a byte at a time
        [_chunked(EVENTS[:7], EVENTS[7:30], EVENTS[30:])],  # events cut across chunks
        [_chunked(EVENTS).replace(b"\r\n", b";ext=1\r\n", 1)],  # a chunk extension
    ],
    ids=["whole", "bytewise", "split-events", "extension"],
)
def test_the_events_come_out_whole_however_the_bytes_arrive(feeds: list[bytes]) -> None:
    reader = ChunkedLines()
    lines = [line for data in feeds for line in reader.feed(data)]
    assert lines == [b'{"type":"ADDED"}', b'{"type":"MODIFIED"}']
    assert reader.ended


def test_a_stream_that_goes_on_is_not_ended_and_keeps_the_unfinished_event() -> None:
    reader = ChunkedLines()
    assert reader.feed(b'5\r\n{"a":\r\n') == []
    assert not reader.ended
    assert reader.feed(b"3\r\n1}\n\r\n") == [b'{"a":1}']


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"zz\r\n", "bad chunk size"),
        (b"-5\r\nabc", "bad chunk size"),  # int() would take a sign,
        (b"0x5\r\nabc", "bad chunk size"),  # a prefix
        (b"1_0\r\nabc", "bad chunk size"),  # or an underscore
        (b"f" * 16 + b"\r\n", "bad chunk size"),  # or a size no one sends
        (b"3\r\nabcXY", "not followed by CRLF"),
        (b"1" * 2000, "size line too long"),
        (_chunked(b"x" * 40), "longer than 32 bytes"),
    ],
)
def test_a_malformed_stream_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(http.client.HTTPException, match=match):
        ChunkedLines(limit=32).feed(data)


def _node(annotations: Mapping[str, str | None]) -> dict[str, Any]:
    """A Node with ``annotations`` as a merge patch leaves them (``None``: absent)."""
    notes = {k: v for k, v in annotations.items() if v is not None}
    return {"metadata": {"name": "n1", "annotations": notes}}


def test_without_a_grant_the_loop_stays_on_what_runs() -> None:
    desired = desired_of(_node({}), "1.0.0")
    assert (desired.version, desired.stage, desired.may_reboot, desired.pool) == (
        "1.0.0", False, False, None
    )  # fmt: skip
    assert desired.reason == NO_POOL and desired.etag


def test_a_grant_is_the_standalone_answer_with_an_etag_of_its_grant_state() -> None:
    grant = Grant("1.1.0", stage=True, may_reboot=False, pool="web", reason="waits for a slot")
    desired = desired_of(_node(grant.annotations()), "1.0.0")
    assert desired == grant.desired().tagged()
    # The reason is not part of the grant state: a new reason wakes no watch.
    other = Grant("1.1.0", stage=True, may_reboot=False, pool="web", reason="another")
    assert desired_of(_node(other.annotations()), "1.0.0").etag == desired.etag
    granted = Grant("1.1.0", stage=True, may_reboot=True, pool="web")
    assert desired_of(_node(granted.annotations()), "1.0.0").etag != desired.etag


@pytest.mark.parametrize(
    ("reboot", "policy"),
    [
        (None, RebootPolicy.FULL),  # an operator from before pools chose: the default
        ("auto", RebootPolicy.AUTO),
        ("full", RebootPolicy.FULL),
    ],
)
def test_the_pools_reboot_policy_reaches_the_loop_outside_the_etag(
    reboot: str | None, policy: RebootPolicy
) -> None:
    notes = {**Grant("1.1.0", False, True, "web").annotations(), "atoll.dev/reboot": reboot}
    desired = desired_of(_node(notes), "1.0.0")
    assert desired.reboot is policy
    auto = {**notes, "atoll.dev/reboot": "auto"}
    assert desired.etag == desired_of(_node(auto), "1.0.0").etag  # wakes no watch


def test_a_grant_that_breaks_the_protocol_names_the_node_and_key() -> None:
    notes = {**Grant("1.1.0", True, False, "web").annotations(), "atoll.dev/stage": "yes"}
    with pytest.raises(NodeProtocolError, match=r"node n1: annotation atoll\.dev/stage"):
        desired_of(_node(notes), "1.0.0")
    notes = {**Grant("1.1.0", True, False, "web").annotations(), "atoll.dev/reboot": "soft"}
    with pytest.raises(NodeProtocolError, match=r"node n1: annotation atoll\.dev/reboot"):
        desired_of(_node(notes), "1.0.0")

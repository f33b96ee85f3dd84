"""The operator's API client: when it retries, how long it waits (fake time, no network)."""

from __future__ import annotations

import asyncio
import json
import logging

import kopf
import pytest

from atoll.fleet.kube import (
    Answer,
    Backoff,
    KubeApi,
    KubeError,
    budget_refusal,
    parse_retry_after,
    retry_delay,
)

POLICY = Backoff(first=0.5, cap=30.0, attempts=4, jitter=0.25)


@pytest.mark.parametrize(
    ("status", "retry_after", "retry", "spread", "expected"),
    [
        (200, None, 0, 0.0, None),  # not an error
        (404, None, 0, 0.0, None),  # a client error is an answer
        (409, "5", 0, 0.0, None),
        (429, None, 0, 0.0, 0.5),  # exponential from `first`
        (429, None, 1, 0.0, 1.0),
        (429, None, 3, 0.0, 4.0),
        (429, None, 4, 0.0, None),  # the retries are spent
        (429, "1", 0, 0.0, 1.0),  # the server's Retry-After wins over a shorter backoff
        (429, "1", 2, 0.0, 2.0),  # ... and a longer backoff over the Retry-After
        (429, "1", 0, 0.5, 1.125),  # jitter stretches the wait, never shortens it
        (429, "1", 0, 0.999, 1.24975),
        (429, "120", 0, 0.0, 30.0),  # capped, even against the server
        (429, "x", 0, 0.0, 0.5),  # an unreadable Retry-After is ignored
        (500, None, 0, 0.0, 0.5),
        (502, None, 1, 0.0, 1.0),
        (503, "2", 0, 0.0, 2.0),
        (504, None, 0, 0.0, 0.5),
        (501, None, 0, 0.0, None),  # Not Implemented: a retry would not help
    ],
)
def test_retry_delay(
    status: int, retry_after: str | None, retry: int, spread: float, expected: float | None
) -> None:
    assert retry_delay(status, retry_after, retry, POLICY, spread) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("1", 1.0), (" 3 ", 3.0), ("0.5", 0.5), ("-1", None), ("inf", None),
     ("nan", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None)],
)  # fmt: skip
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


BUDGET = json.dumps(
    {
        "kind": "Status",
        "code": 429,
        "reason": "TooManyRequests",
        "message": "Cannot evict pod as it would violate the pod's disruption budget.",
        "details": {"causes": [{"reason": "DisruptionBudget", "message": "needs 2 healthy"}]},
    }
)


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (BUDGET, True),
        ("Too many requests, please try again later.\n", False),  # the in-flight limit
        (json.dumps({"kind": "Status", "code": 429, "details": {"retryAfterSeconds": 1}}), False),
        ("[]", False),
        ("", False),
    ],
)
def test_budget_refusal(body: str, refused: bool) -> None:
    assert budget_refusal(body) is refused


class ScriptedApi(KubeApi):
    """The client with its HTTP replaced by a script of answers; sleeps recorded."""

    def __init__(self, answers: list[Answer], policy: Backoff = POLICY) -> None:
        self.slept: list[float] = []

        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)

        info = kopf.ConnectionInfo(server="https://127.0.0.1:1")
        super().__init__(info, backoff=policy, sleep=sleep, spread=lambda: 0.0)
        self.answers = answers
        self.sent: list[str] = []

    async def _send(self, method: str, path: str, body: object, content_type: str | None) -> Answer:
        self.sent.append(f"{method} {path}")
        return self.answers.pop(0)


def _run(api: ScriptedApi, call: str, *args: str) -> object:
    async def go() -> object:
        try:
            return await getattr(api, call)(*args)
        finally:
            await api.close()

    return asyncio.run(go())


def test_the_client_waits_as_told_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    nodes = json.dumps({"items": [{"metadata": {"name": "a"}}]})
    api = ScriptedApi(
        [
            Answer(429, "1", "Too many requests"),
            Answer(503, None, "etcd leader changed"),
            Answer(429, None, "Too many requests"),
            Answer(200, None, nodes),
        ]
    )
    with caplog.at_level(logging.WARNING, logger="atoll.fleet.kube"):
        assert _run(api, "list_nodes") == [{"metadata": {"name": "a"}}]
    assert api.slept == [1.0, 1.0, 2.0]
    assert api.retried == {429: 2, 503: 1}
    assert len(api.sent) == 4
    assert "GET /api/v1/nodes: HTTP 429, retry 1 of 4 in 1.00 s (Retry-After: 1)" in caplog.text


def test_the_client_gives_up_after_its_attempts() -> None:
    api = ScriptedApi([Answer(429, "1", "busy")] * 3, Backoff(first=0.5, attempts=2))
    with pytest.raises(KubeError, match=r"GET /api/v1/nodes: HTTP 429: busy") as caught:
        _run(api, "list_nodes")
    assert caught.value.status == 429
    assert api.slept == [1.0, 1.0]


def test_an_eviction_refused_by_a_budget_is_an_answer_not_a_retry() -> None:
    api = ScriptedApi([Answer(429, None, BUDGET)])
    assert _run(api, "evict", "apps", "web-1") == 429
    assert api.slept == []
    assert api.retried == {}


def test_an_eviction_under_overload_is_retried() -> None:
    api = ScriptedApi([Answer(429, "1", "Too many requests"), Answer(201, None, "{}")])
    assert _run(api, "evict", "apps", "web-1") == 201
    assert api.slept == [1.0]


def test_a_client_error_is_not_retried() -> None:
    api = ScriptedApi([Answer(403, None, "forbidden")])
    with pytest.raises(KubeError, match="HTTP 403"):
        _run(api, "list_nodes")
    assert api.slept == []

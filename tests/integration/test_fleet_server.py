"""The controller's HTTP API in-process: overload answers, validation, operator verbs, CLI."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atoll.cli import main
from atoll.fleet.server import FleetService, _Handler
from atoll.fleet.sqlite_store import SqliteStore
from atoll.wire.fleet import Backoff, FleetError, request_json

POOL_TOML = """
[pool]
name = "web"
version = "v2"
previous_version = "v1"
[strategy]
max_unavailable = 1
canary = 1
reboot = "full"
"""
RESTART = {
    "kind": "full",
    "reason": "policy full",
    "version": "v2",
    "at": "2026-12-07T07:00:00+00:00",
}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[FleetService]:
    store = SqliteStore(tmp_path / "fleet.db")
    svc = FleetService(store, "127.0.0.1", 0, max_in_flight=1, tick=0.1)
    svc.start()
    yield svc
    svc.stop()
    store.close()


def _url(svc: FleetService) -> str:
    return f"http://127.0.0.1:{svc.address[1]}"


def test_overload_answers_429_with_retry_after(service: FleetService) -> None:
    assert service.httpd.in_flight.acquire(blocking=False)  # occupy the only slot
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(_url(service) + "/v1/nodes", timeout=5)  # noqa: S310
        assert info.value.code == 429
        assert info.value.headers["Retry-After"] == "1"
        info.value.close()
    finally:
        service.httpd.in_flight.release()
    assert service.httpd.rejected == 1
    assert request_json("GET", _url(service) + "/v1/nodes") == []


def test_bad_requests_name_their_source(service: FleetService) -> None:
    url = _url(service)
    quick = Backoff(attempts=1)
    with pytest.raises(FleetError, match=r"400: PUT /v1/pools/web: unknown key strategy\.speed"):
        request_json(
            "PUT",
            url + "/v1/pools/web",
            {"pool": {"name": "web", "version": "v2"}, "strategy": {"speed": 1}},
            backoff=quick,
        )
    with pytest.raises(FleetError, match="404: node 'ghost' is not registered"):
        request_json("GET", url + "/v1/nodes/ghost/desired", backoff=quick)
    request_json("POST", url + "/v1/nodes/register", {"name": "n1", "version": "v1"})
    with pytest.raises(FleetError, match="400: /v1/nodes/n1/report: failed must be true or false"):
        request_json(
            "POST", url + "/v1/nodes/n1/report", {"version": "v1", "failed": "no"}, backoff=quick
        )
    with pytest.raises(FleetError, match="bad name"):
        request_json(
            "POST", url + "/v1/nodes/register", {"name": "../x", "version": "v1"}, backoff=quick
        )
    # A node cannot pass its failure off as the controller's reboot timeout.
    claim = {"step": "reboot", "version": "v2", "reason": "late", "by": "controller"}
    with pytest.raises(FleetError, match=r"400: /v1/nodes/n1/report: failure\.by must be 'node'"):
        request_json(
            "POST", url + "/v1/nodes/n1/report", {"version": "v1", "failure": claim}, backoff=quick
        )
    [n1] = request_json("GET", url + "/v1/nodes")
    assert "failure" not in n1
    with pytest.raises(FleetError, match=r"400: PUT /v1/pools/web: pool\.version: expected print"):
        request_json(
            "PUT", url + "/v1/pools/web", {"pool": {"name": "web", "version": "v2\x1b[2J"}}
        )
    with pytest.raises(FleetError, match=r"400: PUT /v1/pools/web: strategy\.reboot: expected one"):
        request_json(
            "PUT",
            url + "/v1/pools/web",
            {"pool": {"name": "web", "version": "v2"}, "strategy": {"reboot": "soft"}},
            backoff=quick,
        )
    warm = {**RESTART, "kind": "warm"}
    with pytest.raises(FleetError, match=r"400: /v1/nodes/n1/report: restart\.kind must be one"):
        request_json(
            "POST", url + "/v1/nodes/n1/report", {"version": "v1", "restart": warm}, backoff=quick
        )


def test_cli_apply_canary_resume_and_rollback(
    service: FleetService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _url(service)
    pool = tmp_path / "pool.toml"
    pool.write_text(POOL_TOML)
    assert main(["fleet", "apply", str(pool), "--server", url]) == 0
    for name in ("a", "b"):
        request_json("POST", url + "/v1/nodes/register", {"name": name, "version": "v1"})
    first = request_json("POST", url + "/v1/nodes/a/report", {"version": "v1", "staged": None})
    assert first["stage"] is True and first["version"] == "v2"
    assert first["reboot"] == "full"  # the pool's policy, in every answer
    b = request_json("POST", url + "/v1/nodes/b/report", {"version": "v1", "staged": None})
    assert b["stage"] is False and "canary" in b["reason"]
    granted = request_json("POST", url + "/v1/nodes/a/report", {"version": "v1", "staged": "v2"})
    assert (granted["may_reboot"], granted["reboot"]) == (True, "full")
    back = {"version": "v2", "staged": None, "restart": RESTART}  # the restart it used
    done = request_json("POST", url + "/v1/nodes/a/report", back)
    assert done["may_reboot"] is False
    capsys.readouterr()
    assert main(["fleet", "status", "web", "--server", url]) == 0
    out = capsys.readouterr().out
    assert "canary" in out
    shown = "last restart: full into v2 at 2026-12-07T07:00:00+00:00 (policy full)"
    assert out.count(shown) == 1, out  # node a's; b has not restarted
    assert main(["fleet", "nodes", "--server", url]) == 0
    assert capsys.readouterr().out.count(shown) == 1
    [a_record] = [n for n in request_json("GET", url + "/v1/nodes") if n["name"] == "a"]
    assert a_record["restart"] == RESTART
    assert main(["fleet", "resume", "web", "--server", url]) == 0
    b = request_json("POST", url + "/v1/nodes/b/report", {"version": "v1", "staged": None})
    assert b["stage"] is True
    assert main(["fleet", "rollback", "web", "--server", url]) == 0
    a = request_json("GET", url + "/v1/nodes/a/desired")
    assert a["version"] == "v1"
    kinds = [(e["kind"], e["node"]) for e in request_json("GET", url + "/v1/events")]
    # The controller's tick may plan (stage a) between the two registrations.
    assert kinds[0] == ("apply", None)
    registered = [k for k in kinds if k[0] == "register"]
    assert registered == [("register", "a"), ("register", "b")]
    assert kinds.index(("register", "a")) < kinds.index(("stage", "a"))
    assert ("reboot", "a") in kinds and ("resume", None) in kinds and ("rollback", None) in kinds
    capsys.readouterr()
    assert main(["fleet", "nodes", "--server", url, "--selector", "zone=x"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_bad_input_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = tmp_path / "pool.toml"
    pool.write_text('[pool]\nname = "web"\nversion = "v2"\n[strategy]\npartition = "x%"\n')
    assert main(["fleet", "apply", str(pool), "--server", "http://127.0.0.1:9"]) == 2
    assert f"{pool}: strategy.partition" in capsys.readouterr().err
    assert main(["fleet", "serve", "--store", "sqlite:///x.db", "--listen", "0.0.0.0:1"]) == 2
    assert main(["fleet", "serve", "--store", "redis://h:1", "--listen", "127.0.0.1:0"]) == 2


def test_a_clients_next_request_never_meets_the_slot_of_its_last(
    service: FleetService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one slot (``--max-in-flight 1``), a client that sends its next request the
    moment it has read an answer is served, even while the thread that wrote the
    answer has not ended: the slot bounds the work, not the write."""
    send = _Handler._send

    def slow_send(self: _Handler, *args: Any, **kwargs: Any) -> None:
        send(self, *args, **kwargs)  # the client has its answer ...
        time.sleep(0.3)  # ... while this thread has not finished yet

    monkeypatch.setattr(_Handler, "_send", slow_send)
    quick = Backoff(attempts=1)
    url = _url(service)
    for _ in range(3):
        assert request_json("GET", url + "/v1/nodes", backoff=quick) == []
    assert service.httpd.rejected == 0

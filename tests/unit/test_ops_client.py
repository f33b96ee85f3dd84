"""``atoll node``: argument parsing and the client's input checks (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.cli import build_parser
from atoll.errors import InputError
from atoll.ops.cli import parse_assignment
from atoll.ops.client import NodeClient


def test_assignment_values_are_json_when_they_parse() -> None:
    assert parse_assignment('network.ntp.servers=["a","b"]') == ("network.ntp.servers", ["a", "b"])
    assert parse_assignment("hostname=node-1") == ("hostname", "node-1")
    assert parse_assignment("kernel.sysctls={}") == ("kernel.sysctls", {})
    assert parse_assignment("x=a=b") == ("x", "a=b")


@pytest.mark.parametrize("bad", ["hostname", "=value", ""])
def test_assignment_without_key_is_refused(bad: str) -> None:
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_assignment(bad)


def test_endpoint_must_be_https(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--endpoint"):
        NodeClient("http://127.0.0.1:1", tmp_path / "ca.crt", None, None)


def test_missing_ca_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"ca\.crt"):
        NodeClient("https://127.0.0.1:1", tmp_path / "ca.crt", None, None)


def test_node_verbs_parse() -> None:
    parser = build_parser()
    common = ["node", "--endpoint", "https://127.0.0.1:9", "--ca", "ca.crt"]
    args = parser.parse_args([*common, "settings", "set", "hostname=a", "updates.channel=beta"])
    assert args.node_verb == "settings" and args.assignments == [
        "hostname=a",
        "updates.channel=beta",
    ]
    args = parser.parse_args([*common, "upgrade", "--to", "abc", "--reboot"])
    assert (args.to, args.reboot) == ("abc", True)
    args = parser.parse_args([*common, "audit", "--verify"])
    assert args.verify

"""``etcd://`` store URLs become the client's endpoint list; bad ones name the URL."""

from __future__ import annotations

import pytest

from atoll.fleet.etcd import EtcdError, parse_endpoints


def test_parse_endpoints() -> None:
    assert parse_endpoints("etcd://127.0.0.1:2379,127.0.0.1:2380") == [
        "http://127.0.0.1:2379",
        "http://127.0.0.1:2380",
    ]


@pytest.mark.parametrize("url", ["etcd://", "sqlite:///x.db", "etcd://,"])
def test_parse_endpoints_rejects(url: str) -> None:
    with pytest.raises(EtcdError, match="expected etcd://host:port"):
        parse_endpoints(url)

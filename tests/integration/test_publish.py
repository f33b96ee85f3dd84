"""Signed update channels end to end: real ostree, a real HTTP server, a node-side repo."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from atoll.agent.fetch import check_channel, pull_verified
from atoll.errors import InputError
from atoll.process import run
from atoll.progress import PlainReporter
from atoll.publish import publish as publish_module
from atoll.publish.channels import channel_path
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import promote, prune, publish, rollback, served_repo
from atoll.publish.serve import UpdateServer, serve_in_thread, url_of
from atoll.tools import ostree
from atoll.wire.channel import TrustedKey, VerificationError, load_trusted_keys

REF = "atoll/x86_64/test"


def _commit(repo: Path, tree: Path, version: str) -> str:
    return ostree.commit(
        repo, tree, branch=REF, subject=version, metadata={"version": version}, timestamp=0
    )


@dataclass
class World:
    source: Path
    updates: Path
    keys: Path
    commits: dict[str, str]
    server: UpdateServer
    url: str


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    source = tmp_path / "build"
    ostree.init_repo(source)
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    commits = {}
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        # A few files change per version; most stay (what a delta exploits).
        # Incompressible, the same in every version: a full pull carries it, a delta not
        # (compressible filler shrank to a few KiB, within a delta's own overhead).
        filler = random.Random(0).randbytes(256 * 1024)  # noqa: S311 - test data, not a secret
        (tree / "usr/lib/big.bin").write_bytes(filler)
        (tree / "usr/lib/version").write_text(version)
        (tree / f"usr/lib/only-{version}").write_bytes(version.encode() * 5000)
        commits[version] = _commit(source, tree, version)
    keys = tmp_path / "keys"
    init_keys(keys)
    updates = tmp_path / "updates"
    updates.mkdir()
    server = serve_in_thread(updates)
    try:
        yield World(source, updates, keys, commits, server, url_of(server))
    finally:
        server.shutdown()
        server.server_close()


def _publish(world: World, version: str, channel: str = "stable") -> None:
    key = load_private_key(world.keys / "atoll-ed25519.key")
    publish(world.source, world.commits[version], world.updates, channel, key, PlainReporter())


def _node(tmp_path: Path, world: World) -> tuple[Path, list[TrustedKey]]:
    repo = tmp_path / "node-repo"
    ostree.init_repo(repo, mode="bare-user")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "atoll.pub").write_text((world.keys / "atoll-ed25519.pub").read_text())
    return repo, load_trusted_keys((trusted,))


def test_node_follows_a_channel_with_deltas(world: World, tmp_path: Path) -> None:
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    repo, keys = _node(tmp_path, world)
    state = tmp_path / "state.json"
    channel = check_channel(world.url, "stable", keys, state)
    assert (channel.version, channel.serial) == ("1.1.0", 2)
    assert channel.commit == world.commits["1.1.0"]
    pull_verified(repo, world.url, channel.commit, keys)
    deltas = run(
        ["ostree", "static-delta", "list", f"--repo={served_repo(world.updates)}"]
    ).stdout.decode()
    assert f"{world.commits['1.0.0']}-{world.commits['1.1.0']}" in deltas
    # Plain ostree clients see the channel as a ref too.
    assert ostree.rev_parse(served_repo(world.updates), "channels/stable") == channel.commit


def test_delta_download_is_smaller_than_a_full_pull(world: World, tmp_path: Path) -> None:
    _publish(world, "1.0.0")
    repo, keys = _node(tmp_path, world)
    pull_verified(repo, world.url, world.commits["1.0.0"], keys)
    _publish(world, "1.1.0")
    before = world.server.counters.bytes_sent
    pull_verified(repo, world.url, world.commits["1.1.0"], keys)
    delta_bytes = world.server.counters.bytes_sent - before
    (tmp_path / "fresh").mkdir()
    fresh, _ = _node(tmp_path / "fresh", world)
    before = world.server.counters.bytes_sent
    pull_verified(fresh, world.url, world.commits["1.1.0"], keys)
    full_bytes = world.server.counters.bytes_sent - before
    assert delta_bytes < full_bytes / 2


def test_unsigned_commit_is_refused_and_removed(world: World, tmp_path: Path) -> None:
    _publish(world, "1.0.0")
    commit = world.commits["1.0.0"]
    meta = served_repo(world.updates) / "objects" / commit[:2] / f"{commit[2:]}.commitmeta"
    meta.unlink()
    repo, keys = _node(tmp_path, world)
    with pytest.raises(VerificationError, match="unsigned"):
        pull_verified(repo, world.url, commit, keys)
    assert not (repo / "objects" / commit[:2] / f"{commit[2:]}.commit").exists()


def test_wrong_key_refuses_channel_and_commit(world: World, tmp_path: Path) -> None:
    _publish(world, "1.0.0")
    init_keys(tmp_path / "other")
    trusted = tmp_path / "trusted-other"
    trusted.mkdir()
    (trusted / "other.pub").write_text((tmp_path / "other/atoll-ed25519.pub").read_text())
    keys = load_trusted_keys((trusted,))
    state = tmp_path / "state.json"
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        check_channel(world.url, "stable", keys, state)
    assert not state.exists()
    repo = tmp_path / "node"
    ostree.init_repo(repo, mode="bare-user")
    with pytest.raises(VerificationError, match="none by a trusted key"):
        pull_verified(repo, world.url, world.commits["1.0.0"], keys)


def test_tampered_or_truncated_object_is_refused(world: World, tmp_path: Path) -> None:
    _publish(world, "1.0.0")
    repo, keys = _node(tmp_path, world)
    pull_verified(repo, world.url, world.commits["1.0.0"], keys)
    _publish(world, "1.1.0")
    # Corrupt every content object only 1.1.0 has, and drop the delta: a plain object pull.
    served = served_repo(world.updates)
    ostree.delete_static_delta(served, f"{world.commits['1.0.0']}-{world.commits['1.1.0']}")
    listing = ostree.list_tree(served, world.commits["1.1.0"], "/usr/lib/only-1.1.0")
    target = listing[0].checksum
    obj = served / "objects" / target[:2] / f"{target[2:]}.filez"
    data = obj.read_bytes()
    obj.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(VerificationError, match="pull of"):
        pull_verified(repo, world.url, world.commits["1.1.0"], keys)
    obj.write_bytes(data[:-4] + b"XXXX")  # tampered
    with pytest.raises(VerificationError, match="pull of"):
        pull_verified(repo, world.url, world.commits["1.1.0"], keys)
    # The node still has its current version, complete.
    run(["ostree", f"--repo={repo}", "fsck", "--quiet"])


def test_replayed_channel_metadata_is_refused(world: World, tmp_path: Path) -> None:
    _publish(world, "1.0.0")
    old = channel_path(world.updates, "stable").read_bytes()
    _publish(world, "1.1.0")
    _, keys = _node(tmp_path, world)
    state = tmp_path / "state.json"
    assert check_channel(world.url, "stable", keys, state).version == "1.1.0"
    channel_path(world.updates, "stable").write_bytes(old)  # an attacker's replay
    with pytest.raises(VerificationError, match="replayed"):
        check_channel(world.url, "stable", keys, state)
    assert json.loads(state.read_text())["stable"]["version"] == "1.1.0"
    channel_path(world.updates, "stable").write_bytes(old[: len(old) // 2])  # truncated
    with pytest.raises(VerificationError, match="not a signed channel"):
        check_channel(world.url, "stable", keys, state)


def test_interrupted_publish_leaves_the_channel_unchanged(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish(world, "1.0.0")
    before = channel_path(world.updates, "stable").read_bytes()

    def interrupted(*_args: object, **_kwargs: object) -> list[str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(publish_module, "_deltas", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _publish(world, "1.1.0")
    assert channel_path(world.updates, "stable").read_bytes() == before
    assert ostree.rev_parse(served_repo(world.updates), "channels/stable") == world.commits["1.0.0"]


def test_downgrade_needs_a_signed_rollback_and_promote_moves_channels(world: World) -> None:
    key = load_private_key(world.keys / "atoll-ed25519.key")
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    with pytest.raises(InputError, match="explicit rollback"):
        _publish(world, "1.0.0")
    back = rollback(world.updates, "stable", key, PlainReporter())
    assert (back.version, back.serial) == ("1.0.0", 3)
    _publish(world, "1.2.0", channel="beta")
    moved = promote(world.updates, "beta", "stable", key, PlainReporter())
    assert (moved.channel, moved.version) == ("stable", "1.2.0")


def test_prune_keeps_what_channels_and_deltas_need(world: World) -> None:
    key = load_private_key(world.keys / "atoll-ed25519.key")
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        _publish(world, version)
    _publish(world, "1.1.0", channel="old")
    served = served_repo(world.updates)
    prune(world.updates, 2, key, PlainReporter())
    present = {v for v, c in world.commits.items() if ostree.has_commit(served, c)}
    assert present == {"1.1.0", "1.2.0", "1.3.0"}  # 1.1.0 kept by channel "old"
    deltas = run(["ostree", "static-delta", "list", f"--repo={served}"]).stdout.decode()
    assert world.commits["1.0.0"] not in deltas
    run(["ostree", f"--repo={served}", "fsck", "--quiet"])


def test_server_resumes_with_ranges(world: World) -> None:
    _publish(world, "1.0.0")
    url = f"{world.url}/channels/stable.json"
    whole = urllib.request.urlopen(url).read()  # noqa: S310 - loopback test server
    request = urllib.request.Request(url, headers={"Range": "bytes=10-"})  # noqa: S310
    with urllib.request.urlopen(request) as response:  # noqa: S310
        assert response.status == 206
        assert response.read() == whole[10:]
    outside = urllib.request.Request(f"{world.url}/../../etc/passwd")  # noqa: S310
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(outside)  # noqa: S310

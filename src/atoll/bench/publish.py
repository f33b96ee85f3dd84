"""Publish benchmark: delta vs full download, and 200 concurrent node pulls.

Measured in one run on loopback:

* a security update: the default image composed from Debian's point release
  alone (v0) and with the suite's -security and -updates (v1, the default): the
  packages fixed since the point release differ, the kernel among them. A
  node on v0 pulls v1 (the static delta) and a fresh node pulls v1 in full,
  through :func:`pull_verified` (ostree's pull, then the commit's signature
  checked with :mod:`atoll.wire.channel`, as the node does) against ``atoll serve``;
  the server counts the bytes each sends;
* a feature change: v2 (``minimal-v2.toml``) adds a few packages; same
  measurement;
* 200 simulated nodes at once fetch what a delta upgrade fetches (the
  channel document, the commit, the delta's superblock and parts) from the
  same server, each on its own connection; errors are counted.

Target (issue "signed update channels"): the delta is at most 10% of a full
pull, and 200 concurrent pulls complete without errors.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from atoll.bench.compose import largest_parts
from atoll.compose.oci import write_busybox_archive
from atoll.compose.pipeline import ComposeResult, compose
from atoll.progress import Reporter
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish, pull_verified, served_repo
from atoll.publish.serve import UpdateServer, serve_in_thread, url_of
from atoll.tools import ostree
from atoll.wire.channel import TrustedKey, load_trusted_keys

CHECKOUT = Path(__file__).resolve().parents[3]
CONCURRENT = 200


def _fetch_all(urls: list[str]) -> int:
    total = 0
    for url in urls:
        with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - loopback
            total += len(response.read())
    return total


def _changed_packages(old: dict[str, object], new: dict[str, object]) -> list[str]:
    def versions(sbom: dict[str, object]) -> dict[str, str]:
        packages = sbom["packages"]
        assert isinstance(packages, list)
        return {p["name"]: p["version"] for p in packages if p["state"] == "installed"}

    a, b = versions(old), versions(new)
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def _changed_paths(repo: Path, old: str, new: str) -> dict[str, float]:
    """MB of the files added or modified from ``old`` to ``new``, by part of the tree."""
    changed = {c.path for c in ostree.diff(repo, old, new) if c.kind in {"A", "M"}}
    entries = ostree.list_tree(repo, new)
    return largest_parts((e for e in entries if e.path in changed), depth=4, count=8)


@dataclass(frozen=True)
class _Versions:
    """The composed builds: v0 (point release), v1 (with security updates), v2 (a feature)."""

    v0: ComposeResult
    v1: ComposeResult
    v2: ComposeResult


def _compose_versions(workdir: Path, reporter: Reporter) -> _Versions:
    write_busybox_archive(
        CHECKOUT / "build/images/busybox.oci.tar", "docker.io/library/busybox:atoll"
    )
    build = workdir / "build-repo"
    # The security update: the default image from Debian's point release
    # alone, then with the suite's -security and -updates (the packages fixed
    # since the point release, the kernel among them).
    point_release = workdir / "point-release.toml"
    point_release.write_text(
        f'extends = "{CHECKOUT / "examples/minimal.toml"}"\n'
        '[image]\nname = "minimal"\nversion = "0.9.0"\n'
        "[distribution]\nupdates = false\n"
    )
    v0 = compose(point_release, build, reporter)
    v1 = compose(CHECKOUT / "examples/minimal.toml", build, reporter)
    # And a small feature change: v2 adds a few packages.
    v2 = compose(CHECKOUT / "examples/minimal-v2.toml", build, reporter)
    return _Versions(v0, v1, v2)


@dataclass(frozen=True)
class _Published:
    updates: Path
    keys: list[TrustedKey]  # what a node trusts
    security_publish_s: float  # v1 over v0, with its delta
    publish_s: float  # v2 over v1, with its delta


def _publish_versions(workdir: Path, versions: _Versions, reporter: Reporter) -> _Published:
    """Publish v0, v1, v2 to ``stable`` in turn, timing the last two."""
    build = workdir / "build-repo"
    init_keys(workdir / "keys")
    key = load_private_key(workdir / "keys/atoll-ed25519.key")
    updates = workdir / "updates"
    publish(build, versions.v0.commit, updates, "stable", key, reporter)
    started = time.monotonic()
    publish(build, versions.v1.commit, updates, "stable", key, reporter)
    security_publish_s = time.monotonic() - started
    started = time.monotonic()
    publish(build, versions.v2.commit, updates, "stable", key, reporter)
    publish_s = time.monotonic() - started
    trusted = workdir / "trusted"
    trusted.mkdir()
    shutil.copy(workdir / "keys/atoll-ed25519.pub", trusted / "atoll.pub")
    return _Published(updates, load_trusted_keys((trusted,)), security_publish_s, publish_s)


def _measured_pull(
    server: UpdateServer, repo: Path, commit: str, keys: list[TrustedKey]
) -> tuple[int, float]:
    """Bytes the server sent and seconds taken for one verified pull."""
    before = server.counters.bytes_sent
    started = time.monotonic()
    pull_verified(repo, url_of(server), commit, keys)
    return server.counters.bytes_sent - before, time.monotonic() - started


def _pulls(
    workdir: Path, server: UpdateServer, versions: _Versions, keys: list[TrustedKey]
) -> dict[str, float]:
    """A node on v0 pulls v1 (security delta) then v2 (feature delta); fresh nodes pull
    v2 and v1 in full."""
    node = workdir / "node-v1"
    ostree.init_repo(node, mode="bare-user")
    pull_verified(node, url_of(server), versions.v0.commit, keys)
    security_bytes, _ = _measured_pull(server, node, versions.v1.commit, keys)
    delta_bytes, delta_s = _measured_pull(server, node, versions.v2.commit, keys)
    fresh = workdir / "node-fresh"
    ostree.init_repo(fresh, mode="bare-user")
    full_bytes, full_s = _measured_pull(server, fresh, versions.v2.commit, keys)
    fresh_v1 = workdir / "node-fresh-v1"
    ostree.init_repo(fresh_v1, mode="bare-user")
    full_v1_bytes, _ = _measured_pull(server, fresh_v1, versions.v1.commit, keys)
    return {
        "security": security_bytes,
        "delta": delta_bytes,
        "delta_s": delta_s,
        "full": full_bytes,
        "full_s": full_s,
        "full_v1": full_v1_bytes,
    }


def _concurrent_pulls(
    server: UpdateServer, updates: Path, versions: _Versions
) -> tuple[int, int, float]:
    """``CONCURRENT`` nodes fetch what a delta upgrade fetches at once: (failures, server
    errors, wall seconds)."""
    v1, v2 = versions.v1.commit, versions.v2.commit
    repo = served_repo(updates)
    delta_dir = repo / "deltas" / v1[:2] / (v1[2:] + "-" + v2)
    files = sorted(p for p in delta_dir.rglob("*") if p.is_file())
    paths = ["channels/stable.json", *(f"repo/{p.relative_to(repo)}" for p in files)]
    paths.append(f"repo/objects/{v2[:2]}/{v2[2:]}.commit")
    urls = [f"{url_of(server)}/{p}" for p in paths]
    errors_before = server.counters.errors
    started = time.monotonic()
    failures = 0
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        futures = [pool.submit(_fetch_all, urls) for _ in range(CONCURRENT)]
        for future in futures:
            try:
                future.result(timeout=300)
            except Exception:  # every failure counts, whatever its kind
                failures += 1
    return failures, server.counters.errors - errors_before, time.monotonic() - started


def run_benchmark(workdir: Path, reporter: Reporter) -> dict[str, object]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    versions = _compose_versions(workdir, reporter)
    changed = _changed_packages(versions.v0.sbom, versions.v1.sbom)
    changed_paths = _changed_paths(workdir / "build-repo", versions.v0.commit, versions.v1.commit)
    published = _publish_versions(workdir, versions, reporter)
    server = serve_in_thread(published.updates)
    try:
        pulled = _pulls(workdir, server, versions, published.keys)
        failures, server_errors, concurrent_s = _concurrent_pulls(
            server, published.updates, versions
        )
    finally:
        server.shutdown()
        server.server_close()

    ratio = pulled["delta"] / pulled["full"]
    security_ratio = pulled["security"] / pulled["full_v1"]
    return {
        "figures": {
            "image size (MB, uncompressed tree)": round(versions.v2.size / 1e6, 1),
            "security update: packages changed": len(changed),
            "security update: changed packages": ", ".join(changed),
            # What the delta has to carry, measured: the new files' sizes.
            "security update: largest changed parts (MB, uncompressed)": changed_paths,
            "security update: full pull (MB downloaded)": round(pulled["full_v1"] / 1e6, 2),
            "security update: delta (MB downloaded)": round(pulled["security"] / 1e6, 2),
            "security update: publish with delta generation (s)": round(
                published.security_publish_s, 1
            ),
            "full pull of v2 (MB downloaded)": round(pulled["full"] / 1e6, 2),
            "delta v1 -> v2, conntrack added (MB downloaded)": round(pulled["delta"] / 1e6, 2),
            "delta v1 -> v2 vs full pull": f"{ratio:.1%}",
            "full pull (s)": round(pulled["full_s"], 1),
            "delta pull (s)": round(pulled["delta_s"], 1),
            "publish v2 with delta (s)": round(published.publish_s, 1),
            "concurrent delta pulls": CONCURRENT,
            "concurrent pulls wall time (s)": round(concurrent_s, 1),
            "concurrent pull failures": failures,
            "server errors": server_errors,
        },
        "targets": [
            {
                "name": f"security update ({len(changed)} packages) delta vs full pull",
                "value": f"{security_ratio:.1%}",
                "target": "<= 10%",
                "met": security_ratio <= 0.10,
            },
            {
                "name": f"{CONCURRENT} concurrent node pulls on loopback",
                "value": f"{failures} failed",
                "target": "no errors",
                "met": failures == 0 and server_errors == 0,
            },
        ],
    }

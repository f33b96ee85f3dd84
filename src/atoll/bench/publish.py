"""Publish benchmark: delta vs full download, and 200 concurrent node pulls.

Measured in one run on loopback:

* a security update: the default image composed from Debian's point release
  alone (v0) and with bookworm-security/-updates (v1, the default): the
  packages fixed since the point release differ, the kernel among them. A
  node on v0 pulls v1 (the static delta) and a fresh node pulls v1 in full,
  through :func:`atoll.agent.fetch.pull_verified` against ``atoll serve``;
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
from pathlib import Path

from atoll.agent.fetch import pull_verified
from atoll.agent.verify import load_trusted_keys
from atoll.compose.oci import write_busybox_archive
from atoll.compose.pipeline import compose
from atoll.progress import Reporter
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish, served_repo
from atoll.publish.serve import serve_in_thread, url_of
from atoll.tools import ostree

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


def run_benchmark(workdir: Path, reporter: Reporter) -> dict[str, object]:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    write_busybox_archive(
        CHECKOUT / "build/images/busybox.oci.tar", "docker.io/library/busybox:atoll"
    )
    build = workdir / "build-repo"
    # The security update: the default image from Debian's point release
    # alone, then with bookworm-security and -updates (the packages fixed
    # since the point release, the kernel among them).
    point_release = workdir / "point-release.toml"
    point_release.write_text(
        f'extends = "{CHECKOUT / "examples/minimal.toml"}"\n'
        '[image]\nname = "minimal"\nversion = "0.9.0"\n'
        "[distribution]\nupdates = false\n"
    )
    v0 = compose(point_release, build, reporter)
    v1 = compose(CHECKOUT / "examples/minimal.toml", build, reporter)
    v1_commit = v1.commit
    # And a small feature change: v2 adds a few packages.
    v2 = compose(CHECKOUT / "examples/minimal-v2.toml", build, reporter)
    changed = _changed_packages(v0.sbom, v1.sbom)
    init_keys(workdir / "keys")
    key = load_private_key(workdir / "keys/atoll-ed25519.key")
    updates = workdir / "updates"
    publish(build, v0.commit, updates, "stable", key, reporter)
    started = time.monotonic()
    publish(build, v1_commit, updates, "stable", key, reporter)
    security_publish_s = time.monotonic() - started
    started = time.monotonic()
    publish(build, v2.commit, updates, "stable", key, reporter)
    publish_s = time.monotonic() - started
    trusted = workdir / "trusted"
    trusted.mkdir()
    shutil.copy(workdir / "keys/atoll-ed25519.pub", trusted / "atoll.pub")
    keys = load_trusted_keys((trusted,))

    server = serve_in_thread(updates)
    try:
        url = url_of(server)
        node = workdir / "node-v1"
        ostree.init_repo(node, mode="bare-user")
        pull_verified(node, url, v0.commit, keys)
        before = server.counters.bytes_sent
        pull_verified(node, url, v1_commit, keys)
        security_bytes = server.counters.bytes_sent - before
        before = server.counters.bytes_sent
        started = time.monotonic()
        pull_verified(node, url, v2.commit, keys)
        delta_s = time.monotonic() - started
        delta_bytes = server.counters.bytes_sent - before

        fresh = workdir / "node-fresh"
        ostree.init_repo(fresh, mode="bare-user")
        before = server.counters.bytes_sent
        started = time.monotonic()
        pull_verified(fresh, url, v2.commit, keys)
        full_s = time.monotonic() - started
        full_bytes = server.counters.bytes_sent - before
        fresh_v1 = workdir / "node-fresh-v1"
        ostree.init_repo(fresh_v1, mode="bare-user")
        before = server.counters.bytes_sent
        pull_verified(fresh_v1, url, v1_commit, keys)
        full_v1_bytes = server.counters.bytes_sent - before

        repo = served_repo(updates)
        delta_dir = repo / "deltas" / v1_commit[:2] / (v1_commit[2:] + "-" + v2.commit)
        files = sorted(p for p in delta_dir.rglob("*") if p.is_file())
        paths = ["channels/stable.json", *(f"repo/{p.relative_to(repo)}" for p in files)]
        paths.append(f"repo/objects/{v2.commit[:2]}/{v2.commit[2:]}.commit")
        urls = [f"{url}/{p}" for p in paths]
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
        concurrent_s = time.monotonic() - started
        server_errors = server.counters.errors - errors_before
    finally:
        server.shutdown()
        server.server_close()

    ratio = delta_bytes / full_bytes
    security_ratio = security_bytes / full_v1_bytes
    return {
        "figures": {
            "image size (MB, uncompressed tree)": round(v2.size / 1e6, 1),
            "security update: packages changed": len(changed),
            "security update: changed packages": ", ".join(changed),
            "security update: full pull (MB downloaded)": round(full_v1_bytes / 1e6, 2),
            "security update: delta (MB downloaded)": round(security_bytes / 1e6, 2),
            "security update: publish with delta generation (s)": round(security_publish_s, 1),
            "full pull of v2 (MB downloaded)": round(full_bytes / 1e6, 2),
            "delta v1 -> v2, conntrack added (MB downloaded)": round(delta_bytes / 1e6, 2),
            "delta v1 -> v2 vs full pull": f"{ratio:.1%}",
            "full pull (s)": round(full_s, 1),
            "delta pull (s)": round(delta_s, 1),
            "publish v2 with delta (s)": round(publish_s, 1),
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

"""Compose benchmark: image size and package count vs a conventional host, cache speed-up.

Everything is measured in one run on this machine:

* a **cold** compose of the default image (empty apt, index and rootfs caches);
* the same manifest again from warm caches: a **no-op** (same inputs, same
  commit) and a **warm rebuild** into a fresh repository (the cached root
  filesystem is customized, slimmed and committed again);
* the **conventional Debian host** (:mod:`atoll.bench.baseline`) from the
  same mirror, index and apt cache.

Targets (issue "atoll compose"): packages <= 40% and installed size <= 30% of
the baseline's; a warm compose under 25% of the cold one's time.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from atoll.bench.baseline import build_baseline_rootfs
from atoll.compose.oci import write_busybox_archive
from atoll.compose.pipeline import compose
from atoll.manifest import load_index, load_manifest
from atoll.progress import Reporter
from atoll.tools import ostree

CHECKOUT = Path(__file__).resolve().parents[3]
MANIFEST = CHECKOUT / "examples" / "minimal.toml"


def largest_parts(
    entries: Iterable[ostree.TreeEntry], *, depth: int = 3, count: int = 12
) -> dict[str, float]:
    """MB of regular files under each ``depth``-deep path, the ``count`` largest."""
    totals: Counter[str] = Counter()
    for entry in entries:
        if entry.kind == "-":
            totals["/".join(entry.path.split("/")[: depth + 1])] += entry.size
    return {path: round(size / 1e6, 1) for path, size in totals.most_common(count)}


def run_benchmark(workdir: Path, reporter: Reporter) -> dict[str, object]:
    write_busybox_archive(
        CHECKOUT / "build/images/busybox.oci.tar", "docker.io/library/busybox:atoll"
    )
    cache = workdir / "compose-cache"
    for path in (cache, workdir / "repo-cold", workdir / "repo-warm"):
        shutil.rmtree(path, ignore_errors=True)
    epoch = int(time.time())

    started = time.monotonic()
    cold = compose(MANIFEST, workdir / "repo-cold", reporter, cache=cache, source_date_epoch=epoch)
    cold_s = time.monotonic() - started

    started = time.monotonic()
    noop = compose(MANIFEST, workdir / "repo-cold", reporter, cache=cache, source_date_epoch=epoch)
    noop_s = time.monotonic() - started
    assert noop.unchanged

    started = time.monotonic()
    compose(MANIFEST, workdir / "repo-warm", reporter, cache=cache, source_date_epoch=epoch)
    warm_s = time.monotonic() - started

    manifest = load_manifest(MANIFEST)
    index = load_index(manifest.distribution, cache, reporter)
    started = time.monotonic()
    baseline = build_baseline_rootfs(
        manifest.distribution,
        manifest.kernel.package,
        index.fingerprint,
        cache,
        reporter,
        source_date_epoch=epoch,
    )
    baseline_s = time.monotonic() - started

    package_ratio = cold.packages / baseline.packages
    size_ratio = cold.size / baseline.size
    installed = {p["name"] for p in cold.sbom["packages"] if p["state"] == "installed"}
    shared = installed & baseline.names
    return {
        "figures": {
            "atoll packages": cold.packages,
            "atoll packages used only to build (removed)": cold.packages_removed,
            "atoll size (MB)": round(cold.size / 1e6, 1),
            "baseline packages": baseline.packages,
            "baseline size (MB)": round(baseline.size / 1e6, 1),
            "cold compose (s)": round(cold_s, 1),
            "warm compose, unchanged manifest (s)": round(noop_s, 1),
            "warm compose into a fresh repo (s)": round(warm_s, 1),
            "warm compose into a fresh repo vs cold": f"{warm_s / cold_s:.1%}",
            "baseline build (s)": round(baseline_s, 1),
            "cold compose stages (s)": {k: round(v, 1) for k, v in cold.seconds.items()},
            # What stands in the way of the targets, measured: the packages
            # both trees carry (Debian's floor) and where atoll's bytes are.
            "atoll packages also in the conventional host": len(shared),
            "atoll packages not in the conventional host": " ".join(sorted(installed - shared)),
            "largest parts of the atoll image (MB)": largest_parts(
                ostree.list_tree(workdir / "repo-cold", cold.commit)
            ),
        },
        "targets": [
            {
                "name": "packages vs conventional host",
                "value": f"{package_ratio:.0%}",
                "target": "<= 40%",
                "met": package_ratio <= 0.40,
            },
            {
                "name": "installed size vs conventional host",
                "value": f"{size_ratio:.0%}",
                "target": "<= 30%",
                "met": size_ratio <= 0.30,
            },
            {
                "name": "warm compose (unchanged manifest) vs cold",
                "value": f"{noop_s / cold_s:.1%}",
                "target": "< 25%",
                "met": noop_s / cold_s < 0.25,
            },
        ],
    }

"""The Node Ready benchmark's host side, without booting anything: the registry it runs
(Debian's docker-registry on 127.0.0.1) serves atoll's pause image once skopeo pushed it,
and the NoCloud seed server serves a seed. (The conventional node's disk is built by the
benchmark itself: several minutes of mmdebstrap on a machine that has built nothing, more
than the test suite's budget affords.)"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from atoll.bench import ready

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


def _get(url: str, accept: str = "*/*") -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, headers={"Accept": accept})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - 127.0.0.1
        return answer.status, answer.read(), answer.headers.get("Content-Type", "")


def test_the_registry_serves_the_pushed_pause_image(tmp_path: Path) -> None:
    with ready.running_registry(tmp_path) as registry:
        reference = ready.push_pause(registry, tmp_path)
        assert reference == f"127.0.0.1:{registry.port}/atoll/pause:1"
        base = f"http://127.0.0.1:{registry.port}/v2/atoll/pause"
        status, body, kind = _get(f"{base}/manifests/1", ", ".join(MANIFEST_TYPES))
        assert status == 200
        assert kind in MANIFEST_TYPES
        manifest = json.loads(body)
        layers = manifest["layers"]
        assert len(layers) == 1
        status, _, _ = _get(f"{base}/blobs/{layers[0]['digest']}")
        assert status == 200
        assert registry.pulls() == 1  # the access log shows the fetch above
    with pytest.raises(OSError):  # stopped with the block
        _get(f"http://127.0.0.1:{registry.port}/v2/")


def test_the_seed_server_serves_a_nocloud_seed(tmp_path: Path) -> None:
    seed = tmp_path / "node-1"
    seed.mkdir()
    (seed / "meta-data").write_text(ready.meta_data("node-1"))
    with ready.seed_server(tmp_path) as port:
        status, body, _ = _get(f"http://127.0.0.1:{port}/node-1/meta-data")
    assert status == 200
    assert body.decode() == ready.meta_data("node-1")

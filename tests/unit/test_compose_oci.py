"""The local OCI archive builder used for preloaded images."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from atoll.compose.oci import BUSYBOX, busybox_image, write_busybox_archive


def test_archive_is_a_valid_reproducible_oci_layout(tmp_path: Path) -> None:
    first = busybox_image(BUSYBOX, "docker.io/library/busybox:atoll")
    assert first == busybox_image(BUSYBOX, "docker.io/library/busybox:atoll")
    out = tmp_path / "bb.tar"
    digest = write_busybox_archive(out, "docker.io/library/busybox:atoll")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())

        def blob(d: str) -> bytes:
            member = tar.extractfile("blobs/sha256/" + d.split(":", 1)[1])
            assert member is not None
            data = member.read()
            assert "sha256:" + hashlib.sha256(data).hexdigest() == d
            return data

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
        entry = index["manifests"][0]
        assert entry["digest"] == digest
        assert entry["annotations"]["io.containerd.image.name"] == (
            "docker.io/library/busybox:atoll"
        )
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == "atoll"
        manifest = json.loads(blob(digest))
        config = json.loads(blob(manifest["config"]["digest"]))
        assert config["os"] == "linux" and config["architecture"] == "amd64"
        blob(manifest["layers"][0]["digest"])
    assert "oci-layout" in names

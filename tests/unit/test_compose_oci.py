"""The local OCI archive builder used for preloaded images."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from atoll.compose.oci import BUSYBOX, busybox_image, pause_image, write_busybox_archive
from tests.oci_archive import image_parts


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


def test_the_pause_image_runs_its_binary_as_nobody(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF a static pause")
    archive = pause_image(binary, "localhost/atoll/pause:1")
    assert archive == pause_image(binary, "localhost/atoll/pause:1")  # reproducible
    config, layer = image_parts(archive)
    assert config["config"] == {"Entrypoint": ["/pause"], "User": "65535:65535"}
    (member,) = layer.getmembers()
    assert (member.name, member.mode, member.uid) == ("pause", 0o755, 0)
    extracted = layer.extractfile(member)
    assert extracted is not None and extracted.read() == binary.read_bytes()

"""Reading the OCI image archives atoll writes, for tests: the config and the one layer."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any


def image_parts(archive: bytes | Path) -> tuple[dict[str, Any], tarfile.TarFile]:
    """The image config and the (only) layer, opened, of an archive's first image."""
    data = archive.read_bytes() if isinstance(archive, Path) else archive
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert member is not None
            return member.read()

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        manifest = json.loads(blob(json.load(index_file)["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layer = gzip.decompress(blob(manifest["layers"][0]["digest"]))
    return config, tarfile.open(fileobj=io.BytesIO(layer))

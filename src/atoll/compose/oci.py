"""Build small OCI image archives locally, for preloading without a registry.

``atoll oci busybox`` turns Debian's ``busybox-static`` binary, ``atoll oci
pause`` atoll's own static pause (``pause.c``, a pod's sandbox process), into a
one-layer OCI image layout in a tar archive (what ``skopeo copy
oci-archive:`` or ``docker save`` would give), the default image's preloaded
container. The archive is reproducible: fixed timestamps and owners, sorted
entries, gzip without a name or time, so the same busybox gives the same
bytes and the same image digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import tempfile
from pathlib import Path

from atoll.compose.prepare_root import compile_static
from atoll.durable import write_atomic
from atoll.errors import InputError

BUSYBOX = Path("/bin/busybox")
PAUSE_SOURCE = Path(__file__).resolve().with_name("pause.c")
# The pod sandbox image a node's containerd is told to use (issue 16's variant preloads it).
PAUSE_REFERENCE = "localhost/atoll/pause:1"
# Applets linked into /bin of the image; enough for a shell and the tests.
APPLETS = ("sh", "echo", "cat", "ls", "sleep", "uname", "id", "env", "true", "false", "wget")


def _tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def busybox_image(binary: Path, reference: str) -> bytes:
    """The OCI archive (bytes) of a one-layer image holding ``binary`` as /bin/busybox."""
    if not binary.is_file():
        raise InputError(f"{binary}: not found (apt-get install busybox-static)")
    data = binary.read_bytes()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("bin", tarfile.DIRTYPE, 0o755), None),
        (_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), data),
    ]
    entries += [(_info(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"), None) for a in APPLETS]
    entries += [(_info(d, tarfile.DIRTYPE, 0o755), None) for d in ("etc", "proc", "sys", "tmp")]
    return image_archive(
        _tar_bytes(entries),
        reference,
        {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        created_by=f"atoll oci busybox ({binary})",
    )


def image_archive(
    layer_tar: bytes, reference: str, config: dict[str, object], *, created_by: str
) -> bytes:
    """The OCI archive (bytes) of a one-layer image named ``reference``.

    ``layer_tar`` is the layer's uncompressed tar; ``config`` the image config's
    ``config`` object (Cmd, Env...). Gzip without a name or time: the same layer
    gives the same bytes and the same image digest.
    """
    layer = gzip.compress(layer_tar, mtime=0)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
        "history": [{"created_by": created_by}],
    }
    config_bytes = _json(image_config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config_bytes),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }
    manifest_bytes = _json(manifest)
    tag = reference.rsplit(":", 1)[1] if ":" in reference.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                **_descriptor("application/vnd.oci.image.manifest.v1+json", manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": reference,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    files: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("blobs", tarfile.DIRTYPE, 0o755), None),
        (_info("blobs/sha256", tarfile.DIRTYPE, 0o755), None),
    ]
    for blob in sorted([layer, config_bytes, manifest_bytes], key=_digest):
        name = "blobs/sha256/" + _digest(blob).split(":", 1)[1]
        files.append((_info(name, tarfile.REGTYPE, 0o644, len(blob)), blob))
    for name, payload in (
        ("index.json", _json(index)),
        ("oci-layout", _json({"imageLayoutVersion": "1.0.0"})),
    ):
        files.append((_info(name, tarfile.REGTYPE, 0o644, len(payload)), payload))
    return _tar_bytes(files)


def pause_image(binary: Path, reference: str) -> bytes:
    """The OCI archive (bytes) of a pod sandbox image: ``binary`` as /pause, run as 65535."""
    data = binary.read_bytes()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_info("pause", tarfile.REGTYPE, 0o755, len(data)), data),
    ]
    return image_archive(
        _tar_bytes(entries),
        reference,
        {"Entrypoint": ["/pause"], "User": "65535:65535"},
        created_by="atoll oci pause (atoll/compose/pause.c, static)",
    )


def write_pause_archive(output: Path, reference: str) -> str:
    """Compile ``pause.c`` statically and write its image archive; return the manifest digest."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        compile_static(PAUSE_SOURCE, binary)
        archive = pause_image(binary, reference)
    return _write_archive(output, archive)


def write_busybox_archive(output: Path, reference: str, binary: Path = BUSYBOX) -> str:
    """Write the archive atomically; return the image manifest's digest."""
    return _write_archive(output, busybox_image(binary, reference))


def _write_archive(output: Path, archive: bytes) -> str:
    write_atomic(output, archive)
    with tarfile.open(output) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    return str(index["manifests"][0]["digest"])


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}

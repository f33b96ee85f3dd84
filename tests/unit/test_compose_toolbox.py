"""The toolbox's layer from a root filesystem tarball (pure: a tarball in, a layer out)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from atoll.compose.toolbox import WRAPPERS, toolbox_layer


def _tarball(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, kind, link in (
            ("./", tarfile.DIRTYPE, ""),
            ("./dev/null", tarfile.CHRTYPE, ""),
            ("./usr/bin/perl", tarfile.REGTYPE, ""),
            ("./usr/bin/perl5.36.0", tarfile.LNKTYPE, "./usr/bin/perl"),
            ("./usr/bin/bash", tarfile.REGTYPE, ""),
            ("./usr/bin/rbash", tarfile.LNKTYPE, "./usr/bin/bash"),
            ("./var/lib/apt/lists/x_Packages", tarfile.REGTYPE, ""),
            ("./usr/lib/x86_64-linux-gnu/gconv/UTF-16.so", tarfile.REGTYPE, ""),
            ("./usr/lib/utf16.so", tarfile.LNKTYPE, "./usr/lib/x86_64-linux-gnu/gconv/UTF-16.so"),
        ):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            data = b"data" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def test_the_layer_keeps_the_tools_and_the_wrappers_and_nothing_dangling(tmp_path: Path) -> None:
    layer = toolbox_layer(_tarball(tmp_path / "rootfs.tar"), 1_700_000_000)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    # No device nodes, apt lists, gconv, perl nor a hard link left pointing at perl.
    assert set(members) == {"usr/bin/bash", "usr/bin/rbash", *WRAPPERS}
    assert members["usr/bin/rbash"].linkname == "usr/bin/bash"  # the same form as names
    assert members["usr/local/bin/ctr"].mode == 0o755
    ctr = tar_text(layer, "usr/local/bin/ctr")
    assert "exec chroot /host /usr/bin/ctr" in ctr and "atoll node shell --image" in ctr


def tar_text(layer: bytes, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()

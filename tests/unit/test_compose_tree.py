"""Tree operations of compose on small synthetic roots: slim, shape, customize."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from atoll.compose.customize import add_group, add_user, write_os_release
from atoll.compose.shape import shape
from atoll.compose.slim import check_libraries, read_elf_links, slim
from atoll.errors import AtollError
from atoll.manifest import load_manifest
from atoll.manifest.model import Group, Manifest, User


def _manifest(tmp_path: Path, body: str = "") -> Manifest:
    path = tmp_path / "m.toml"
    path.write_text('[image]\nname = "t"\nversion = "1.2.3"\n' + body)
    return load_manifest(path)


def _merged_root(root: Path) -> None:
    for d in ("usr/bin", "usr/lib/x86_64-linux-gnu", "etc", "var/lib/dpkg/info", "boot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for alias in ("bin", "lib", "lib64"):
        (root / alias).symlink_to(f"usr/{alias}")
    (root / "usr/lib64").mkdir()


def test_read_elf_links_of_a_real_program() -> None:
    links = read_elf_links(Path("/usr/bin/true").read_bytes())
    assert links is not None
    assert links.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in links.needed
    assert read_elf_links(b"#!/bin/sh\n") is None


def test_check_libraries_names_the_binary_and_the_missing_library(tmp_path: Path) -> None:
    _merged_root(tmp_path)
    shutil.copy("/usr/bin/true", tmp_path / "usr/bin/true")
    with pytest.raises(AtollError, match=r"/usr/bin/true: needs libc\.so\.6"):
        check_libraries(tmp_path)
    (tmp_path / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"")
    (tmp_path / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").write_bytes(b"")
    # The interpreter is found through the /lib64 -> usr/lib64 -> ... links.
    (tmp_path / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    )
    check_libraries(tmp_path)


def _dpkg(root: Path, packages: dict[str, list[str]]) -> None:
    stanzas = []
    for name, files in packages.items():
        stanzas.append(
            f"Package: {name}\nStatus: install ok installed\nVersion: 1.0-{name}\n"
            f"Architecture: amd64\nInstalled-Size: 4\n"
        )
        (root / f"var/lib/dpkg/info/{name}.list").write_text("\n".join(files) + "\n")
        for file in files:
            path = root / file.lstrip("/")
            if not path.suffix and file.endswith(("/bin", "/usr")):
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)
    (root / "var/lib/dpkg/status").write_text("\n".join(stanzas))


def test_slim_removes_packages_but_keeps_shared_files_and_records_sbom(tmp_path: Path) -> None:
    _merged_root(tmp_path)
    _dpkg(
        tmp_path,
        {
            "dpkg": ["/usr/bin/dpkg", "/usr/share/shared.txt"],
            "keeper": ["/usr/bin/keeper", "/usr/share/shared.txt"],
            "perl-base": ["/bin/perl"],
        },
    )
    manifest = _manifest(tmp_path, '[strip]\nremove = ["perl-base"]\n')
    sbom = slim(tmp_path, manifest)
    assert not (tmp_path / "usr/bin/dpkg").exists()
    assert not (tmp_path / "usr/bin/perl").exists()  # listed as /bin/perl: merged /usr
    assert (tmp_path / "usr/share/shared.txt").exists()
    assert (tmp_path / "usr/bin/keeper").exists()
    assert not (tmp_path / "var/lib/dpkg").exists()
    states = {p["name"]: p["state"] for p in sbom["packages"]}  # type: ignore[attr-defined]
    assert states == {"dpkg": "removed", "keeper": "installed", "perl-base": "removed"}
    inside = json.loads((tmp_path / "usr/share/atoll/sbom.json").read_text())
    assert inside == sbom


def test_shape_makes_the_tree_ostree_shaped(tmp_path: Path) -> None:
    _merged_root(tmp_path)
    (tmp_path / "boot/vmlinuz-6.1.0-1-cloud-amd64").write_text("kernel")
    (tmp_path / "boot/config-6.1.0-1-cloud-amd64").write_text("CONFIG_EXT4_FS=y\n")
    (tmp_path / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-1-cloud-amd64")
    (tmp_path / "etc/machine-id").write_text("0123\n")
    (tmp_path / "etc/hostname").write_text("buildhost\n")
    (tmp_path / "var/lib/systemd").mkdir(parents=True)
    (tmp_path / "var/lib/systemd/seed").write_text("x")
    (tmp_path / "var/run").symlink_to("/run")
    (tmp_path / "root").mkdir()
    (tmp_path / "root/.bashrc").write_text("")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/junk").write_text("")
    assert shape(tmp_path) == "6.1.0-1-cloud-amd64"
    assert (tmp_path / "usr/lib/modules/6.1.0-1-cloud-amd64/vmlinuz").read_text() == "kernel"
    assert (tmp_path / "usr/lib/modules/6.1.0-1-cloud-amd64/config").exists()
    assert list((tmp_path / "boot").iterdir()) == []
    assert not (tmp_path / "vmlinuz").is_symlink()
    assert not (tmp_path / "etc").exists()
    assert (tmp_path / "usr/etc/machine-id").read_text() == ""
    assert not (tmp_path / "usr/etc/hostname").exists()
    assert list((tmp_path / "var").iterdir()) == []
    assert list((tmp_path / "dev").iterdir()) == []
    tmpfiles = (tmp_path / "usr/lib/tmpfiles.d/atoll-var.conf").read_text()
    assert "d /var/lib/systemd " in tmpfiles
    assert "L /var/run - - - - /run" in tmpfiles
    assert "C /var/lib/systemd/seed - - - - /usr/share/factory/var/lib/systemd/seed" in tmpfiles
    assert (tmp_path / "usr/share/factory/var/lib/systemd/seed").read_text() == "x"
    assert (tmp_path / "root").readlink() == Path("var/roothome")
    assert (tmp_path / "ostree").readlink() == Path("sysroot/ostree")
    assert (tmp_path / "sysroot").is_dir()


def test_users_and_groups_get_deterministic_ids(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nadm:x:4:\n")
    (tmp_path / "etc/shadow").write_text("root:*:1::::::\n")
    (tmp_path / "etc/gshadow").write_text("root:*::\n")
    assert add_group(tmp_path, Group(name="ops")) == 100
    add_user(tmp_path, User(name="svc", groups=("adm",)))
    passwd = (tmp_path / "etc/passwd").read_text()
    assert "svc:x:100:101::/nonexistent:/usr/sbin/nologin" in passwd
    assert "adm:x:4:svc" in (tmp_path / "etc/group").read_text()
    assert "svc:!*:" in (tmp_path / "etc/shadow").read_text()
    with pytest.raises(AtollError, match="already has this user"):
        add_user(tmp_path, User(name="svc"))
    with pytest.raises(AtollError, match="gid 4 is already taken"):
        add_group(tmp_path, Group(name="other", gid=4))


def test_os_release_names_the_image(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION="12 (bookworm)"\n'
    )
    write_os_release(tmp_path, _manifest(tmp_path))
    text = (tmp_path / "usr/lib/os-release").read_text()
    assert 'PRETTY_NAME="atoll t 1.2.3 (Debian 12 (bookworm))"' in text
    assert "IMAGE_ID=atoll\n" in text and "IMAGE_VERSION=1.2.3\n" in text
    assert "ID=debian\n" in text

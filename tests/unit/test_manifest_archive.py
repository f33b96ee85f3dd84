"""[[containers.preload]].archive (issue 19, item 6): no host file passed off as an archive.

Inside the manifest's tree (or an allowed directory) an archive is taken as
before; anywhere else only a bounded regular file that is an OCI image layout
in a plain tar is. Tiny tars are built here with :mod:`tarfile`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from atoll.compose.oci import busybox_image
from atoll.errors import EXIT_BAD_INPUT, ManifestError
from atoll.manifest import archive as module
from atoll.manifest import load_manifest
from atoll.manifest.archive import MAX_ARCHIVE_MEMBERS, archive_problem, oci_archive_problem

HEAD = '[image]\nname = "x"\nversion = "1"\n'
REFERENCE = "docker.io/library/busybox:atoll"
LAYOUT = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
INDEX = json.dumps({"schemaVersion": 2, "manifests": []}).encode()


Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), link
    return info, data


def write_tar(path: Path, members: list[Member]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            regular = info.type == tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data) if regular else None)
    path.write_bytes(buffer.getvalue())
    return path


def oci_members(*extra: Member, prefix: str = "") -> list[Member]:
    members = [
        member("blobs", kind=tarfile.DIRTYPE),
        member("blobs/sha256", kind=tarfile.DIRTYPE),
        member("blobs/sha256/ab", b"{}"),
        *extra,
        member("index.json", INDEX),
        member("oci-layout", LAYOUT),
    ]
    for info, _ in members:
        info.name = prefix + info.name
    return members


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``site/`` holds the manifest; ``images/`` beside it, as build/images is for examples/."""
    (tmp_path / "site").mkdir()
    (tmp_path / "images").mkdir()
    return tmp_path


def manifest(site: Path, archive: str) -> Path:
    path = site / "m.toml"
    path.write_text(
        HEAD + f'[[containers.preload]]\narchive = "{archive}"\nreference = "{REFERENCE}"\n'
    )
    return path


def problems_of(path: Path, **kwargs: object) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifest(path, **kwargs)  # type: ignore[arg-type]
    assert exc.value.exit_code == EXIT_BAD_INPUT
    return exc.value.problems


def refused(tree: Path, archive: Path | str, expected: str) -> None:
    problems = problems_of(manifest(tree / "site", str(archive)))
    assert len(problems) == 1, problems
    assert "site/m.toml: [[containers.preload]].archive: " in problems[0], problems
    assert expected in problems[0], problems


def test_a_valid_oci_archive_outside_the_tree_is_accepted(tree: Path) -> None:
    archive = write_tar(tree / "images" / "busybox.oci.tar", oci_members())
    m = load_manifest(manifest(tree / "site", "../images/busybox.oci.tar"))
    assert m.containers.preload[0].archive == archive
    # also through a symlink in the tree, and with "./" member names
    (tree / "site" / "alias.tar").symlink_to(archive)
    assert load_manifest(manifest(tree / "site", "alias.tar")).containers.preload
    write_tar(archive, oci_members(prefix="./"))
    assert load_manifest(manifest(tree / "site", str(archive))).containers.preload


def test_the_shipped_builder_writes_an_archive_the_loader_accepts(tree: Path) -> None:
    binary = tree / "busybox"
    binary.write_bytes(b"\x7fELF not really busybox")
    (tree / "images" / "bb.tar").write_bytes(busybox_image(binary, REFERENCE))
    assert oci_archive_problem(tree / "images" / "bb.tar") is None


def test_a_plain_host_file_is_refused(tree: Path) -> None:
    passwd = tree / "images" / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n" * 40)
    refused(tree, passwd, "is not an OCI image archive: not a tar")
    refused(tree, "/etc/passwd", "is not an OCI image archive")


def test_the_same_file_inside_the_tree_is_taken_as_before(tree: Path) -> None:
    (tree / "site" / "x.tar").write_text("not a tar\n")
    assert load_manifest(manifest(tree / "site", "x.tar")).containers.preload
    # as is one in a directory the user allowed
    (tree / "images" / "y.tar").write_text("not a tar\n")
    path = manifest(tree / "site", "../images/y.tar")
    assert load_manifest(path, allowed_sources=(tree / "images",)).containers.preload
    assert problems_of(path)


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([member("index.json", INDEX)], "is not an OCI image archive: no oci-layout"),
        ([member("oci-layout", LAYOUT)], "no index.json"),
        ([member("oci-layout", b"{}"), member("index.json", INDEX)], "no imageLayoutVersion"),
        ([member("oci-layout", b"[1"), member("index.json", INDEX)], "oci-layout is not JSON"),
        (
            [member("oci-layout", LAYOUT), member("index.json", b"{}")],
            "index.json has no manifests",
        ),
        (oci_members(member("../escape", b"x")), "is absolute or holds '..'"),
        (oci_members(member("blobs/../../escape", b"x")), "is absolute or holds '..'"),
        (oci_members(member("/etc/cron.d/x", b"x")), "is absolute or holds '..'"),
        (oci_members(member("dev", kind=tarfile.CHRTYPE)), "device, FIFO or other special"),
        (oci_members(member("pipe", kind=tarfile.FIFOTYPE)), "device, FIFO or other special"),
        (oci_members(member("l", kind=tarfile.SYMTYPE, link="/etc/shadow")), "links outside"),
        (oci_members(member("blobs/l", kind=tarfile.SYMTYPE, link="../../x")), "links outside"),
        (oci_members(member("h", kind=tarfile.LNKTYPE, link="../x")), "links outside"),
        (oci_members(member("oci-layout", LAYOUT)), "'oci-layout' appears twice"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_tar_that_is_not_a_safe_oci_layout_is_refused(
    tree: Path, members: list[Member], expected: str
) -> None:
    archive = write_tar(tree / "images" / "bad.tar", members)
    refused(tree, archive, expected)


def test_a_symlink_to_a_non_archive_is_refused(tree: Path) -> None:
    (tree / "site" / "image.tar").symlink_to("/etc/passwd")
    refused(tree, "image.tar", "'/etc/passwd' is not an OCI image archive")


def test_a_fifo_is_refused_without_being_opened(tree: Path) -> None:
    os.mkfifo(tree / "images" / "pipe.tar")
    # opening a FIFO for reading would block: the test would hang, not fail
    refused(tree, tree / "images" / "pipe.tar", "is not a regular file")
    os.mkfifo(tree / "site" / "pipe.tar")
    refused(tree, "pipe.tar", "is not a regular file")


def test_a_directory_or_device_is_refused(tree: Path) -> None:
    refused(tree, tree / "images", "is not a regular file")
    refused(tree, "/dev/zero", "is not a regular file")


def test_data_hidden_after_a_valid_archive_is_refused(tree: Path) -> None:
    archive = write_tar(tree / "images" / "a.tar", oci_members())
    with archive.open("ab") as f:
        f.write(b"root:$6$secret:::\n")
    refused(tree, archive, "data after the end of the tar")


def test_a_compressed_or_truncated_tar_is_refused(tree: Path) -> None:
    whole = write_tar(tree / "images" / "a.tar", oci_members()).read_bytes()
    (tree / "images" / "a.tar.gz").write_bytes(gzip.compress(whole))
    refused(tree, tree / "images" / "a.tar.gz", "not a tar")
    (tree / "images" / "cut.tar").write_bytes(whole[:1500])
    refused(tree, tree / "images" / "cut.tar", "is not an OCI image archive")


def test_the_member_count_is_bounded(tree: Path) -> None:
    many = [member(f"blobs/{i}", b"") for i in range(MAX_ARCHIVE_MEMBERS + 1)]
    archive = write_tar(tree / "images" / "many.tar", oci_members(*many))
    assert archive_problem(archive, confined=False) == (
        f"is not an OCI image archive: more than {MAX_ARCHIVE_MEMBERS} members"
    )
    assert archive_problem(archive, confined=True) is None


def test_the_size_and_the_name_are_bounded_everywhere(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = write_tar(tree / "site" / "small.tar", oci_members())
    monkeypatch.setattr(module, "MAX_ARCHIVE_BYTES", 1024)
    assert archive_problem(small, confined=True) == "is larger than 1024 bytes"
    monkeypatch.undo()
    spaced = tree / "site" / "a b.tar"
    small.rename(spaced)
    # a space would split the image's "<archive> <reference>" preload.list line
    assert "not one word" in str(archive_problem(spaced, confined=True))

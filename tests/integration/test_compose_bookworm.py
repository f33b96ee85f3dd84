"""Debian 12 (bookworm), oldstable, still composes: its kernel, its python, the toolbox."""

from __future__ import annotations

from atoll.tools import ostree
from tests.conftest import BookwormImages, ComposedImage


def test_a_bookworm_site_image_composes_on_its_own_suite(bookworm_images: BookwormImages) -> None:
    image = bookworm_images.old
    repo, commit = image.repo, image.commit
    assert image.result.kernel.startswith("6.1."), image.result.kernel
    release = ostree.cat(repo, commit, "/usr/lib/os-release").decode()
    assert "VERSION_CODENAME=bookworm" in release, release
    # The agent is compiled by the image's own python (3.11 here, 3.13 on trixie).
    assert _pyc_tags(image) == {"cpython-311"}
    listed = ostree.cat(repo, commit, "/usr/share/atoll/images/toolbox.list").decode().split()
    assert listed[1] == "localhost/atoll/toolbox:1"
    new = bookworm_images.new
    assert new.result.version == "1.0.1" and new.commit != commit


def _pyc_tags(image: ComposedImage) -> set[str]:
    pycache = ostree.list_tree(
        image.repo, image.commit, "/usr/lib/atoll/python/atoll/agent/__pycache__"
    )
    return {e.path.rsplit(".", 2)[-2] for e in pycache if e.path.endswith(".pyc")}


def test_the_default_image_is_trixie_with_its_own_python(default_image: ComposedImage) -> None:
    release = ostree.cat(default_image.repo, default_image.commit, "/usr/lib/os-release").decode()
    assert "VERSION_CODENAME=trixie" in release, release
    assert default_image.result.kernel.startswith("6.12."), default_image.result.kernel
    assert _pyc_tags(default_image) == {"cpython-313"}
    # trixie's kernel compresses its modules (.ko.xz): the keep list's plain names still
    # keep them (user data by fw_cfg, the network, containers' veth, the ESP's FAT).
    kernel = default_image.result.kernel
    modules = {
        e.path.rsplit("/", 1)[-1]
        for e in ostree.list_tree(
            default_image.repo, default_image.commit, f"/usr/lib/modules/{kernel}"
        )
    }
    for module in ("qemu_fw_cfg", "virtio_net", "virtio_blk", "veth", "nls_cp437", "vfat"):
        assert f"{module}.ko.xz" in modules, module

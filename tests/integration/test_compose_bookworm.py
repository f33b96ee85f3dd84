"""Debian 13 (trixie) is the base and Debian 12 (bookworm), oldstable, still composes: each
with its kernel, its python, the toolbox; validation names a package of the other suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atoll.compose import compose
from atoll.errors import ManifestError
from atoll.progress import PlainReporter
from atoll.tools import ostree
from tests.conftest import DEFAULT_MANIFEST, TEST_CACHE, BookwormImages, ComposedImage


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


def test_a_bookworm_package_on_trixie_is_named_as_bookworm_s(tmp_path: Path) -> None:
    """trixie has python 3.13; bookworm's python3.11 is not in it."""
    site = tmp_path / "site.toml"
    site.write_text(
        f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "t"\nversion = "1"\n'
        '[packages]\ninclude = ["python3.11"]\n'
    )
    with pytest.raises(ManifestError) as caught:
        compose(site, tmp_path / "repo", PlainReporter(), cache=TEST_CACHE)
    (problem,) = caught.value.problems
    assert problem.startswith(
        f"{os.path.relpath(site)}: [packages].include: "
        "unknown package 'python3.11': it is in bookworm, not in trixie"
    ), problem
    assert "'python3.13'" in problem  # and the near misses of trixie's own names
    assert not (tmp_path / "repo").exists()

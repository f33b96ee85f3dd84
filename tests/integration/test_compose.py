"""atoll compose against Debian's mirror, mmdebstrap and ostree (the default image)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from atoll.compose import compose, inspect
from atoll.process import PIPE, as_text, run, start
from atoll.progress import PlainReporter
from atoll.tools import ostree
from tests.conftest import DEFAULT_MANIFEST, ROOT, TEST_CACHE, TEST_EPOCH, ComposedImage


def _paths(image: ComposedImage) -> set[str]:
    return {entry.path for entry in ostree.list_tree(image.repo, image.commit)}


def test_default_image_is_a_slim_ostree_shaped_container_host(
    default_image: ComposedImage,
) -> None:
    repo, commit = default_image.repo, default_image.commit
    assert ostree.rev_parse(repo, "atoll/x86_64/minimal") == commit
    meta = ostree.commit_metadata(
        repo,
        commit,
        [
            "version",
            "atoll.manifest-digest",
            "atoll.packages-digest",
            "atoll.kernel",
            "atoll.kargs",
        ],
    )
    assert meta["version"] == "1.0.0"
    kernel = str(meta["atoll.kernel"])
    assert "console=ttyS0,115200" in str(meta["atoll.kargs"])
    paths = _paths(default_image)
    assert f"/usr/lib/modules/{kernel}/vmlinuz" in paths
    assert "/usr/etc/os-release" in paths or "/usr/lib/os-release" in paths
    assert not any(p == "/etc" or p.startswith("/etc/") for p in paths)
    assert not any(p.startswith(("/var/", "/boot/")) for p in paths)
    # No package manager, no remote shell, no initramfs tooling, no cloud-init.
    for absent in (
        "/usr/bin/dpkg",
        "/usr/bin/apt-get",
        "/usr/sbin/sshd",
        "/usr/bin/cloud-init",
        "/usr/sbin/update-initramfs",
        "/usr/bin/perl",
        "/usr/sbin/runc",
    ):
        assert absent not in paths, absent
    assert not any(p.startswith("/usr/share/man/") for p in paths)
    docs = [
        e.path
        for e in ostree.list_tree(repo, commit, "/usr/share/doc")
        if e.kind == "-" and not e.path.endswith("/copyright")
    ]
    assert docs == []
    # What a container host needs is there.
    for present in (
        "/usr/bin/containerd",
        "/usr/bin/crun",
        "/usr/lib/systemd/systemd",
        "/usr/bin/ostree",
        "/usr/lib/atoll/python/atoll/__init__.py",
        "/usr/share/atoll/images/preload.list",
        "/usr/lib/systemd/system/atoll-preload.service",
        "/usr/etc/systemd/system/multi-user.target.wants/atoll-preload.service",
        "/usr/etc/machine-id",
        # systemd's first-boot work, done at compose time (docs/boot.md).
        "/usr/etc/.updated",
        "/usr/share/factory/var/.updated",
        "/usr/share/factory/var/lib/systemd/catalog/database",
        "/usr/lib/tmpfiles.d/static-nodes.conf",
    ):
        assert present in paths, present
    runc = {e.path: e for e in ostree.list_tree(repo, commit, "/usr/bin")}["/usr/bin/runc"]
    assert runc.kind == "l" and runc.target == "crun"
    release = ostree.cat(repo, commit, "/usr/lib/os-release").decode()
    assert "IMAGE_ID=atoll" in release and "IMAGE_VERSION=1.0.0" in release
    config = ostree.cat(repo, commit, "/usr/etc/containerd/config.toml").decode()
    assert 'BinaryName = "/usr/bin/crun"' in config
    assert ostree.cat(repo, commit, "/usr/etc/machine-id") == b""
    sbom = json.loads(ostree.cat(repo, commit, "/usr/share/atoll/sbom.json"))
    names = {p["name"]: p["state"] for p in sbom["packages"]}
    assert names["systemd"] == "installed" and names["dpkg"] == "removed"
    assert "openssh-server" not in names and "initramfs-tools" not in names
    result = default_image.result
    assert result.packages == sum(1 for s in names.values() if s == "installed")
    assert result.size > 0
    # The ops shell's toolbox (the shipped base's default, not named by minimal.toml),
    # listed for the agent and kept out of the first-boot preload.
    listed = ostree.cat(repo, commit, "/usr/share/atoll/images/toolbox.list").decode().split()
    assert (
        listed[1] == "localhost/atoll/toolbox:1" and f"/usr/share/atoll/images/{listed[0]}" in paths
    )
    assert (
        listed[0] not in ostree.cat(repo, commit, "/usr/share/atoll/images/preload.list").decode()
    )
    assert "toolbox" in result.seconds


def test_kernel_boots_without_initramfs(default_image: ComposedImage) -> None:
    kernel = str(
        ostree.commit_metadata(default_image.repo, default_image.commit, ["atoll.kernel"])[
            "atoll.kernel"
        ]
    )
    config = ostree.cat(
        default_image.repo, default_image.commit, f"/usr/lib/modules/{kernel}/config"
    ).decode()
    assert "CONFIG_BLK_DEV_NVME=y" in config and "CONFIG_EXT4_FS=y" in config
    paths = _paths(default_image)
    assert f"/usr/lib/modules/{kernel}/initramfs.img" not in paths
    prepare_root = ostree.cat(
        default_image.repo, default_image.commit, "/usr/lib/ostree/ostree-prepare-root"
    )
    assert prepare_root[:4] == b"\x7fELF"
    assert b"ld-linux" not in prepare_root[:4096], "PID-1 step must be statically linked"


def test_unchanged_manifest_is_a_no_op(default_image: ComposedImage) -> None:
    again = compose(
        DEFAULT_MANIFEST,
        default_image.repo,
        PlainReporter(),
        cache=TEST_CACHE,
        source_date_epoch=TEST_EPOCH,
    )
    assert again.unchanged
    assert again.commit == default_image.commit


def test_same_manifest_same_packages_same_content(
    default_image: ComposedImage, tmp_path: Path
) -> None:
    """A from-scratch rebuild (mmdebstrap again) gives the same ostree content checksum."""
    rebuilt = compose(
        DEFAULT_MANIFEST,
        tmp_path / "repo",
        PlainReporter(),
        cache=TEST_CACHE,
        source_date_epoch=TEST_EPOCH,
        reuse=False,
    )
    assert rebuilt.sbom["packages"] == default_image.result.sbom["packages"]
    assert rebuilt.content_checksum == default_image.result.content_checksum


def test_inspect_reports_what_changed_since_the_parent(
    default_image: ComposedImage, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    ostree.init_repo(repo)
    run(
        ["ostree", f"--repo={repo}", "pull-local", str(default_image.repo), default_image.ref],
        capture=False,
    )
    site = tmp_path / "site.toml"
    site.write_text(
        f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "minimal"\nversion = "1.0.1"\n'
        '[[files]]\npath = "/usr/lib/motd.d/site"\ncontent = "site image"\n'
    )
    child = compose(site, repo, PlainReporter(), cache=TEST_CACHE, source_date_epoch=TEST_EPOCH)
    assert not child.unchanged
    found = inspect(repo, "atoll/x86_64/minimal")
    assert found.commit == child.commit
    assert found.parent == default_image.commit
    assert found.metadata["version"] == "1.0.1"
    assert found.files_added >= 1 and found.package_changes == []
    out = run(
        [sys.executable, "-m", "atoll", "inspect", str(repo), "atoll/x86_64/minimal", "--json"]
    )
    assert json.loads(out.stdout)["changes"]["files_added"] == found.files_added


def test_bad_manifest_fails_fast_with_exit_2_and_no_repo(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'extends = "{DEFAULT_MANIFEST}"\n[image]\nname = "x"\nversoin = "1"\n')
    started = time.monotonic()
    out = as_text(
        run(
            [sys.executable, "-m", "atoll", "compose", str(bad), "--repo", str(tmp_path / "repo")],
            check=False,
        )
    )
    assert out.returncode == 2
    assert "bad.toml" in out.stderr and "versoin" in out.stderr and "version" in out.stderr
    assert time.monotonic() - started < 30  # a generous bound: it fails before any build
    assert not (tmp_path / "repo").exists()


def test_ctrl_c_leaves_the_repo_and_cache_as_they_were(
    default_image: ComposedImage, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(TEST_EPOCH), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "atoll", "compose", str(DEFAULT_MANIFEST), "--repo", str(repo)]
    cache = ["--cache", str(TEST_CACHE)]
    with start([*argv, *cache, "--no-cache"], cwd=ROOT, env=env, stderr=PIPE) as proc:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            if b"rootfs" in line and b"set up" in line:
                break  # mmdebstrap is installing packages
            assert time.monotonic() < deadline, "mmdebstrap never got going"
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, rest
    assert not (repo / "config").exists() or ostree.rev_parse(repo, default_image.ref) is None
    assert not list((TEST_CACHE / "rootfs").glob("*.partial"))
    assert not list((TEST_CACHE / "work").iterdir())
    assert not list((TEST_CACHE / "tmp").iterdir())
    # The next run continues from the caches and completes.
    run([*argv, *cache], cwd=ROOT, env=env)
    commit = ostree.rev_parse(repo, default_image.ref)
    assert commit is not None
    content = ostree.commit_info(repo, commit)["contentchecksum"]
    assert content == default_image.result.content_checksum


pytestmark = pytest.mark.timeout(900)

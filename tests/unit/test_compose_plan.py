"""The compose plan: which packages, pins, filters and sources mmdebstrap gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.compose.plan import NO_INITRAMFS_PACKAGE, plan_rootfs
from atoll.compose.rootfs import mmdebstrap_argv
from atoll.manifest import load_manifest
from atoll.manifest.model import Manifest

ROOT = Path(__file__).resolve().parents[2]


def _manifest(tmp_path: Path, body: str) -> Manifest:
    path = tmp_path / "m.toml"
    path.write_text('[image]\nname = "t"\nversion = "1"\n' + body)
    return load_manifest(path)


def test_base_adds_kernel_runtime_agent_and_no_initramfs() -> None:
    plan = plan_rootfs(load_manifest(ROOT / "examples/base.toml"), "fp")
    for name in ("linux-image-cloud-amd64", "containerd", "crun", "python3", NO_INITRAMFS_PACKAGE):
        assert name in plan.include
    assert list(plan.include) == sorted(plan.include)
    # Every provider of linux-initramfs-tool but ours is pinned away.
    for name in ("initramfs-tools", "dracut", "tiny-initramfs", "openssh-server", "usrmerge"):
        assert name in plan.exclude
    assert plan.local_packages == (NO_INITRAMFS_PACKAGE,)
    assert "Pin-Priority: -1" in plan.apt_preferences()


@pytest.mark.parametrize(
    ("body", "present", "absent"),
    [
        (
            '[containers]\nruntime = false\n[agent]\ntoolbox = ""\n',
            [],
            ["containerd", "crun"],
        ),
        ("[agent]\ninclude = false\n", [], ["python3"]),
        ('[init]\nstrategy = "initramfs"\n', ["initramfs-tools"], [NO_INITRAMFS_PACKAGE]),
    ],
)
def test_switches_change_the_package_set(
    tmp_path: Path, body: str, present: list[str], absent: list[str]
) -> None:
    plan = plan_rootfs(_manifest(tmp_path, body), "fp")
    assert all(p in plan.include for p in present)
    assert not any(p in plan.include for p in absent)


def test_cache_key_follows_inputs(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "")
    assert plan_rootfs(manifest, "a").cache_key() == plan_rootfs(manifest, "a").cache_key()
    assert plan_rootfs(manifest, "a").cache_key() != plan_rootfs(manifest, "b").cache_key()
    other = _manifest(tmp_path, '[packages]\ninclude = ["jq"]\n')
    assert plan_rootfs(other, "a").cache_key() != plan_rootfs(manifest, "a").cache_key()


def test_locale_filters_keep_only_listed_languages(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, '[strip]\nkeep_locales = ["C.UTF-8", "de_DE.UTF-8"]\n')
    options = plan_rootfs(manifest, "fp").dpkg_options
    assert "path-exclude=/usr/share/locale/*" in options
    assert "path-include=/usr/share/locale/de/*" in options
    assert "path-include=/usr/share/locale/de_DE/*" in options
    assert not any("/locale/C" in o for o in options)
    exclude_at = options.index("path-exclude=/usr/share/locale/*")
    assert options.index("path-include=/usr/share/locale/de/*") > exclude_at


def test_updates_off_uses_only_the_suite(tmp_path: Path) -> None:
    plan = plan_rootfs(_manifest(tmp_path, "[distribution]\nupdates = false\n"), "fp")
    assert plan.sources == ("deb http://deb.debian.org/debian trixie main",)


def test_mmdebstrap_argv_is_sandboxed_and_cached(tmp_path: Path) -> None:
    plan = plan_rootfs(load_manifest(ROOT / "examples/base.toml"), "fp")
    argv = mmdebstrap_argv(plan, tmp_path / "out.tar", tmp_path / "apt", "deb local ./", None)
    assert argv[0] == "mmdebstrap"
    assert "--mode=unshare" in argv
    assert f"--setup-hook=sync-in {tmp_path / 'apt'} /var/cache/apt/archives/" in argv
    assert argv[-1] == "deb local ./"
    assert argv[argv.index("trixie") + 1] == str(tmp_path / "out.tar")

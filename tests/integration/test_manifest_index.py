"""The suite's package index, fetched from Debian's mirror and verified with gpgv."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.errors import AtollError, ManifestError
from atoll.manifest import check_packages, load_index, load_manifest
from atoll.manifest.index import _fetch, _verify_signature, sources_for
from atoll.manifest.model import Distribution

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("index-cache")


def test_index_knows_the_base_packages_and_is_cached(cache: Path) -> None:
    index = load_index(Distribution(), cache)
    for name in ("systemd", "ostree", "containerd", "crun", "linux-image-cloud-amd64"):
        assert index.has(name), name
    assert index.is_virtual_only("linux-initramfs-tool")
    again = load_index(Distribution(), cache)
    assert again.fingerprint == index.fingerprint
    assert len(list((cache / "index").glob("*.json"))) == 1


def test_shipped_manifest_packages_exist(cache: Path) -> None:
    manifest = load_manifest(ROOT / "examples" / "base.toml")
    check_packages(manifest, load_index(manifest.distribution, cache))


def test_typo_in_package_gets_a_suggestion(cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text('[image]\nname = "web"\nversion = "1"\n[packages]\ninclude = ["nginxx"]\n')
    manifest = load_manifest(path)
    with pytest.raises(ManifestError) as exc:
        check_packages(manifest, load_index(manifest.distribution, cache))
    assert "unknown package 'nginxx' (did you mean 'nginx'?)" in exc.value.problems[0]


def test_tampered_inrelease_is_refused() -> None:
    source = sources_for(Distribution())[0]
    data = _fetch(source.inrelease_url)
    _verify_signature(data, source.inrelease_url)
    tampered = data.replace(b"Suite: ", b"Suite: x", 1)
    with pytest.raises(AtollError, match="signature does not verify"):
        _verify_signature(tampered, source.inrelease_url)


def test_unreachable_mirror_without_cache_names_the_url(tmp_path: Path) -> None:
    broken = Distribution(mirror="http://127.0.0.1:9/debian", updates=False)
    with pytest.raises(AtollError, match=r"127\.0\.0\.1:9/debian/dists/trixie/InRelease"):
        load_index(broken, tmp_path)

"""The suite's package index: which package names exist, for validation.

A manifest names Debian packages; a typo must cost the user a second, not a
build. Before anything is built, :func:`load_index` fetches the suite's
``InRelease`` files (the suite, and ``-updates``/``-security`` when the
manifest uses them), verifies their signatures with ``gpgv`` against Debian's
archive keyring, downloads each ``Packages.xz`` the ``InRelease`` lists and
checks its SHA256 and size, and parses the package names, versions and
virtual ``Provides``.

Caching: the parsed index is stored as JSON under ``<cache>/index/``, keyed
by the digest of the verified ``InRelease`` files. A later run fetches only
the ``InRelease`` files (a few hundred KB) and reuses the parsed index when
they are unchanged. If the mirror cannot be reached at all, the last verified
index is used with a warning; with none cached, that is an error naming the
URL.

:attr:`PackageIndex.fingerprint` identifies the exact index state; compose
uses it in cache keys, so a mirror update invalidates cached root trees.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import lzma
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from atoll.durable import write_atomic
from atoll.errors import AtollError
from atoll.manifest.model import Distribution
from atoll.process import run
from atoll.progress import Reporter

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
_INDEX_FORMAT = 1
_TIMEOUT = 60.0


@dataclass(frozen=True)
class IndexSource:
    """One ``dists/<suite>`` of one mirror."""

    mirror: str
    suite: str

    @property
    def inrelease_url(self) -> str:
        return f"{self.mirror.rstrip('/')}/dists/{self.suite}/InRelease"

    def file_url(self, relative: str) -> str:
        return f"{self.mirror.rstrip('/')}/dists/{self.suite}/{relative}"


def sources_for(distribution: Distribution) -> tuple[IndexSource, ...]:
    """The mirrors and suites a distribution's packages come from."""
    sources = [IndexSource(distribution.mirror, distribution.suite)]
    if distribution.updates:
        sources.append(IndexSource(distribution.mirror, f"{distribution.suite}-updates"))
        sources.append(IndexSource(distribution.security_mirror, f"{distribution.suite}-security"))
    return tuple(sources)


@dataclass(frozen=True)
class PackageIndex:
    """Package names of a suite, with candidate versions and virtual provides."""

    fingerprint: str
    versions: dict[str, str]  # real package -> highest version seen
    provides: dict[str, tuple[str, ...]]  # virtual name -> real packages providing it

    def has(self, name: str) -> bool:
        return name in self.versions or name in self.provides

    def is_virtual_only(self, name: str) -> bool:
        return name not in self.versions and name in self.provides

    def version(self, name: str) -> str | None:
        return self.versions.get(name)

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        """Near misses for an unknown name, best first."""
        # Comparing against ~64k names is slow with SequenceMatcher; candidates
        # that share the first letter or are a prefix cover real typos.
        pool = [n for n in self.versions if n[:1] == name[:1] or n.startswith(name)]
        return difflib.get_close_matches(name, pool, n=limit, cutoff=0.75)


def load_index(
    distribution: Distribution, cache_dir: Path, reporter: Reporter | None = None
) -> PackageIndex:
    """Fetch, verify and parse the package index of ``distribution`` (cached)."""
    cache = cache_dir / "index"
    cache.mkdir(parents=True, exist_ok=True)
    sources = sources_for(distribution)
    releases: list[tuple[IndexSource, bytes]] = []
    try:
        for source in sources:
            releases.append((source, _fetch(source.inrelease_url)))
    except AtollError as e:
        fallback = _latest_cached(cache, distribution)
        if fallback is None:
            raise
        if reporter:
            reporter.warning(f"{e}; using the last verified package index")
        return fallback
    for source, data in releases:
        _verify_signature(data, source.inrelease_url)
    fingerprint = _fingerprint(distribution, [data for _, data in releases])
    cached = cache / f"{fingerprint}.json"
    if cached.exists():
        index = _read_cached(cached)
        if index is not None:
            return index
    versions: dict[str, str] = {}
    provides: dict[str, set[str]] = {}
    for source, data in releases:
        for component in distribution.components:
            relative = f"{component}/binary-{distribution.architecture}/Packages.xz"
            expected = _release_entry(data, relative, source.inrelease_url)
            if reporter:
                reporter.info(f"package index: {source.file_url(relative)}")
            payload = _fetch(source.file_url(relative))
            _check_digest(payload, expected, source.file_url(relative))
            _parse_packages(lzma.decompress(payload), versions, provides)
    index = PackageIndex(
        fingerprint=fingerprint,
        versions=versions,
        provides={k: tuple(sorted(v)) for k, v in provides.items()},
    )
    _write_cached(cached, index, distribution)
    return index


def _fingerprint(distribution: Distribution, releases: Iterable[bytes]) -> str:
    digest = hashlib.sha256(f"atoll-index-{_INDEX_FORMAT}".encode())
    digest.update(distribution.architecture.encode())
    digest.update(",".join(distribution.components).encode())
    for data in releases:
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "atoll"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310
            data: bytes = response.read()
            return data
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise AtollError(f"{url}: cannot fetch the package index ({reason})") from e


def _verify_signature(data: bytes, url: str) -> None:
    with tempfile.NamedTemporaryFile(suffix=".InRelease") as f:
        f.write(data)
        f.flush()
        result = run(["gpgv", "--keyring", KEYRING, f.name], check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise AtollError(f"{url}: signature does not verify against {KEYRING}: {detail}")


def _release_entry(inrelease: bytes, relative: str, url: str) -> tuple[str, int]:
    """The SHA256 and size that a verified InRelease lists for ``relative``."""
    in_sha256 = False
    for raw in inrelease.decode(errors="replace").splitlines():
        if not raw.startswith(" "):
            in_sha256 = raw.strip() == "SHA256:"
            continue
        if in_sha256:
            parts = raw.split()
            if len(parts) == 3 and parts[2] == relative:
                return parts[0], int(parts[1])
    raise AtollError(f"{url}: does not list {relative} (wrong component or architecture?)")


def _check_digest(payload: bytes, expected: tuple[str, int], url: str) -> None:
    sha256, size = expected
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != sha256:
        raise AtollError(f"{url}: size or SHA256 does not match the signed InRelease")


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line:
            if fields:
                yield fields
            fields = {}
            continue
        if line[0] in " \t":
            continue  # continuation lines: descriptions, not needed here
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    if fields:
        yield fields


def _parse_packages(data: bytes, versions: dict[str, str], provides: dict[str, set[str]]) -> None:
    for stanza in _stanzas(data.decode("utf-8", errors="replace")):
        name = stanza.get("Package")
        if not name:
            continue
        version = stanza.get("Version", "")
        # Later sources (updates, security) carry newer versions of the same package.
        versions[name] = version
        for item in stanza.get("Provides", "").split(","):
            virtual = item.split("(")[0].strip()
            if virtual:
                provides.setdefault(virtual, set()).add(name)


def _write_cached(path: Path, index: PackageIndex, distribution: Distribution) -> None:
    payload = {
        "format": _INDEX_FORMAT,
        "suite": distribution.suite,
        "architecture": distribution.architecture,
        "fingerprint": index.fingerprint,
        "versions": index.versions,
        "provides": {k: list(v) for k, v in index.provides.items()},
    }
    write_atomic(path, json.dumps(payload))


def _read_cached(path: Path) -> PackageIndex | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if payload.get("format") != _INDEX_FORMAT:
        return None
    return PackageIndex(
        fingerprint=str(payload["fingerprint"]),
        versions=dict(payload["versions"]),
        provides={k: tuple(v) for k, v in payload["provides"].items()},
    )


def _latest_cached(cache: Path, distribution: Distribution) -> PackageIndex | None:
    candidates = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (
            payload.get("suite") == distribution.suite
            and payload.get("architecture") == distribution.architecture
        ):
            return _read_cached(path)
    return None

"""Manifest loading under generated input (issue 19's evidence for the build side).

Generated manifests, mostly almost right (known keys with values of any type,
hostile strings, sources pointing anywhere, unknown keys, deep nesting, raw
text) are written into a tree and loaded. Whatever they hold:

* loading returns a manifest or raises :class:`ManifestError` (exit code 2),
  never another exception; every problem names the file and stays one short line;
* nothing is opened outside the manifest's tree but the manifest it extends
  and the regular files it names as ``[[containers.preload]].archive`` or
  ``[agent].toolbox_archive`` (an
  audit hook sees every ``open``); a source that resolves outside the tree is
  refused (and never read); an archive outside the tree is accepted only when
  it is an OCI image archive, and a FIFO or device is never opened.

Pure: no compose and no package index (``load_manifest`` checks packages only
when given one), a bounded budget that runs in seconds.
"""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atoll.errors import EXIT_BAD_INPUT, ManifestError
from atoll.manifest import load_manifest, manifest_digest
from atoll.manifest.model import Manifest
from atoll.manifest.schema import SCHEMA, Kind

# --- seeing every open ---------------------------------------------------------------------

_opened: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only inside recording()


@contextmanager
def recording() -> Iterator[list[str]]:
    global _opened  # noqa: PLW0603 (the hook is process-wide; this turns it on and off)
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


# --- the tree ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``site/`` (the manifest's directory) and, next to it, ``outside/`` with a secret."""
    root = tmp_path_factory.mktemp("fuzz").resolve()
    site, outside = root / "site", root / "outside"
    (site / "sub").mkdir(parents=True)
    outside.mkdir()
    (site / "motd").write_text("hello\n")
    (site / "sub" / "inner").write_text("inner\n")
    (site / "parent.toml").write_text('[image]\nname = "p"\nversion = "1"\n')
    (outside / "secret").write_text("root:$6$secret:::\n")
    (outside / "secret.toml").write_text('[image]\nname = "s"\nversion = "1"\n')
    (site / "link-out").symlink_to(outside / "secret")
    (site / "link-dir").symlink_to(outside)
    (site / "link-in").symlink_to("motd")
    os.mkfifo(site / "fifo")
    (outside / "image.oci.tar").write_bytes(_oci_archive())
    (site / "image.oci.tar").write_bytes(_oci_archive())
    (site / "link-image").symlink_to(outside / "image.oci.tar")
    return root


def _oci_archive() -> bytes:
    """The smallest OCI image layout archive: ``oci-layout`` and an empty ``index.json``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
            ("index.json", b'{"schemaVersion": 2, "manifests": []}'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


SOURCES = [
    "motd",
    "sub/inner",
    "link-in",
    "./sub/../motd",
    "../outside/secret",
    "sub/../../outside/secret",
    "link-out",
    "link-dir/secret",
    "{outside}/secret",
    "/etc/passwd",
    "/proc/self/environ",
    "/dev/zero",
    "fifo",
    "sub",
    ".",
    "",
    "missing",
    "image.oci.tar",
    "../outside/image.oci.tar",
    "link-image",
]

# --- generated values ----------------------------------------------------------------------

_hostile_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="a/.:\n\r\t\x00\x1b\x7f\u2028 -_", max_size=12),
    st.sampled_from(["root", "nobody", "/bin/sh", "a.service", "x" * 5000, "0000", "0644"]),
    st.builds(lambda s, n: s * n, st.sampled_from(["a", "\n", "é"]), st.integers(0, 5000)),
)
_scalars = st.one_of(
    _hostile_text,
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(allow_nan=True),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_hostile_text, inner, max_size=3)
    ),
    max_leaves=8,
)


def _key_value(path: str, kind: Kind) -> st.SearchStrategy[Any]:
    """Mostly a value of the key's kind, sometimes anything."""
    typed: dict[Kind, st.SearchStrategy[Any]] = {
        Kind.STR: _hostile_text,
        Kind.PATH: st.sampled_from(SOURCES),
        Kind.INT: st.integers(-10, 70000),
        Kind.BOOL: st.booleans(),
        Kind.MODE: st.one_of(st.sampled_from(["0000", "0644", "4755", "999"]), st.integers()),
        Kind.ENUM: st.sampled_from(["amd64", "arm64", "initramfs", "x"]),
        Kind.STR_LIST: st.lists(_hostile_text, max_size=3),
        Kind.STR_MAP: st.dictionaries(_hostile_text, st.one_of(_hostile_text, st.integers())),
    }
    if path == "extends":
        return st.one_of(
            st.sampled_from(["parent.toml", "missing.toml", "fifo", "sub", "m.toml"]),
            _hostile_text,
        )
    return st.one_of(typed.get(kind, _values), _values) if kind in typed else _values


def _entry(keys: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={name: _key_value(name, key.kind) for name, key in keys.items()},
    )


def _section(name: str) -> st.SearchStrategy[Any]:
    key = SCHEMA[name]
    if key.kind is Kind.TABLE:
        return _entry(dict(key.keys))
    if key.kind is Kind.TABLE_LIST:
        return st.lists(_entry(dict(key.keys)), max_size=3)
    return _key_value(name, key.kind)


_manifests = st.fixed_dictionaries(
    {"image": st.fixed_dictionaries({"name": st.just("x"), "version": st.just("1")})},
    optional={
        **{name: _section(name) for name in SCHEMA if name != "image"},
        "unknown": _values,
    },
)


def _toml(value: Any) -> str:
    """A value as inline TOML (json's string escapes are TOML's, except lone surrogates)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def _document(manifest: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in manifest.items())


_texts = st.one_of(
    _manifests.map(_document),
    st.builds(lambda d: "x = " + "[" * d + "]" * d + "\n", st.integers(1, 3000)),
    st.builds(lambda d: "x = " + "{a = " * d + "1" + "}" * d + "\n", st.integers(1, 3000)),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)

# --- the property --------------------------------------------------------------------------


def _outside(site: Path, source: str) -> bool:
    return not Path(os.path.realpath(site / source)).is_relative_to(site)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=_texts)
def test_any_manifest_loads_or_is_refused_as_input(tree: Path, text: str) -> None:
    site = tree / "site"
    text = text.replace("{outside}", str(tree / "outside"))
    path = site / "m.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    with recording() as opened:
        try:
            manifest: Manifest | None = load_manifest(path)
        except ManifestError as e:
            assert e.exit_code == EXIT_BAD_INPUT
            assert e.problems
            for problem in e.problems:
                assert ".toml" in problem, problem  # names the file
                assert "\n" not in problem and len(problem) < 1000, problem[:2000]
            manifest = None
        if manifest is not None:
            manifest_digest(manifest)  # reads every source
    parent = _extends(site, text)  # a manifest may extend one anywhere (docs/manifest.md)
    archives = _archives(site, text)  # checked to be OCI archives when outside
    for name in opened:
        real = Path(os.path.realpath(name))
        if real.is_relative_to(site) or real == parent:
            continue
        assert real in archives, name
        assert stat.S_ISREG(real.stat().st_mode), name  # an outside FIFO or device: never opened
    if manifest is None:
        return
    for entry in manifest.files:
        if entry.source is not None:
            assert entry.source.is_relative_to(site) and entry.source.is_file(), entry
    for raw_entry in _raw_files(text):
        source = raw_entry.get("source")
        assert not (isinstance(source, str) and _outside(site, source)), source


def _extends(site: Path, text: str) -> Path | None:
    """The file the generated manifest extends, resolved as the loader resolves it."""
    try:
        parent = tomllib.loads(text).get("extends")
    except (ValueError, RecursionError):
        return None
    if not isinstance(parent, str) or "\x00" in parent:
        return None  # refused before any open
    return Path(os.path.realpath(site / parent))


def _archives(site: Path, text: str) -> set[Path]:
    """The archives the generated manifest names (preloads, the toolbox), resolved as the
    loader resolves them."""
    try:
        raw = tomllib.loads(text)
        preload = raw.get("containers", {}).get("preload", [])
        toolbox = raw.get("agent", {}).get("toolbox_archive")
    except (ValueError, RecursionError, AttributeError):
        return set()
    names = (
        [e.get("archive") for e in preload if isinstance(e, dict)]
        if isinstance(preload, list)
        else []
    )
    names.append(toolbox)
    return {
        Path(os.path.realpath(site / name))
        for name in names
        if isinstance(name, str) and "\x00" not in name
    }


def _raw_files(text: str) -> list[dict[str, Any]]:
    files = tomllib.loads(text).get("files", [])
    return [f for f in files if isinstance(f, dict)]


IMAGE: dict[str, Any] = {"name": "x", "version": "1"}

# Regular files, inside the tree or not: a manifest valid but for where its sources lie.
REGULAR = [
    s
    for s in SOURCES
    if s not in {"/proc/self/environ", "/dev/zero", "fifo", "sub", ".", "", "missing"}
]

_sourced: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "image": st.just(IMAGE),
        "files": st.lists(
            st.fixed_dictionaries(
                {
                    "path": st.sampled_from(["/etc/a", "/etc/b", "/usr/c"]),
                    "source": st.sampled_from(REGULAR),
                }
            ),
            min_size=1,
            max_size=3,
            unique_by=lambda f: f["path"],
        ),
    },
    optional={"extends": st.just("parent.toml")},
)


@settings(max_examples=100, deadline=None)
@given(manifest=_sourced)
def test_a_source_outside_the_tree_is_refused_and_never_read(
    tree: Path, manifest: dict[str, Any]
) -> None:
    site = tree / "site"
    sources = [f["source"].replace("{outside}", str(tree / "outside")) for f in manifest["files"]]
    for entry, source in zip(manifest["files"], sources, strict=True):
        entry["source"] = source
    path = site / "m.toml"
    path.write_text(_document(manifest))
    outside = [s for s in sources if _outside(site, s)]
    with recording() as opened:
        try:
            manifest_digest(load_manifest(path))  # the digest reads every source
            refused: list[str] = []
        except ManifestError as e:
            refused = e.problems
    assert len(refused) == len(outside), (refused, outside)
    assert all("source" in p and "--allow-source-outside" in p for p in refused), refused
    for name in opened:
        assert Path(os.path.realpath(name)).is_relative_to(site), name


_preloaded: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "image": st.just(IMAGE),
        "containers": st.fixed_dictionaries(
            {
                "preload": st.lists(
                    st.fixed_dictionaries(
                        {
                            # every one found (a missing file stops loading earlier)
                            "archive": st.sampled_from([s for s in SOURCES if s != "missing"]),
                            "reference": st.sampled_from(
                                ["docker.io/a/b:1", "docker.io/a/c:1", "example.org/d:2"]
                            ),
                        }
                    ),
                    min_size=1,
                    max_size=3,
                    unique_by=lambda p: p["reference"],
                )
            }
        ),
    }
)


@settings(max_examples=100, deadline=None)
@given(manifest=_preloaded)
def test_an_archive_outside_the_tree_must_be_an_oci_archive(
    tree: Path, manifest: dict[str, Any]
) -> None:
    site = tree / "site"
    entries = manifest["containers"]["preload"]
    for entry in entries:
        entry["archive"] = entry["archive"].replace("{outside}", str(tree / "outside"))
    path = site / "m.toml"
    path.write_text(_document(manifest))
    with recording() as opened:
        try:
            load_manifest(path)
            refused: list[str] = []
        except ManifestError as e:
            refused = e.problems
    expected = [e["archive"] for e in entries if not _acceptable(site, e["archive"])]
    assert len(refused) == len(expected), (refused, expected)
    assert all("archive" in p for p in refused), refused
    for name in opened:  # the manifest, and only regular files named as archives
        real = Path(os.path.realpath(name))
        assert real == path or stat.S_ISREG(real.stat().st_mode), name


def _acceptable(site: Path, archive: str) -> bool:
    """Inside the tree: any regular file; outside: only an OCI archive."""
    real = Path(os.path.realpath(site / archive))
    if not real.is_file():
        return False
    return real.is_relative_to(site) or real.read_bytes() == _oci_archive()

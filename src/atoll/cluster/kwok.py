"""kwok, built from the Go module proxy and cached by content, for the scale benchmark.

kwok (``sigs.k8s.io/kwok/cmd/kwok``) keeps fake Nodes Ready against a real API
server without kubelets: the operator's scale benchmark (:mod:`atoll.bench.operator`)
runs a thousand of them on ``atoll cluster up``'s control plane. No Debian
package carries it, so atoll builds it the way it builds Kubernetes
(:mod:`atoll.cluster.build`, whose Go environment, locking and partial-entry
pattern this module reuses): the wrapper module in the checkout's ``kwok/``
directory requires ``sigs.k8s.io/kwok`` at one release, its ``go.sum`` pins
every module. kwok's own go.mod has no replace directives
(:func:`check_upstream` refuses a release that gains some: a wrapper module
would then have to copy them, as the Kubernetes one does).

The binary is reproducible like Kubernetes': ``-trimpath``, ``-buildvcs=false``,
``-ldflags "-s -w -buildid="`` and ``CGO_ENABLED=0`` (the release's version is
already in its source, ``pkg/consts``), cached under ``<cache>/kwok/<key>/``
(key: :func:`atoll.cluster.build.cache_key` over the wrapper, the toolchain and
the flags), with Go's module and build caches shared under ``<cache>/go``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from atoll import durable, process
from atoll.cache import default_cache
from atoll.cluster.build import (
    CHECKOUT,
    OUTPUT_ENV,
    CacheKey,
    GoMod,
    GoPaths,
    _Go,
    _locked,
    _remove_partials,
    _sha256,
    build_env,
    cache_key,
    compiled_package,
    find_go,
    go_accepts,
    parse_go_mod,
)
from atoll.errors import AtollError, InputError, ToolMissing
from atoll.progress import Reporter

WRAPPER = CHECKOUT / "kwok"
MODULE = "sigs.k8s.io/kwok"
PACKAGE = "sigs.k8s.io/kwok/cmd/kwok"
TARGET = "kwok"
# Stripped, no build id; upstream's hack/releases.sh also sets pkg/consts.Version,
# which the tagged source already holds.
LDFLAGS = "-s -w -buildid="
WHAT = "kwok"
# The kwok binary has no stages of its own (kwokctl writes them): the entry keeps
# upstream's node stages from the pinned module (verified by go.sum) in stages.yaml,
# given to kwok with --config. Initialize (Ready), then heartbeat with a Lease.
STAGE_FILES: tuple[str, ...] = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
)
STAGES = "stages.yaml"

_RELEASE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")


# -- the pure part ----------------------------------------------------------------------------


def wrapper_version(wrapper: GoMod, *, source: str) -> str:
    """The kwok release the wrapper requires (``vX.Y.Z``); :class:`InputError` otherwise."""
    version = wrapper.requires.get(MODULE)
    if version is None:
        raise InputError(f"{source}: does not require {MODULE}")
    if not _RELEASE.match(version):
        raise InputError(f"{source}: require {MODULE} {version}: not a release (vX.Y.Z)")
    if wrapper.replaces:
        raise InputError(
            f"{source}: replace directives ({', '.join(sorted(wrapper.replaces))}): "
            f"the kwok wrapper pins {MODULE} and nothing else"
        )
    return version


def check_upstream(upstream: GoMod, version: str, *, source: str) -> None:
    """Refuse a kwok release whose go.mod replaces modules (the wrapper would need them)."""
    if upstream.replaces:
        raise InputError(
            f"{source}: {MODULE} {version} replaces {', '.join(sorted(upstream.replaces))}; "
            "copy those replace directives into kwok/go.mod (as kubernetes/go.mod does)",
        )


def reports_version(output: str, version: str) -> bool:
    """Whether ``kwok --version``'s output names the pinned release (``0.8.0`` for v0.8.0)."""
    number = re.escape(version.removeprefix("v"))
    return bool(re.search(rf"(?<![\w.])v?{number}(?![\w.])", output))


def build_argv(output: Path) -> list[str]:
    return ["build", "-v", f"-ldflags={LDFLAGS}", "-o", os.fspath(output), PACKAGE]


def stage_documents(texts: Sequence[str]) -> str:
    """One YAML stream of the stage files (each a single document)."""
    return "".join(f"---\n{text.strip()}\n" for text in texts)


# -- apply ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KwokBinary:
    version: str
    key: CacheKey
    path: Path
    stages: Path  # upstream's node stages, for --config
    from_cache: bool


@dataclass(frozen=True)
class _Plan:
    version: str
    go_version: str
    key: CacheKey


def build(
    reporter: Reporter,
    *,
    cache: Path | None = None,
    go_cache: Path | None = None,
    wrapper: Path = WRAPPER,
    environ: Mapping[str, str] = os.environ,
) -> KwokBinary:
    """The kwok binary of the release pinned in ``wrapper``: from the cache, or built into it
    (``<cache>/kwok/<key>/kwok``; Go's caches in ``go_cache``, default ``<cache>/go``)."""
    found = _find(reporter, cache, go_cache, wrapper, environ, build_missing=True)
    assert found is not None
    return found


def cached(
    reporter: Reporter,
    *,
    cache: Path | None = None,
    go_cache: Path | None = None,
    wrapper: Path = WRAPPER,
    environ: Mapping[str, str] = os.environ,
) -> KwokBinary | None:
    """The pinned release's binary when the cache has it; ``None`` otherwise (never builds)."""
    return _find(reporter, cache, go_cache, wrapper, environ, build_missing=False)


def _find(
    reporter: Reporter,
    cache: Path | None,
    go_cache: Path | None,
    wrapper: Path,
    environ: Mapping[str, str],
    *,
    build_missing: bool,
) -> KwokBinary | None:
    root = cache if cache is not None else default_cache(environ)
    paths = GoPaths(go_cache if go_cache is not None else root / "go")
    try:
        go_mod = (wrapper / "go.mod").read_bytes()
        go_sum = (wrapper / "go.sum").read_bytes()
    except OSError as e:
        raise InputError(f"{e.filename}: cannot read the kwok build wrapper: {e.strerror}") from e
    source = os.fspath(wrapper / "go.mod")
    parsed = parse_go_mod(go_mod.decode(), source=source)
    version = wrapper_version(parsed, source=source)
    with tempfile.TemporaryDirectory(prefix="atoll-kwok-") as scratch:
        go = _Go(find_go(environ.get("PATH", "")), build_env(paths, environ), Path(scratch), WHAT)
        (go.module / "go.mod").write_bytes(go_mod)
        (go.module / "go.sum").write_bytes(go_sum)
        plan = _plan(go, parsed, version, go_mod, go_sum, source)
        entries = root / "kwok"
        hit = _cached(entries / plan.key, plan)
        if hit is not None or not build_missing:
            return hit
        with _locked(entries, reporter, WHAT):
            hit = _cached(entries / plan.key, plan)
            if hit is not None:
                return hit
            _remove_partials(entries)
            return _build_entry(go, plan, entries, reporter)


def _plan(go: _Go, parsed: GoMod, version: str, go_mod: bytes, go_sum: bytes, source: str) -> _Plan:
    go_version = go.text(["env", "GOVERSION"]).strip()
    if not go_accepts(go_version, parsed.go):
        raise ToolMissing(
            f"{go.path} is {go_version}; {source} needs go {parsed.go} or newer "
            "(GOTOOLCHAIN=local: no other Go is downloaded)",
            hint="install a newer Go, or pin an older kwok release",
        )
    listed = go.json(["list", "-m", "-json", MODULE])
    upstream_path = listed.get("GoMod")
    if not isinstance(upstream_path, str) or not upstream_path:
        raise AtollError(f"go list -m -json {MODULE}: no GoMod file in its answer")
    try:
        upstream_text = Path(upstream_path).read_text()
    except OSError as e:
        raise AtollError(f"{upstream_path}: cannot read {MODULE}'s go.mod: {e.strerror}") from e
    upstream_source = f"{MODULE}@{version}/go.mod"
    check_upstream(parse_go_mod(upstream_text, source=upstream_source), version, source=source)
    key = cache_key(go_mod, go_sum, go_version, LDFLAGS, (), (TARGET,))
    return _Plan(version, go_version, key)


def _cached(entry: Path, plan: _Plan) -> KwokBinary | None:
    if all((entry / name).is_file() for name in ("build.json", TARGET, STAGES)):
        return KwokBinary(plan.version, plan.key, entry / TARGET, entry / STAGES, from_cache=True)
    return None


def _build_entry(go: _Go, plan: _Plan, entries: Path, reporter: Reporter) -> KwokBinary:
    partial = Path(tempfile.mkdtemp(prefix=f".{plan.key}.", suffix=".partial", dir=entries))
    try:
        binary = partial / TARGET
        with reporter.stage(TARGET, f"go build {PACKAGE}@{plan.version}"):
            packages = len(go.text(["list", "-deps", "-f", "{{.ImportPath}}", PACKAGE]).split())
            done = 0

            def line(text: str) -> None:
                nonlocal done
                if compiled_package(text):
                    done = min(done + 1, packages)
                    reporter.progress(TARGET, done, packages, "packages")

            go.run(build_argv(binary), on_line=line)
        _check_version(binary, plan.version)
        entry = partial / "entry"
        entry.mkdir()
        durable.replace(binary, entry / TARGET)
        durable.write_atomic(entry / STAGES, stage_documents(_stage_files(go)))
        record = {
            "module": MODULE,
            "version": plan.version,
            "go": plan.go_version,
            "ldflags": LDFLAGS,
            "env": OUTPUT_ENV,
            "sha256": {TARGET: _sha256(entry / TARGET)},
        }
        durable.write_atomic(entry / "build.json", json.dumps(record, indent=1, sort_keys=True))
        final = entries / plan.key
        durable.replace(entry, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return KwokBinary(plan.version, plan.key, final / TARGET, final / STAGES, from_cache=False)


def _stage_files(go: _Go) -> list[str]:
    """The stage files from the pinned module's source (downloaded and verified by go)."""
    downloaded = go.json(["mod", "download", "-json", MODULE])
    directory = downloaded.get("Dir")
    if not isinstance(directory, str) or not directory:
        raise AtollError(f"go mod download -json {MODULE}: no Dir in its answer")
    try:
        return [(Path(directory) / name).read_text() for name in STAGE_FILES]
    except OSError as e:
        raise AtollError(f"{e.filename}: cannot read kwok's stage file: {e.strerror}") from e


def _check_version(binary: Path, version: str) -> None:
    result = process.as_text(process.run([binary, "--version"], env={}, check=False))
    if not reports_version(result.stdout + result.stderr, version):
        raise AtollError(
            f"{binary} --version: {(result.stdout + result.stderr).strip()!r} does not name "
            f"{MODULE} {version}"
        )

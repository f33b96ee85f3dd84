"""The Kubernetes binaries, built from the Go module proxy and cached by content.

No Debian package carries the kubelet or the API server, so atoll builds
``kubelet``, ``kube-apiserver``, ``kube-controller-manager``, ``kube-scheduler``
and ``kubectl`` from ``k8s.io/kubernetes`` at the one release pinned by the
wrapper module in the checkout's ``kubernetes/`` directory (docs/kubernetes.md):
its ``go.mod`` requires ``k8s.io/kubernetes vX.Y.Z`` and replaces every staging
module ``k8s.io/<m>`` (which upstream points at ``./staging/src/``) with its
published ``v0.Y.Z``; its ``go.sum`` pins and verifies every module's contents
without a checksum database. Go is a build tool here, like gcc for PID 1.

Plan, then apply:

* the pure part reads the wrapper's ``go.mod``, checks its replace list and
  ``godebug`` line against the tag's own ``go.mod`` (:func:`check_wrapper`),
  and derives what makes the bytes: upstream's build tags, the version
  ldflags (:func:`version_ldflags`, the build date fixed to the release's),
  the environment (:func:`build_env`) and the cache key (:func:`cache_key`);
* :func:`build` runs ``go`` through :func:`atoll.process.run`, one binary at a
  time with ``go build -v`` counted as progress, checks that each binary
  reports the pinned version, and moves the finished set into
  ``<cache>/kubernetes/<key>/`` in one rename. Work happens in a
  ``.<key>.*.partial`` directory beside it: an interrupted build leaves no
  entry, and the next build (under the same lock) removes what it left.

Go's own caches live beside the binaries, under ``<cache>/go/`` (``mod`` for
the module cache, ``build`` for the build cache), so a machine that has built
once rebuilds a changed key from its warm build cache. The cache root is
``$ATOLL_CACHE`` or ``~/.cache/atoll``, as for compose.

The build is reproducible: ``-trimpath``, ``-buildvcs=false`` (the wrapper
sits inside atoll's git checkout), ``-buildid=``, ``CGO_ENABLED=0`` and a fixed
build date give the same bytes in any directory (docs/kubernetes.md has the
measured check).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NewType

from atoll import durable, process
from atoll.cache import default_cache
from atoll.errors import AtollError, InputError, ToolError, ToolMissing
from atoll.progress import Reporter

CacheKey = NewType("CacheKey", str)

# Bump when the layout of a cache entry or the way it is built changes.
FORMAT = 1

CHECKOUT = Path(__file__).resolve().parents[3]
WRAPPER = CHECKOUT / "kubernetes"

TARGETS: tuple[str, ...] = (
    "kubelet",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
)
COMMAND_PACKAGE = "k8s.io/kubernetes/cmd/{}"

# hack/lib/golang.sh (kube::golang::build_binaries) in the pinned tag, for a
# release (non-debug) build: "selinux,notest" always, "grpcnotrace" with -s -w.
BUILD_TAGS: tuple[str, ...] = ("selinux", "notest", "grpcnotrace")

# hack/lib/version.sh sets each version variable in both packages.
VERSION_PACKAGES: tuple[str, ...] = (
    "k8s.io/client-go/pkg/version",
    "k8s.io/component-base/version",
)

# The environment that decides the bytes (part of the cache key). Upstream
# builds kubectl and the control plane static and the kubelet with cgo where
# it can; atoll builds all five static: no gcc needed, no libc to match.
OUTPUT_ENV: dict[str, str] = {
    "CGO_ENABLED": "0",
    "GOOS": "linux",
    "GOARCH": "amd64",
    # readonly: go.mod and go.sum are committed and complete; a build never edits them.
    # buildvcs=false: the wrapper sits in atoll's checkout, whose commit is not Kubernetes'.
    "GOFLAGS": "-mod=readonly -trimpath -buildvcs=false",
}
DEFAULT_GOPROXY = "https://proxy.golang.org,direct"
# Where Go's own installer puts it; searched after $PATH.
GO_FALLBACKS: tuple[str, ...] = ("/usr/local/go/bin/go",)

_RELEASE = re.compile(r"^v(?P<major>[1-9]\d*)\.(?P<minor>\d+)\.(?P<patch>\d+)$")
_GO_VERSION = re.compile(r"\bgo(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?")
_STAGING_PATH = "./staging/src/"


# -- the pure part: what the wrapper pins and what makes the bytes -------------------------


@dataclass(frozen=True)
class Release:
    """A Kubernetes release tag, ``vMAJOR.MINOR.PATCH``."""

    major: int
    minor: int
    patch: int

    @property
    def version(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"

    @property
    def staging_version(self) -> str:
        """The version the staging modules (``k8s.io/api`` ...) are published at: ``v0.Y.Z``."""
        return f"v0.{self.minor}.{self.patch}"


def parse_release(text: str, *, source: str) -> Release:
    found = _RELEASE.match(text)
    if found is None:
        raise InputError(f"{source}: {text!r} is not a Kubernetes release (vMAJOR.MINOR.PATCH)")
    return Release(int(found["major"]), int(found["minor"]), int(found["patch"]))


@dataclass(frozen=True)
class GoMod:
    """The directives of a go.mod file that the wrapper is made of."""

    module: str
    go: str | None
    godebug: tuple[str, ...]  # "default=go1.25", in file order
    requires: dict[str, str]  # module path -> version
    replaces: dict[str, str]  # module path -> what it is replaced with ("./dir", "mod vX")


def parse_go_mod(text: str, *, source: str) -> GoMod:
    """The module, go, godebug, require and replace directives of a go.mod text.

    Comments are dropped; single-line and block forms are both read. Replaces
    of one version only (``m vX => ...``) are kept under ``m``, like any other.
    """
    module = ""
    go: str | None = None
    godebug: list[str] = []
    requires: dict[str, str] = {}
    replaces: dict[str, str] = {}
    for verb, args, number in _directives(text):
        if verb == "module":
            module = args
        elif verb == "go":
            go = args
        elif verb == "godebug":
            godebug.append(args.replace(" ", ""))
        elif verb == "require":
            path, _, version = args.partition(" ")
            requires[path] = version.strip()
        elif verb == "replace":
            old, arrow, new = args.partition("=>")
            if not arrow:
                raise InputError(f"{source}:{number}: replace without '=>': {args!r}")
            replaces[old.split()[0]] = " ".join(new.split())
    if not module:
        raise InputError(f"{source}: no module directive")
    return GoMod(module, go, tuple(godebug), requires, replaces)


def _directives(text: str) -> Iterator[tuple[str, str, int]]:
    """(verb, arguments, line number) per directive, block forms unfolded."""
    block: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block is not None:
            if line == ")":
                block = None
            else:
                yield block, line, number
            continue
        verb, _, args = line.partition(" ")
        args = args.strip()
        if args == "(":
            block = verb
        else:
            yield verb, args, number


@dataclass(frozen=True)
class StagingPins:
    """What the wrapper copies from the tag's go.mod: its staging modules and godebug lines."""

    staging: tuple[str, ...]  # k8s.io/<m>, sorted
    godebug: tuple[str, ...]

    def replaces(self, release: Release) -> dict[str, str]:
        """The wrapper's replace list: each staging module at its published version."""
        return {m: f"{m} {release.staging_version}" for m in self.staging}


def staging_pins(upstream_go_mod: str, *, source: str) -> StagingPins:
    """The staging modules (those upstream replaces with ``./staging/src/<m>``) and godebug."""
    parsed = parse_go_mod(upstream_go_mod, source=source)
    staging = sorted(old for old, new in parsed.replaces.items() if new == f"{_STAGING_PATH}{old}")
    if not staging:
        raise InputError(f"{source}: no replace directive points at {_STAGING_PATH}")
    return StagingPins(tuple(staging), parsed.godebug)


def wrapper_release(wrapper: GoMod, *, source: str) -> Release:
    version = wrapper.requires.get("k8s.io/kubernetes")
    if version is None:
        raise InputError(f"{source}: does not require k8s.io/kubernetes")
    return parse_release(version, source=f"{source}: require k8s.io/kubernetes")


def check_wrapper(wrapper: GoMod, pins: StagingPins, release: Release, *, source: str) -> None:
    """Raise :class:`InputError` listing every way the wrapper strays from the tag's go.mod."""
    problems: list[str] = []
    wanted = pins.replaces(release)
    for module, target in sorted(wanted.items()):
        have = wrapper.replaces.get(module)
        if have is None:
            problems.append(f"replace {module} => {target}: missing")
        elif have != target:
            problems.append(f"replace {module} => {have}: want {target}")
    problems.extend(
        f"replace {module} => {wrapper.replaces[module]}: not a staging module of {release.version}"
        for module in sorted(set(wrapper.replaces) - set(wanted))
    )
    if wrapper.godebug != pins.godebug:
        problems.append(
            f"godebug {' '.join(wrapper.godebug) or '(none)'}: want "
            f"{' '.join(pins.godebug) or '(none)'} as in k8s.io/kubernetes {release.version}"
        )
    if problems:
        raise InputError(
            f"{source}: does not match k8s.io/kubernetes {release.version}'s go.mod:\n"
            + "\n".join(f"  {p}" for p in problems),
            hint="copy the staging replaces and the godebug line from the tag's go.mod",
        )


def go_accepts(go_version: str, go_directive: str | None) -> bool:
    """Whether a toolchain (``go1.26.8``) builds a module that says ``go 1.25.0`` itself."""
    have = _version_tuple(go_version)
    if go_directive is None:
        return True
    want = _version_tuple(f"go{go_directive}")
    return have is not None and want is not None and have >= want


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    found = _GO_VERSION.search(text)
    if found is None:
        return None
    return int(found["major"]), int(found["minor"]), int(found["patch"] or 0)


def build_date(release_time: str, *, source: str) -> str:
    """The release's commit time as upstream writes buildDate (``%Y-%m-%dT%H:%M:%SZ``, UTC)."""
    try:
        moment = datetime.fromisoformat(release_time.replace("Z", "+00:00"))
    except ValueError as e:
        raise AtollError(f"{source}: Time {release_time!r} is not a time") from e
    if moment.tzinfo is None:
        raise AtollError(f"{source}: Time {release_time!r} has no time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_ldflags(release: Release, date: str) -> str:
    """The linker flags of a release build: stripped, no build id, version variables set.

    Upstream's hack/lib/version.sh sets buildDate, gitVersion, gitMajor and
    gitMinor in both version packages; gitCommit needs a git checkout and
    stays at its default.
    """
    values = (
        ("buildDate", date),
        ("gitVersion", release.version),
        ("gitMajor", str(release.major)),
        ("gitMinor", str(release.minor)),
    )
    sets = [
        f"-X {package}.{name}={value}" for name, value in values for package in VERSION_PACKAGES
    ]
    return " ".join(["-s", "-w", "-buildid=", *sets])


@dataclass(frozen=True)
class GoPaths:
    """Where Go keeps its module cache and build cache for atoll."""

    root: Path

    @property
    def modules(self) -> Path:
        return self.root / "mod"

    @property
    def build(self) -> Path:
        return self.root / "build"


def build_env(paths: GoPaths, environ: Mapping[str, str]) -> dict[str, str]:
    """What ``go`` runs with, besides :func:`atoll.process.clean_environment`.

    The toolchain is the machine's (``GOTOOLCHAIN=local``: no download of
    another Go), no user go.env file applies (``GOENV=off``), and the proxy
    and checksum database are the user's or Go's defaults. Nothing turns
    verification off: go.sum is committed and checked for every module.
    """
    env = {
        **OUTPUT_ENV,
        "GOTOOLCHAIN": "local",
        "GOENV": "off",
        "GOMODCACHE": os.fspath(paths.modules),
        "GOCACHE": os.fspath(paths.build),
        "GOPATH": os.fspath(paths.root / "path"),
        "GOPROXY": environ.get("GOPROXY") or DEFAULT_GOPROXY,
    }
    if environ.get("GOSUMDB"):
        env["GOSUMDB"] = environ["GOSUMDB"]
    return env


@dataclass(frozen=True)
class BuildPlan:
    """Everything that decides the binaries' bytes, and the key they are cached under."""

    release: Release
    go_version: str
    ldflags: str
    tags: tuple[str, ...]
    targets: tuple[str, ...]
    key: CacheKey

    def build_argv(self, target: str, output: Path) -> list[str]:
        """go's arguments for one binary."""
        return [
            "build",
            "-v",
            f"-tags={','.join(self.tags)}",
            f"-ldflags={self.ldflags}",
            "-o",
            os.fspath(output),
            COMMAND_PACKAGE.format(target),
        ]

    def list_argv(self, target: str) -> list[str]:
        """go's arguments that list the packages one binary is made of."""
        return [
            "list",
            "-deps",
            f"-tags={','.join(self.tags)}",
            "-f",
            "{{.ImportPath}}",
            COMMAND_PACKAGE.format(target),
        ]


def cache_key(
    go_mod: bytes, go_sum: bytes, go_version: str, ldflags: str, tags: tuple[str, ...],
    targets: tuple[str, ...],
) -> CacheKey:  # fmt: skip
    """sha256 over what decides the bytes: the pinned modules, the toolchain, the flags."""
    digest = hashlib.sha256()
    fields = [
        f"format {FORMAT}".encode(),
        b"go.mod",
        go_mod,
        b"go.sum",
        go_sum,
        go_version.encode(),
        ldflags.encode(),
        ",".join(tags).encode(),
        ",".join(targets).encode(),
        *(f"{k}={v}".encode() for k, v in sorted(OUTPUT_ENV.items())),
    ]
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return CacheKey(digest.hexdigest())


def version_check(target: str) -> tuple[str, ...]:
    """The arguments that make a binary print its version."""
    return ("version", "--client") if target == "kubectl" else ("--version",)


def reports_version(target: str, output: str, release: Release) -> bool:
    """Whether ``<target> --version``'s output names exactly the pinned release."""
    if target == "kubectl":
        wanted = f"Client Version: {release.version}"
    else:
        wanted = f"Kubernetes {release.version}"
    return wanted in (line.strip() for line in output.splitlines())


def compiled_package(line: str) -> bool:
    """Whether a line of ``go build -v`` names a package it compiled (not a ``go:`` note)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(("go:", "#")) and " " not in stripped


def find_go(search_path: str, exists: Callable[[str], bool] = os.path.exists) -> str:
    """The ``go`` on ``search_path`` (the user's $PATH), else Go's own install location."""
    found = shutil.which("go", path=search_path) if search_path else None
    if found:
        return found
    for candidate in GO_FALLBACKS:
        if exists(candidate):
            return candidate
    raise ToolMissing(
        "go: not found on $PATH nor in /usr/local/go/bin (needed to build the Kubernetes binaries)",
        hint="install Go >= the go line of kubernetes/go.mod (Go's own build in /usr/local/go: "
        "Debian 12's golang-go is 1.19)",
    )


# -- apply: run go, check, cache ------------------------------------------------------------


@dataclass(frozen=True)
class KubernetesBinaries:
    """The five binaries of one pinned release, in the cache (or copied to ``--output``)."""

    version: str
    key: CacheKey
    directory: Path
    binaries: dict[str, Path]  # target name -> file
    from_cache: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "key": self.key,
            "directory": os.fspath(self.directory),
            "binaries": {name: os.fspath(path) for name, path in self.binaries.items()},
            "from_cache": self.from_cache,
        }


@dataclass(frozen=True)
class _Wrapper:
    go_mod: bytes
    go_sum: bytes
    parsed: GoMod
    release: Release
    source: Path


def _read_wrapper(directory: Path) -> _Wrapper:
    try:
        go_mod = (directory / "go.mod").read_bytes()
        go_sum = (directory / "go.sum").read_bytes()
    except OSError as e:
        raise InputError(
            f"{e.filename}: cannot read the Kubernetes build wrapper: {e.strerror}"
        ) from e
    source = directory / "go.mod"
    parsed = parse_go_mod(go_mod.decode(), source=os.fspath(source))
    release = wrapper_release(parsed, source=os.fspath(source))
    return _Wrapper(go_mod, go_sum, parsed, release, source)


def build(
    reporter: Reporter,
    *,
    cache: Path | None = None,
    go_cache: Path | None = None,
    wrapper: Path = WRAPPER,
    environ: Mapping[str, str] = os.environ,
) -> KubernetesBinaries:
    """The binaries of the release pinned in ``wrapper``: from the cache, or built into it.

    ``cache``: the cache root (default :func:`default_cache`); the entry is
    ``<cache>/kubernetes/<key>/``. ``go_cache``: Go's module and build caches
    (default ``<cache>/go``).
    """
    root = cache if cache is not None else default_cache(environ)
    paths = GoPaths(go_cache if go_cache is not None else root / "go")
    found = _read_wrapper(wrapper)
    with tempfile.TemporaryDirectory(prefix="atoll-kubernetes-") as scratch:
        go = _Go(find_go(environ.get("PATH", "")), build_env(paths, environ), Path(scratch))
        go.prepare(found)
        plan = _plan(go, found)
        entries = root / "kubernetes"
        hit = _cached(entries / plan.key, plan)
        if hit is not None:
            return hit
        with _locked(entries, reporter):
            hit = _cached(entries / plan.key, plan)
            if hit is not None:
                return hit
            _remove_partials(entries)
            return _build_entry(go, plan, entries, reporter)


@dataclass(frozen=True)
class _Go:
    """The go command as atoll runs it: its environment, in a copy of the wrapper module
    (go.mod and go.sum only: go never writes into the checkout)."""

    path: str
    env: dict[str, str]
    module: Path
    what: str = "the Kubernetes binaries"  # what is built, for error messages (kwok.py: kwok)

    def prepare(self, found: _Wrapper) -> None:
        self.module.mkdir(exist_ok=True)
        (self.module / "go.mod").write_bytes(found.go_mod)
        (self.module / "go.sum").write_bytes(found.go_sum)

    def run(
        self, args: list[str], on_line: Callable[[str], None] | None = None
    ) -> process.Completed[bytes]:
        """Run go; a failure names the go command and ends with go's own message."""
        try:
            return process.run([self.path, *args], env=self.env, cwd=self.module, on_line=on_line)
        except ToolError as e:
            raise ToolError(
                f"building {self.what}: {e.message}",
                argv=e.argv,
                returncode=e.returncode,
                stderr_tail=e.stderr_tail,
            ) from e

    def text(self, args: list[str]) -> str:
        return process.as_text(self.run(args)).stdout

    def json(self, args: list[str]) -> dict[str, object]:
        try:
            value = json.loads(self.text(args))
        except json.JSONDecodeError as e:
            raise AtollError(f"go {' '.join(args)}: output is not JSON: {e}") from e
        if not isinstance(value, dict):
            raise AtollError(f"go {' '.join(args)}: output is not a JSON object")
        return value


def _plan(go: _Go, found: _Wrapper) -> BuildPlan:
    """Check the toolchain, the wrapper against the tag's go.mod, and fix the flags and the key.

    ``go list -m -json`` fetches (or reads from the module cache) the tag's
    go.mod, verified against go.sum, and its time as the proxy records it.
    """
    go_version = go.text(["env", "GOVERSION"]).strip()
    if not go_accepts(go_version, found.parsed.go):
        raise ToolMissing(
            f"{go.path} is {go_version}; {found.source} needs go {found.parsed.go} or newer "
            "(GOTOOLCHAIN=local: no other Go is downloaded)",
            hint="install a newer Go, or pin an older Kubernetes release",
        )
    listed = go.json(["list", "-m", "-json", "k8s.io/kubernetes"])
    go_mod = listed.get("GoMod")
    if not isinstance(go_mod, str) or not go_mod:
        raise AtollError("go list -m -json k8s.io/kubernetes: no GoMod file in its answer")
    try:
        upstream = Path(go_mod).read_text()
    except OSError as e:
        raise AtollError(f"{go_mod}: cannot read k8s.io/kubernetes's go.mod: {e.strerror}") from e
    source = f"k8s.io/kubernetes@{found.release.version}/go.mod"
    pins = staging_pins(upstream, source=source)
    check_wrapper(found.parsed, pins, found.release, source=os.fspath(found.source))
    date = build_date(str(listed.get("Time", "")), source=f"go list -m {source}")
    ldflags = version_ldflags(found.release, date)
    key = cache_key(found.go_mod, found.go_sum, go_version, ldflags, BUILD_TAGS, TARGETS)
    return BuildPlan(found.release, go_version, ldflags, BUILD_TAGS, TARGETS, key)


def _cached(entry: Path, plan: BuildPlan) -> KubernetesBinaries | None:
    binaries = {name: entry / name for name in plan.targets}
    if not (entry / "build.json").is_file() or not all(p.is_file() for p in binaries.values()):
        return None
    return KubernetesBinaries(plan.release.version, plan.key, entry, binaries, from_cache=True)


@contextlib.contextmanager
def _locked(
    entries: Path, reporter: Reporter, what: str = "the Kubernetes binaries"
) -> Iterator[None]:
    """One build at a time per cache: a second waits, then finds the first's entry."""
    entries.mkdir(parents=True, exist_ok=True)
    with open(entries / ".lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.info(f"waiting for another build of {what} in {entries}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_partials(entries: Path) -> None:
    """What an interrupted build left (we hold the lock: nobody is writing them)."""
    for leftover in entries.glob(".*.partial"):
        shutil.rmtree(leftover, ignore_errors=True)


def _build_entry(go: _Go, plan: BuildPlan, entries: Path, reporter: Reporter) -> KubernetesBinaries:
    partial = Path(tempfile.mkdtemp(prefix=f".{plan.key}.", suffix=".partial", dir=entries))
    try:
        with reporter.stage("download modules", "k8s.io/kubernetes " + plan.release.version):
            _download(go, reporter)
        output = partial / "out"
        output.mkdir()
        built: set[str] = set()
        for target in plan.targets:
            with reporter.stage(target, f"go build {COMMAND_PACKAGE.format(target)}"):
                _build_one(go, plan, target, output / target, reporter, built)
                _check_version(output / target, target, plan.release)
        entry = _seal(plan, output, partial / "entry")
        final = entries / plan.key
        durable.replace(entry, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    binaries = {name: final / name for name in plan.targets}
    return KubernetesBinaries(plan.release.version, plan.key, final, binaries, from_cache=False)


def _download(go: _Go, reporter: Reporter) -> None:
    """Every module the build needs, verified against go.sum (progress: modules listed)."""
    count = 0

    def line(text: str) -> None:
        nonlocal count
        if text.startswith('\t"Path":'):
            count += 1
            reporter.progress("download modules", count, None, "modules")

    go.run(["mod", "download", "-json"], on_line=line)


def _build_one(
    go: _Go, plan: BuildPlan, target: str, binary: Path, reporter: Reporter, built: set[str]
) -> None:
    """Build one binary; ``built``: the packages earlier binaries compiled (now cached)."""
    packages = set(go.text(plan.list_argv(target)).split())
    total = max(1, len(packages - built))  # what this binary adds: the rest is in Go's cache
    built |= packages
    done = 0

    def line(text: str) -> None:
        nonlocal done
        if compiled_package(text):
            done = min(done + 1, total)
            reporter.progress(target, done, total, "packages")

    go.run(plan.build_argv(target, binary), on_line=line)
    reporter.progress(target, total, total, "packages")


def _check_version(binary: Path, target: str, release: Release) -> None:
    result = process.as_text(process.run([binary, *version_check(target)], env={}))
    if not reports_version(target, result.stdout, release):
        raise AtollError(
            f"{binary}: reports {result.stdout.strip()!r}, not {release.version}: "
            "the version ldflags did not take"
        )


def _seal(plan: BuildPlan, output: Path, entry: Path) -> Path:
    """The finished entry: each binary flushed and moved in, then its record."""
    entry.mkdir()
    digests: dict[str, str] = {}
    for target in plan.targets:
        durable.replace(output / target, entry / target)
        digests[target] = _sha256(entry / target)
    record = {
        "format": FORMAT,
        "version": plan.release.version,
        "go": plan.go_version,
        "tags": list(plan.tags),
        "ldflags": plan.ldflags,
        "env": OUTPUT_ENV,
        "sha256": digests,
    }
    durable.write_atomic(entry / "build.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    return entry


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_out(built: KubernetesBinaries, output: Path) -> KubernetesBinaries:
    """The binaries copied (atomically, mode 0755) into ``output``; the result points there."""
    output.mkdir(parents=True, exist_ok=True)
    binaries = {}
    for name, path in built.binaries.items():
        durable.copy(path, output / name, mode=0o755)
        binaries[name] = output / name
    return KubernetesBinaries(built.version, built.key, output, binaries, built.from_cache)

"""Load a manifest: parse TOML, follow ``extends``, validate everything, build the model.

Validation happens completely before any side effect and reports every
problem at once, each naming the file, the key and the value, with the near
miss when there is one::

    examples/web.toml: [packages].include: unknown package 'nginxx' (did you mean 'nginx'?)

It runs in two passes so a bad manifest costs seconds:

1. structure (no network): TOML syntax, unknown keys, wrong types, missing
   required keys, files that do not exist, conflicts (a package both included
   and excluded, a unit both enabled and masked), names that cannot be valid;
2. packages (needs the suite's index, see :mod:`atoll.manifest.index`):
   every included, excluded, kernel and removed package must exist.

Each file of an ``extends`` chain is checked on its own (so errors name the
file that holds the bad value), then the chain is merged by the rules in
:mod:`atoll.manifest.schema`. Relative paths are resolved against the file
that wrote them. The model is built one section at a time (``_build_*``, each
with its semantic checks); keys no file sets take the schema's defaults.

Input is hostile until checked: files are read within the limits of
:mod:`atoll.manifest.read`; every one-line string is bounded and free of
control characters and every pattern matches the whole value (values end up
in ``/etc/passwd``, ``sources.list``, sysctl.d and tmpfiles.d lines); accounts
are checked against the base system (:mod:`atoll.manifest.accounts`) here, not
after a root filesystem build; and a ``[[files]].source`` must resolve inside
the directory of the manifest that names it unless the user allowed another
directory (``allowed_sources``, ``--allow-source-outside``), so no file of the
build machine reaches an image by accident. A ``[[containers.preload]].archive``
outside those trees is accepted only when it is an OCI image archive
(:mod:`atoll.manifest.archive`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from atoll.errors import AtollError, ManifestError
from atoll.manifest.accounts import BASE_GROUPS, BASE_USERS, id_problem, user_name_problem
from atoll.manifest.archive import archive_problem
from atoll.manifest.index import PackageIndex
from atoll.manifest.model import (
    Agent,
    Containers,
    Distribution,
    FileEntry,
    Group,
    Image,
    Init,
    InitStrategy,
    Kernel,
    Kubernetes,
    Manifest,
    Packages,
    PreloadImage,
    Strip,
    Units,
    User,
)
from atoll.manifest.read import (
    CONTROL,
    MAX_MANIFEST_BYTES,
    MAX_STRING,
    SHOWN,
    Raw,
    clip,
    describe,
    display,
    read_chain,
    shown,
)
from atoll.manifest.schema import DEFAULTS, SCHEMA, Key, Kind, model_value, parse_mode

# Whole-value patterns, always used with fullmatch (a "$" lets a trailing newline through).
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,127}")
_UNIT = re.compile(
    r"[A-Za-z0-9:_.\\@-]{1,240}\.(service|socket|timer|target|mount|automount|path|slice|scope|swap)"
)
_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_SYSCTL = re.compile(r"[a-z0-9_*-]+(\.[A-Za-z0-9_*-]+)+")
_REFERENCE = re.compile(
    r"[a-z0-9][a-z0-9.-]*(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})"
)
# Values of a sources.list line (URL, suite, component), which separates them by spaces.
_URL = re.compile(r"(https?|file)://[^\s]+")
_ARCHIVE_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]{0,63}")
# A field of /etc/passwd and of a tmpfiles.d line: absolute, no ':', no space.
_ACCOUNT_PATH = re.compile(r"/[A-Za-z0-9._/+@-]{0,254}")
# Not part of an ostree commit: runtime mounts, per-node state, the kernel's old home.
_FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/boot")  # noqa: S108

_KUBERNETES_RELEASE = re.compile(r"v[1-9][0-9]{0,3}\.[0-9]{1,4}\.[0-9]{1,4}")

Origin = dict[str, Path]  # "packages.include:nginx" / "files:/etc/motd" -> file that wrote it


@dataclass(frozen=True)
class PinnedRelease:
    """The one Kubernetes release atoll can build, and the file that pins it."""

    version: str  # "v1.35.4"
    source: str  # the file that pins it, for messages ("kubernetes/go.mod")


# Reads the pin when a manifest names a release (the caller knows where the pin lives:
# atoll.compose.kubernetes reads the checkout's kubernetes/go.mod); raises AtollError.
PinReader = Callable[[], PinnedRelease]


def load_manifest(
    path: Path,
    *,
    index: PackageIndex | None = None,
    allowed_sources: Iterable[Path] = (),
    kubernetes_pin: PinReader | None = None,
) -> Manifest:
    """Parse, merge and validate ``path``; raise :class:`ManifestError` listing every problem.

    ``[[files]].source`` must resolve inside the directory of the manifest that
    names it, or inside one of ``allowed_sources`` (the user's explicit opt-in).
    ``kubernetes_pin``: how to read the release atoll builds; a ``[kubernetes]
    version`` other than it is refused (without it, only the version's form is checked).
    """
    path = Path(os.path.abspath(path))
    problems: list[str] = []
    chain = read_chain(path, problems)
    if problems:
        raise ManifestError(problems)
    for file, raw in chain:
        _check_table(raw, SCHEMA, file, "", problems)
    if problems:
        raise ManifestError(problems)
    merged, origin = _merge(chain)
    allowed = tuple(Path(p).resolve() for p in allowed_sources)
    checks = _Problems(
        origin, path, problems, allowed_sources=allowed, kubernetes_pin=kubernetes_pin
    )
    manifest = _build(merged, origin, path, tuple(f for f, _ in chain), checks)
    if problems:
        raise ManifestError(problems)
    if index is not None:
        check_packages(manifest, index, origin)
    return manifest


def check_packages(
    manifest: Manifest,
    index: PackageIndex,
    origin: Origin | None = None,
    *,
    elsewhere: tuple[str, PackageIndex] | None = None,
) -> None:
    """Every package the manifest names must exist in the suite's index.

    ``elsewhere``: another suite's name and index; an unknown package that exists
    there is named as such (a package of bookworm's that trixie renamed or dropped).
    """
    origin = origin or {}
    problems: list[str] = []
    suite = manifest.distribution.suite

    def check(key: str, name: str, *, installable: bool) -> None:
        where = display(origin.get(f"{key}:{name}", manifest.path))
        label = _key_label(key)
        if not index.has(name):
            near = index.suggest(name)
            hint = f" (did you mean {_quoted(near)}?)" if near else ""
            if elsewhere is not None and elsewhere[1].has(name):
                hint = f": it is in {elsewhere[0]}, not in {suite}{hint}"
            problems.append(f"{where}: {label}: unknown package {shown(name)}{hint}")
        elif installable and index.is_virtual_only(name):
            providers = index.provides.get(name, ())
            problems.append(
                f"{where}: {label}: {shown(name)} is a virtual package provided by "
                f"{', '.join(providers[:5])}: name one of them"
            )

    for name in manifest.packages.include:
        check("packages.include", name, installable=True)
    for name in manifest.packages.exclude:
        check("packages.exclude", name, installable=False)
    for name in manifest.strip.remove:
        check("strip.remove", name, installable=False)
    check("kernel.package", manifest.kernel.package, installable=True)
    if manifest.agent.builds_toolbox:
        for name in manifest.agent.toolbox_packages:
            check("agent.toolbox_packages", name, installable=True)
    if problems:
        raise ManifestError(problems)


def manifest_digest(manifest: Manifest) -> str:
    """sha256 over the resolved manifest and the content of every file it references.

    Independent of where the manifest lives: build-machine paths are replaced
    by the digest of their content, so moving a checkout does not change it.
    """

    def encode(value: Any) -> Any:
        if isinstance(value, Path):
            return {"sha256": hashlib.sha256(value.read_bytes()).hexdigest()}
        if isinstance(value, PurePosixPath):
            return str(value)
        if is_dataclass(value) and not isinstance(value, type):
            return {f.name: encode(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, tuple | list):
            return [encode(v) for v in value]
        return value

    payload = {
        f.name: encode(getattr(manifest, f.name))
        for f in fields(manifest)
        if f.name not in {"path", "sources"}
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --- reading and merging -----------------------------------------------------------------


def _merge(chain: list[tuple[Path, Raw]]) -> tuple[Raw, Origin]:
    """Merge parent first, child last, recording which file wrote each item."""
    merged: Raw = {}
    origin: Origin = {}
    for file, raw in reversed(chain):
        _merge_table(merged, raw, SCHEMA, file, "", origin)
    return merged, origin


def _merge_table(
    into: Raw, raw: Raw, schema: Mapping[str, Key], file: Path, prefix: str, origin: Origin
) -> None:
    for name, value in raw.items():
        key = schema[name]
        path = f"{prefix}{name}"
        if name == "extends" and not prefix:
            continue
        match key.kind:
            case Kind.TABLE:
                _merge_table(into.setdefault(name, {}), value, key.keys, file, f"{path}.", origin)
            case Kind.STR_LIST:
                _merge_names(into, name, value, file, prefix, origin)
            case Kind.TABLE_LIST:
                _merge_entries(into.setdefault(name, []), value, key, file, path, origin)
            case Kind.STR_MAP:
                table: Raw = into.setdefault(name, {})
                for k, v in value.items():
                    origin[f"{path}:{k}"] = file
                    table[k] = v
            case _:
                origin[path] = file
                into[name] = (file.parent / value).resolve() if key.kind is Kind.PATH else value


def _merge_names(
    into: Raw, name: str, value: list[str], file: Path, prefix: str, origin: Origin
) -> None:
    """A list of names: the union, parent's entries first."""
    path = f"{prefix}{name}"
    existing: list[str] = into.setdefault(name, [])
    for item in value:
        origin[f"{path}:{item}"] = file
        if item not in existing:
            existing.append(item)
    if path in {"packages.include", "packages.exclude"}:
        # A child may drop what its parent included, and vice versa.
        other = "exclude" if name == "include" else "include"
        # Within one file, both lists naming a package is a conflict (reported later).
        if other in into:
            into[other] = [
                p
                for p in into[other]
                if p not in value or origin.get(f"{prefix}{other}:{p}") == file
            ]


def _merge_entries(
    entries: list[Raw], value: list[Raw], key: Key, file: Path, path: str, origin: Origin
) -> None:
    """An array of tables: concatenated; an entry replaces the parent's of the same identity."""
    for given in value:
        entry = dict(given)
        entry["__file__"] = file
        for sub_name, sub in key.keys.items():
            if sub.kind is Kind.PATH and sub_name in entry:
                entry[sub_name] = (file.parent / entry[sub_name]).resolve()
        ident = entry.get(key.identity)
        origin[f"{path}:{ident}"] = file
        entries[:] = [e for e in entries if e.get(key.identity) != ident]
        entries.append(entry)


# --- structural checks, one file at a time ------------------------------------------------


def _check_table(
    raw: Raw, schema: Mapping[str, Key], file: Path, prefix: str, problems: list[str]
) -> None:
    where = display(file)
    for name, value in raw.items():
        path = f"{prefix}{name}"
        key = schema.get(name)
        if key is None:
            section = _section_label(prefix)
            problems.append(
                f"{where}: {section}unknown key {shown(name)}{_near_miss(name, schema)}"
            )
            continue
        _check_value(value, key, file, path, problems)
    # Required keys of tables ([image].name...) are checked on the merged manifest:
    # a file that extends another may leave them to its parent.


# What a value of each kind must be, and how to say so when it is not (a choice of
# an enum names its choices instead).
_SHAPES: dict[Kind, tuple[Callable[[Any], bool], str]] = {
    Kind.STR: (lambda v: isinstance(v, str), "a string"),
    Kind.PATH: (lambda v: isinstance(v, str), "a string"),
    Kind.INT: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    Kind.BOOL: (lambda v: isinstance(v, bool), "true or false"),
    Kind.MODE: (lambda v: parse_mode(v) is not None, 'a file mode such as "0644"'),
    Kind.ENUM: (lambda v: isinstance(v, str), "one of the choices"),
    Kind.STR_LIST: (
        lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        "a list of strings",
    ),
    Kind.STR_MAP: (lambda v: isinstance(v, dict), "a table"),
    Kind.TABLE: (lambda v: isinstance(v, dict), "a table"),
    Kind.TABLE_LIST: (
        lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
        "an array of tables",
    ),
}


def _check_value(value: Any, key: Key, file: Path, path: str, problems: list[str]) -> None:
    """The value's type first; then, for a value of the right type, what its kind requires."""
    where = f"{display(file)}: {_key_label(path)}"
    accepts, expected = _SHAPES[key.kind]
    if not accepts(value):
        if key.kind is Kind.ENUM:
            expected = f"one of {_quoted(list(key.choices))}"
        problems.append(f"{where}: expected {expected}, got {describe(value)}")
        return
    for text in _strings_of(value, key):
        problem = _text_problem(text, multiline=key.multiline)
        if problem:
            problems.append(f"{where}: {problem}")
            return
    _check_kind(value, key, file, path, problems)


def _check_kind(value: Any, key: Key, file: Path, path: str, problems: list[str]) -> None:
    """What a value of the right type must be, by its kind."""
    where = f"{display(file)}: {_key_label(path)}"
    match key.kind:
        case Kind.PATH:
            if not (file.parent / value).exists():
                problems.append(
                    f"{where}: file {shown(value)} not found (relative to {display(file)})"
                )
        case Kind.ENUM:
            if value not in key.choices:
                hint = _near_miss(value, key.choices, cutoff=0.5)
                problems.append(
                    f"{where}: {shown(value)} is not one of {_quoted(list(key.choices))}{hint}"
                )
        case Kind.STR_MAP:
            for k, v in value.items():
                if not isinstance(v, str | int | bool) or isinstance(v, float):
                    problems.append(
                        f"{where}.{clip(k)}: expected a string, integer or boolean, "
                        f"got {describe(v)}"
                    )
        case Kind.TABLE:
            _check_table(value, key.keys, file, f"{path}.", problems)
        case Kind.TABLE_LIST:
            _check_entries(value, key, file, path, problems)


def _strings_of(value: Any, key: Key) -> Iterable[str]:
    """The strings a value of the right type holds (a table of strings: keys and values)."""
    if isinstance(value, str):
        return (value,)
    if key.kind is Kind.STR_LIST:
        return value  # type: ignore[no-any-return]
    if key.kind is Kind.STR_MAP:
        return [*value, *(v for v in value.values() if isinstance(v, str))]
    return ()


def _text_problem(text: str, *, multiline: bool) -> str | None:
    """What is wrong with a string: too long, or (one-line values) a control character."""
    limit = MAX_MANIFEST_BYTES if multiline else MAX_STRING
    if len(text) > limit:
        return f"longer than {limit} characters: {shown(text)}"
    if not multiline and CONTROL.search(text):
        return f"control character in {shown(text)} (one-line values may hold none)"
    return None


def _check_entries(
    entries: list[Raw], key: Key, file: Path, path: str, problems: list[str]
) -> None:
    """Each entry of an array of tables, and no identity twice in one file.

    Across an ``extends`` chain a child's entry replaces its parent's of the same
    identity; within one file the second would silently replace the first.
    """
    first: dict[object, int] = {}
    for i, entry in enumerate(entries):
        _check_entry(entry, key, file, f"{path}[{i}]", problems)
        ident = entry.get(key.identity)
        if ident is None or not isinstance(ident, str):
            continue
        if ident in first:
            problems.append(
                f"{display(file)}: {_key_label(f'{path}[{i}].{key.identity}')}: duplicate "
                f"{shown(ident)}, also in {_key_label(f'{path}[{first[ident]}]')}"
            )
        else:
            first[ident] = i


def _check_entry(entry: Raw, key: Key, file: Path, item_path: str, problems: list[str]) -> None:
    """One entry of an array of tables: known keys, each of its kind, and the required ones."""
    where = f"{display(file)}: {_key_label(item_path)}"
    for name in entry:
        if name not in key.keys:
            problems.append(f"{where}: unknown key {shown(name)}{_near_miss(name, key.keys)}")
        else:
            _check_value(entry[name], key.keys[name], file, f"{item_path}.{name}", problems)
    for name, sub in key.keys.items():
        if sub.required and name not in entry:
            problems.append(f"{where}: required key '{name}' is missing")


# --- building the model, with semantic checks ----------------------------------------------


@dataclass(frozen=True)
class _Problems:
    """Where the merged manifest's values came from, and the list their problems go to."""

    origin: Origin
    path: Path  # the manifest the user named: the origin of what no file wrote
    lines: list[str]
    # Directories (resolved) outside their manifest's tree that sources may come from.
    allowed_sources: tuple[Path, ...] = ()
    kubernetes_pin: PinReader | None = None

    def at(self, key: str) -> str:
        """``file: [section].key`` for a key (``packages.include:nginx`` names one item)."""
        return f"{self.file_of(key)}: {_key_label(key)}"

    def add(self, key: str, message: str) -> None:
        """A problem with ``key``, named by the file that wrote it."""
        self.lines.append(f"{self.at(key)}: {message}")

    def append(self, problem: str) -> None:
        """A problem that names its source itself."""
        self.lines.append(problem)

    def file_of(self, key: str) -> str:
        """The file that wrote ``key`` (the manifest named, when no file did)."""
        return display(self.origin.get(key, self.path))


def _build(
    raw: Raw, origin: Origin, path: Path, sources: tuple[Path, ...], problems: _Problems
) -> Manifest:
    """The model from the merged manifest; semantic problems go to ``problems``."""
    image = _build_image(_section(raw, "image"), problems)
    distribution = _build_distribution(_section(raw, "distribution"), problems)
    packages = _build_packages(_section(raw, "packages"), problems)
    kernel = _build_kernel(_section(raw, "kernel"), packages, problems)
    init = _build_init(_section(raw, "init"), packages, problems)
    containers = _build_containers(_section(raw, "containers"), problems)
    files = tuple(_build_file(entry, problems) for entry in raw.get("files", ()))
    units = _build_units(_section(raw, "units"), problems)
    users = _build_users(raw.get("users", ()), problems)
    groups = _build_groups(raw.get("groups", ()), problems)
    sysctl = _build_sysctl(_section(raw, "sysctl"), problems)
    strip = _build_strip(_section(raw, "strip"), kernel, problems)
    kubernetes = _build_kubernetes(raw, containers, problems)
    return Manifest(
        path=path,
        sources=sources,
        image=image,
        distribution=distribution,
        packages=packages,
        kernel=kernel,
        init=init,
        containers=containers,
        files=files,
        units=units,
        users=users,
        groups=groups,
        sysctl=sysctl,
        strip=strip,
        kubernetes=kubernetes,
        agent=_build_agent(_section(raw, "agent"), origin, path, containers, problems),
    )


def _build_image(table: Raw, problems: _Problems) -> Image:
    for required in ("name", "version"):
        if required not in table:
            problems.append(
                f"{display(problems.path)}: [image].{required}: required key is missing"
            )
    values = _values(table, "image")
    # Placeholders while the missing key is reported, so the other checks still run.
    name = values["name"] if "name" in table else "unnamed"
    version = values["version"] if "version" in table else "0"
    if "name" in table and not _NAME.fullmatch(name):
        problems.add(
            "image.name",
            f"{shown(name)} must be lowercase letters, digits and '-' "
            "(it becomes part of the ostree ref)",
        )
    if "version" in table and not _VERSION.fullmatch(version):
        problems.add("image.version", f"{shown(version)} is not a valid version")
    return Image(name=name, version=version, description=values["description"])


def _build_distribution(table: Raw, problems: _Problems) -> Distribution:
    distribution = Distribution(**_values(table, "distribution"))
    for key_name in ("mirror", "security_mirror"):
        url = getattr(distribution, key_name)
        if not _URL.fullmatch(url):
            problems.add(
                f"distribution.{key_name}",
                f"{shown(url)} is not an http(s):// or file:// URL without spaces",
            )
    if not _ARCHIVE_WORD.fullmatch(distribution.suite):
        problems.add("distribution.suite", f"{shown(distribution.suite)} is not a suite name")
    for component in distribution.components:
        if not _ARCHIVE_WORD.fullmatch(component):
            problems.add("distribution.components", f"{shown(component)} is not a component name")
    return distribution


def _build_packages(table: Raw, problems: _Problems) -> Packages:
    packages = Packages(**_values(table, "packages"))
    for list_name, names in (("include", packages.include), ("exclude", packages.exclude)):
        for pkg in names:
            if not _PACKAGE.fullmatch(pkg):
                problems.add(
                    f"packages.{list_name}:{pkg}", f"{shown(pkg)} is not a valid package name"
                )
    for pkg in sorted(set(packages.include) & set(packages.exclude)):
        a = problems.file_of(f"packages.include:{pkg}")
        b = problems.file_of(f"packages.exclude:{pkg}")
        problems.append(
            f"{a}: [packages].include: {shown(pkg)} is also in [packages].exclude ({b}): "
            "a package cannot be both"
        )
    return packages


def _build_kernel(table: Raw, packages: Packages, problems: _Problems) -> Kernel:
    kernel = Kernel(**_values(table, "kernel"))
    if not _PACKAGE.fullmatch(kernel.package):
        problems.add("kernel.package", f"{shown(kernel.package)} is not a valid package name")
    elif kernel.package in packages.exclude:
        problems.add("kernel.package", f"{shown(kernel.package)} is in [packages].exclude")
    for arg in kernel.arguments:
        if not arg or any(c.isspace() for c in arg):
            problems.add(
                f"kernel.arguments:{arg}", f"{shown(arg)} must be one argument without spaces"
            )
    return kernel


def _build_init(table: Raw, packages: Packages, problems: _Problems) -> Init:
    init = Init(**_values(table, "init"))
    if init.strategy is InitStrategy.PREPARE_ROOT and "initramfs-tools" in packages.include:
        problems.add(
            "packages.include:initramfs-tools",
            "initramfs-tools conflicts with [init].strategy = 'atoll-prepare-root' (no initramfs)",
        )
    return init


def _build_containers(table: Raw, problems: _Problems) -> Containers:
    preload = []
    for entry in table.get("preload", ()):
        image = PreloadImage(**_values(entry, "containers.preload"))
        where = f"{display(entry['__file__'])}: [[containers.preload]]"
        if not _REFERENCE.fullmatch(image.reference):
            problems.append(
                f"{where}.reference: "
                f"{shown(image.reference)} is not a full image reference (registry/name:tag)"
            )
        _check_archive(image.archive, entry["__file__"], f"{where}.archive", problems)
        preload.append(image)
    return Containers(**_values(table, "containers"), preload=tuple(preload))


def _build_agent(
    table: Raw, origin: Origin, path: Path, containers: Containers, problems: _Problems
) -> Agent:
    """The agent and its ops shell toolbox: a full reference, an image the node can run.

    A problem names the file that set the toolbox, else the one that turned the
    runtime off, else the manifest the user named (the toolbox is a default there).
    """
    agent = Agent(**_values(table, "agent"))
    if agent.toolbox_archive is not None:  # checked even when unused: the digest reads it
        file = origin.get("agent.toolbox_archive", path)
        _check_archive(
            agent.toolbox_archive, file, f"{display(file)}: [agent] toolbox_archive", problems
        )
    if not (agent.include and agent.toolbox):
        return agent
    file = origin.get("agent.toolbox") or origin.get("containers.runtime") or path
    where = f"{display(file)}: [agent] toolbox"
    if not _REFERENCE.fullmatch(agent.toolbox):
        problems.append(
            f"{where}: {shown(agent.toolbox)} is not a full image reference (registry/name:tag)"
        )
    if not containers.runtime:
        problems.append(
            f"{where}: the ops shell runs its toolbox in containerd, but [containers] runtime "
            'is false (set [agent] toolbox = "" for an image without an ops shell)'
        )
    if any(image.reference == agent.toolbox for image in containers.preload):
        problems.append(
            f"{where}: {shown(agent.toolbox)} is also a [[containers.preload]] reference: "
            "name the toolbox's archive in [agent] toolbox_archive instead"
        )
    return agent


def _build_kubernetes(raw: Raw, containers: Containers, problems: _Problems) -> Kubernetes:
    """The release, if any: present with the table, of the right form, the one atoll builds.

    The pin is read only for a manifest that names a release, so an image without
    Kubernetes composes where the checkout's ``kubernetes/`` is absent.
    """
    if "kubernetes" not in raw:
        return Kubernetes()
    kubernetes = Kubernetes(**_values(_section(raw, "kubernetes"), "kubernetes"))
    version = kubernetes.version
    if version is None:
        problems.add("kubernetes.version", 'required key is missing (e.g. "v1.35.4")')
    elif not _KUBERNETES_RELEASE.fullmatch(version):
        problems.add(
            "kubernetes.version", f"{shown(version)} is not a release (vMAJOR.MINOR.PATCH)"
        )
    elif problems.kubernetes_pin is not None:
        _check_pin(version, problems.kubernetes_pin, problems)
    if not containers.runtime:
        file = problems.origin.get("containers.runtime", problems.path)
        problems.append(
            f"{display(file)}: [kubernetes]: the kubelet runs pods in containerd, but "
            "[containers] runtime is false"
        )
    return kubernetes


def _check_pin(version: str, read_pin: PinReader, problems: _Problems) -> None:
    try:
        pinned = read_pin()
    except AtollError as e:
        problems.add("kubernetes.version", f"cannot tell which release atoll builds: {e.message}")
        return
    if version != pinned.version:
        problems.add(
            "kubernetes.version",
            f"{shown(version)} is not the release atoll builds: {pinned.source} pins "
            f"{pinned.version} (a cold build of another would take many minutes; "
            "see docs/kubernetes.md to move the pin)",
        )


def _check_archive(archive: Path, manifest: Path, where: str, problems: _Problems) -> None:
    """An archive (resolved) is a bounded regular file; outside the allowed trees, an OCI archive.

    Unlike a source it may lie outside its manifest's tree without an opt-in
    (the shipped manifests take theirs from ``build/images``), but then only
    a file that is an OCI image archive is accepted (:mod:`atoll.manifest.archive`).
    """
    problem = archive_problem(archive, confined=_confined(archive, manifest, problems))
    if problem is not None:
        problems.append(f"{where}: {shown(str(archive))} {problem}")


def _build_file(entry: Raw, problems: _Problems) -> FileEntry:
    where = f"{display(entry['__file__'])}: [[files]] path={shown(entry.get('path'))}"
    values = _values(entry, "files")
    target = str(values["path"])
    if not target.startswith("/") or ".." in PurePosixPath(target).parts:
        problems.append(f"{where}: path must be absolute and must not contain '..'")
    elif any(target == r or target.startswith(r + "/") for r in _FORBIDDEN_ROOTS):
        root = next(r for r in _FORBIDDEN_ROOTS if target == r or target.startswith(r + "/"))
        problems.append(
            f"{where}: {root} is not part of the image (runtime or per-node state); "
            "use /etc, /usr or a tmpfiles.d entry"
        )
    if ("source" in entry) == ("content" in entry):
        problems.append(f"{where}: give exactly one of 'source' or 'content'")
    elif "source" in entry:
        _check_source(entry["source"], entry["__file__"], where, problems)
    for account in ("owner", "group"):
        if not _ACCOUNT.fullmatch(values[account]):
            problems.append(f"{where}: {account} {shown(values[account])} is not a valid name")
    # A mode of 0 is honoured (root, who applies and reads such files, is not held by it).
    return FileEntry(**{**values, "path": PurePosixPath(target)})


def _check_source(source: Path, manifest: Path, where: str, problems: _Problems) -> None:
    """A source (resolved: symlinks followed, ``..`` gone) is a regular file in an allowed tree.

    Allowed: the directory of the manifest that names it, and below; and any
    directory the user allowed explicitly (``--allow-source-outside``). Anything
    else would copy a file of the build machine into a published image.
    """
    home = manifest.parent.resolve()
    if not _confined(source, manifest, problems):
        problems.append(
            f"{where}: source resolves to {shown(str(source))}, outside {display(home)} "
            "(the manifest's directory); to take it from there, pass "
            "--allow-source-outside DIR"
        )
    elif not source.is_file():
        problems.append(f"{where}: source {shown(str(source))} is not a regular file")


def _confined(path: Path, manifest: Path, problems: _Problems) -> bool:
    """Whether ``path`` (resolved) lies in ``manifest``'s directory or an allowed one."""
    allowed = (manifest.parent.resolve(), *problems.allowed_sources)
    return any(path.is_relative_to(root) for root in allowed)


def _build_units(table: Raw, problems: _Problems) -> Units:
    units = Units(**_values(table, "units"))
    for list_name in ("enable", "disable", "mask"):
        for unit in getattr(units, list_name):
            if not _UNIT.fullmatch(unit):
                problems.add(
                    f"units.{list_name}:{unit}",
                    f"{shown(unit)} is not a systemd unit name (e.g. 'foo.service')",
                )
    for a_name, b_name in (("enable", "mask"), ("enable", "disable"), ("disable", "mask")):
        for unit in sorted(set(getattr(units, a_name)) & set(getattr(units, b_name))):
            problems.add(f"units.{a_name}:{unit}", f"{shown(unit)} is also in [units].{b_name}")
    return units


def _build_users(entries: list[Raw], problems: _Problems) -> tuple[User, ...]:
    """Users: names and the fields written into /etc/passwd, each uid once."""
    users = []
    uids: dict[int, str] = {}
    for entry in entries:
        where = f"{display(entry['__file__'])}: [[users]] name={shown(entry.get('name'))}"
        user = User(**_values(entry, "users"))
        for problem in _user_problems(user):
            problems.append(f"{where}: {problem}")
        if user.uid is not None and user.uid in uids:
            problems.append(f"{where}: uid {user.uid} is also given to {shown(uids[user.uid])}")
        elif user.uid is not None:
            uids[user.uid] = user.name
        users.append(user)
    return tuple(users)


def _user_problems(user: User) -> Iterable[str]:
    if not _ACCOUNT.fullmatch(user.name):
        yield f"{shown(user.name)} is not a valid user name"
    elif reserved := user_name_problem(user.name):
        yield reserved
    if user.uid is not None and (taken := id_problem("uid", user.uid, BASE_USERS)):
        yield taken
    for group in (user.group, *user.groups):
        if group is not None and not _ACCOUNT.fullmatch(group):
            yield f"group {shown(group)} is not a valid group name"
    for field_name in ("shell", "home"):
        value = getattr(user, field_name)
        if value is not None and not _ACCOUNT_PATH.fullmatch(value):
            yield (
                f"{field_name} {shown(value)} must be an absolute path of letters, digits "
                "and ._/+@- (it is a field of /etc/passwd)"
            )


def _build_groups(entries: list[Raw], problems: _Problems) -> tuple[Group, ...]:
    """Groups: valid names, each gid once; a base group only as it is."""
    groups = tuple(Group(**_values(entry, "groups")) for entry in entries)
    gids: dict[int, str] = {}
    for group in groups:
        key = f"groups:{group.name}"
        if not _ACCOUNT.fullmatch(group.name):
            problems.add(key, f"{shown(group.name)} is not a valid group name")
        base = BASE_GROUPS.get(group.name)
        if base is not None and group.gid is not None and group.gid != base:
            problems.add(
                key, f"{shown(group.name)} is reserved (the base system has it as gid {base})"
            )
        elif base is None and group.gid is not None:
            if taken := id_problem("gid", group.gid, BASE_GROUPS):
                problems.add(key, taken)
            elif group.gid in gids:
                problems.add(key, f"gid {group.gid} is also given to {shown(gids[group.gid])}")
            gids[group.gid] = group.name
    return groups


def _build_sysctl(table: Raw, problems: _Problems) -> tuple[tuple[str, str], ...]:
    sysctl = tuple(sorted((k, _sysctl_value(v)) for k, v in table.items()))
    for key_name, value in sysctl:
        if not _SYSCTL.fullmatch(key_name):
            problems.add(f"sysctl:{key_name}", f"{shown(key_name)} is not a sysctl key")
        elif CONTROL.search(value) or len(value) > MAX_STRING:
            # Integers become strings here: bounded like every string.
            problems.add(f"sysctl:{key_name}", f"value {shown(value)} is not one line")
    return sysctl


def _build_strip(table: Raw, kernel: Kernel, problems: _Problems) -> Strip:
    strip = Strip(**_values(table, "strip"))
    for pkg in strip.remove:
        if pkg in (kernel.package,):
            problems.add(f"strip.remove:{pkg}", "cannot remove the kernel package")
    for pattern in strip.paths:
        if not pattern.startswith("/") or ".." in pattern.split("/"):
            problems.add(
                "strip.paths", f"{shown(pattern)} must be an absolute path inside the image"
            )
    return strip


# --- small helpers -----------------------------------------------------------------------


def _section(raw: Raw, name: str) -> Raw:
    value = raw.get(name, {})
    return value if isinstance(value, dict) else {}


def _values(table: Raw, section: str) -> dict[str, Any]:
    """The keys of ``section`` (``"distribution"``, ``"files"``) as the model holds them.

    Absent keys get the schema's default; arrays of tables are left to their builder.
    """
    keys: Mapping[str, Key] = SCHEMA
    for part in section.split("."):
        keys = keys[part].keys
    return {
        name: model_value(key, table[name]) if name in table else DEFAULTS[f"{section}.{name}"]
        for name, key in keys.items()
        if key.kind is not Kind.TABLE_LIST
    }


def _near_miss(name: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or nothing."""
    if len(name) > SHOWN:
        return ""  # nothing near, and comparing would cost time
    near = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean '{near[0]}'?)" if near else ""


def _sysctl_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _section_label(prefix: str) -> str:
    return f"[{prefix.rstrip('.')}]: " if prefix else ""


def _key_label(path: str) -> str:
    """``packages.include`` -> ``[packages].include``; a top-level key stays bare."""
    path = path.split(":", 1)[0]
    if "[" in path:  # an entry of an array of tables: files[2].mode
        head, _, rest = path.partition("[")
        index, _, tail = rest.partition("]")
        return f"[[{head}]][{index}]{tail}"
    if "." not in path:
        return path
    head, _, tail = path.rpartition(".")
    return f"[{head}].{tail}"


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)

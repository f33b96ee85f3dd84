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
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from atoll.errors import ManifestError
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
    Manifest,
    Packages,
    PreloadImage,
    Strip,
    Units,
    User,
)
from atoll.manifest.schema import DEFAULTS, SCHEMA, Key, Kind, model_value, parse_mode

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_UNIT = re.compile(
    r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|target|mount|automount|path|slice|scope|swap)$"
)
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SYSCTL = re.compile(r"^[a-z0-9_*-]+(\.[A-Za-z0-9_*-]+)+$")
_REFERENCE = re.compile(
    r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$"
)
# Not part of an ostree commit: runtime mounts, per-node state, the kernel's old home.
_FORBIDDEN_ROOTS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/boot")  # noqa: S108

Raw = dict[str, Any]
Origin = dict[str, Path]  # "packages.include:nginx" / "files:/etc/motd" -> file that wrote it


def load_manifest(path: Path, *, index: PackageIndex | None = None) -> Manifest:
    """Parse, merge and validate ``path``; raise :class:`ManifestError` listing every problem."""
    path = Path(os.path.abspath(path))
    problems: list[str] = []
    chain = _read_chain(path, problems)
    if problems:
        raise ManifestError(problems)
    for file, raw in chain:
        _check_table(raw, SCHEMA, file, "", problems)
    if problems:
        raise ManifestError(problems)
    merged, origin = _merge(chain)
    manifest = _build(merged, origin, path, tuple(f for f, _ in chain), problems)
    if problems:
        raise ManifestError(problems)
    if index is not None:
        check_packages(manifest, index, origin)
    return manifest


def check_packages(manifest: Manifest, index: PackageIndex, origin: Origin | None = None) -> None:
    """Every package the manifest names must exist in the suite's index."""
    origin = origin or {}
    problems: list[str] = []

    def check(key: str, name: str, *, installable: bool) -> None:
        where = _display(origin.get(f"{key}:{name}", manifest.path))
        label = _key_label(key)
        if not index.has(name):
            near = index.suggest(name)
            hint = f" (did you mean {_quoted(near)}?)" if near else ""
            problems.append(f"{where}: {label}: unknown package '{name}'{hint}")
        elif installable and index.is_virtual_only(name):
            providers = index.provides.get(name, ())
            problems.append(
                f"{where}: {label}: '{name}' is a virtual package provided by "
                f"{', '.join(providers[:5])}: name one of them"
            )

    for name in manifest.packages.include:
        check("packages.include", name, installable=True)
    for name in manifest.packages.exclude:
        check("packages.exclude", name, installable=False)
    for name in manifest.strip.remove:
        check("strip.remove", name, installable=False)
    check("kernel.package", manifest.kernel.package, installable=True)
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


def _read_chain(path: Path, problems: list[str]) -> list[tuple[Path, Raw]]:
    """The manifest and everything it extends, child first."""
    chain: list[tuple[Path, Raw]] = []
    seen: list[Path] = []
    current: Path | None = path
    referrer: Path | None = None
    while current is not None:
        if current in seen:
            cycle = " -> ".join(_display(p) for p in [*seen, current])
            problems.append(f"{_display(seen[-1])}: extends: cycle: {cycle}")
            return chain
        seen.append(current)
        try:
            raw = tomllib.loads(current.read_text())
        except FileNotFoundError:
            where = f"{_display(referrer)}: extends: " if referrer else ""
            problems.append(f"{where}{_display(current)}: file not found")
            return chain
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{_display(current)}: invalid TOML: {e}")
            return chain
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{_display(current)}: cannot read: {e}")
            return chain
        chain.append((current, raw))
        parent = raw.get("extends")
        referrer = current
        current = (current.parent / parent).resolve() if isinstance(parent, str) else None
    return chain


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
    where = _display(file)
    for name, value in raw.items():
        path = f"{prefix}{name}"
        key = schema.get(name)
        if key is None:
            section = _section_label(prefix)
            problems.append(f"{where}: {section}unknown key '{name}'{_near_miss(name, schema)}")
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
    where = f"{_display(file)}: {_key_label(path)}"
    accepts, expected = _SHAPES[key.kind]
    if not accepts(value):
        if key.kind is Kind.ENUM:
            expected = f"one of {_quoted(list(key.choices))}"
        problems.append(f"{where}: expected {expected}, got {_describe(value)}")
        return
    match key.kind:
        case Kind.PATH:
            if not (file.parent / value).exists():
                problems.append(f"{where}: file '{value}' not found (relative to {_display(file)})")
        case Kind.ENUM:
            if value not in key.choices:
                hint = _near_miss(value, key.choices, cutoff=0.5)
                problems.append(
                    f"{where}: '{value}' is not one of {_quoted(list(key.choices))}{hint}"
                )
        case Kind.STR_MAP:
            for k, v in value.items():
                if not isinstance(v, str | int | bool) or isinstance(v, float):
                    problems.append(
                        f"{where}.{k}: expected a string, integer or boolean, got {_describe(v)}"
                    )
        case Kind.TABLE:
            _check_table(value, key.keys, file, f"{path}.", problems)
        case Kind.TABLE_LIST:
            for i, entry in enumerate(value):
                _check_entry(entry, key, file, f"{path}[{i}]", problems)


def _check_entry(entry: Raw, key: Key, file: Path, item_path: str, problems: list[str]) -> None:
    """One entry of an array of tables: known keys, each of its kind, and the required ones."""
    where = f"{_display(file)}: {_key_label(item_path)}"
    for name in entry:
        if name not in key.keys:
            problems.append(f"{where}: unknown key '{name}'{_near_miss(name, key.keys)}")
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
        return _display(self.origin.get(key, self.path))


def _build(
    raw: Raw, origin: Origin, path: Path, sources: tuple[Path, ...], lines: list[str]
) -> Manifest:
    """The model from the merged manifest; semantic problems go to ``lines``."""
    problems = _Problems(origin, path, lines)
    image = _build_image(_section(raw, "image"), problems)
    distribution = _build_distribution(_section(raw, "distribution"), problems)
    packages = _build_packages(_section(raw, "packages"), problems)
    kernel = _build_kernel(_section(raw, "kernel"), packages, problems)
    init = _build_init(_section(raw, "init"), packages, problems)
    containers = _build_containers(_section(raw, "containers"), problems)
    files = tuple(_build_file(entry, problems) for entry in raw.get("files", ()))
    units = _build_units(_section(raw, "units"), problems)
    users = tuple(_build_user(entry, problems) for entry in raw.get("users", ()))
    groups = _build_groups(raw.get("groups", ()), problems)
    sysctl = _build_sysctl(_section(raw, "sysctl"), problems)
    strip = _build_strip(_section(raw, "strip"), kernel, problems)
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
        agent=Agent(**_values(_section(raw, "agent"), "agent")),
    )


def _build_image(table: Raw, problems: _Problems) -> Image:
    for required in ("name", "version"):
        if required not in table:
            problems.append(
                f"{_display(problems.path)}: [image].{required}: required key is missing"
            )
    values = _values(table, "image")
    # Placeholders while the missing key is reported, so the other checks still run.
    name = values["name"] if "name" in table else "unnamed"
    version = values["version"] if "version" in table else "0"
    if "name" in table and not _NAME.match(name):
        problems.add(
            "image.name",
            f"'{name}' must be lowercase letters, digits and '-' "
            "(it becomes part of the ostree ref)",
        )
    if "version" in table and not _VERSION.match(version):
        problems.add("image.version", f"'{version}' is not a valid version")
    return Image(name=name, version=version, description=values["description"])


def _build_distribution(table: Raw, problems: _Problems) -> Distribution:
    distribution = Distribution(**_values(table, "distribution"))
    for key_name in ("mirror", "security_mirror"):
        url = getattr(distribution, key_name)
        if not re.match(r"^(https?|file)://", url):
            problems.add(f"distribution.{key_name}", f"'{url}' is not an http(s):// or file:// URL")
    return distribution


def _build_packages(table: Raw, problems: _Problems) -> Packages:
    packages = Packages(**_values(table, "packages"))
    for list_name, names in (("include", packages.include), ("exclude", packages.exclude)):
        for pkg in names:
            if not _PACKAGE.match(pkg):
                problems.add(f"packages.{list_name}:{pkg}", f"'{pkg}' is not a valid package name")
    for pkg in sorted(set(packages.include) & set(packages.exclude)):
        a = problems.file_of(f"packages.include:{pkg}")
        b = problems.file_of(f"packages.exclude:{pkg}")
        problems.append(
            f"{a}: [packages].include: '{pkg}' is also in [packages].exclude ({b}): "
            "a package cannot be both"
        )
    return packages


def _build_kernel(table: Raw, packages: Packages, problems: _Problems) -> Kernel:
    kernel = Kernel(**_values(table, "kernel"))
    if kernel.package in packages.exclude:
        problems.add("kernel.package", f"'{kernel.package}' is in [packages].exclude")
    for arg in kernel.arguments:
        if not arg or any(c.isspace() for c in arg):
            problems.add(f"kernel.arguments:{arg}", f"{arg!r} must be one argument without spaces")
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
        if not _REFERENCE.match(image.reference):
            problems.append(
                f"{_display(entry['__file__'])}: [[containers.preload]].reference: "
                f"'{image.reference}' is not a full image reference (registry/name:tag)"
            )
        preload.append(image)
    return Containers(**_values(table, "containers"), preload=tuple(preload))


def _build_file(entry: Raw, problems: _Problems) -> FileEntry:
    where = f"{_display(entry['__file__'])}: [[files]] path={entry.get('path')!r}"
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
    for account in ("owner", "group"):
        if not _ACCOUNT.match(values[account]):
            problems.append(f"{where}: {account} '{values[account]}' is not a valid name")
    # A mode of 0 has always meant the default mode.
    mode = values["mode"] or DEFAULTS["files.mode"]
    return FileEntry(**{**values, "path": PurePosixPath(target), "mode": mode})


def _build_units(table: Raw, problems: _Problems) -> Units:
    units = Units(**_values(table, "units"))
    for list_name in ("enable", "disable", "mask"):
        for unit in getattr(units, list_name):
            if not _UNIT.match(unit):
                problems.add(
                    f"units.{list_name}:{unit}",
                    f"'{unit}' is not a systemd unit name (e.g. 'foo.service')",
                )
    for a_name, b_name in (("enable", "mask"), ("enable", "disable"), ("disable", "mask")):
        for unit in sorted(set(getattr(units, a_name)) & set(getattr(units, b_name))):
            problems.add(f"units.{a_name}:{unit}", f"'{unit}' is also in [units].{b_name}")
    return units


def _build_user(entry: Raw, problems: _Problems) -> User:
    where = f"{_display(entry['__file__'])}: [[users]] name={entry.get('name')!r}"
    user = User(**_values(entry, "users"))
    if not _ACCOUNT.match(user.name):
        problems.append(f"{where}: '{user.name}' is not a valid user name")
    if user.uid is not None and not 0 < user.uid < 65534:
        problems.append(f"{where}: uid {user.uid} is outside 1..65533")
    return user


def _build_groups(entries: list[Raw], problems: _Problems) -> tuple[Group, ...]:
    groups = tuple(Group(**_values(entry, "groups")) for entry in entries)
    for group in groups:
        if not _ACCOUNT.match(group.name):
            problems.add(f"groups:{group.name}", f"'{group.name}' is not a valid group name")
    return groups


def _build_sysctl(table: Raw, problems: _Problems) -> tuple[tuple[str, str], ...]:
    sysctl = tuple(sorted((k, _sysctl_value(v)) for k, v in table.items()))
    for key_name, _ in sysctl:
        if not _SYSCTL.match(key_name):
            problems.add(f"sysctl:{key_name}", f"'{key_name}' is not a sysctl key")
    return sysctl


def _build_strip(table: Raw, kernel: Kernel, problems: _Problems) -> Strip:
    strip = Strip(**_values(table, "strip"))
    for pkg in strip.remove:
        if pkg in (kernel.package,):
            problems.add(f"strip.remove:{pkg}", "cannot remove the kernel package")
    for pattern in strip.paths:
        if not pattern.startswith("/") or ".." in pattern.split("/"):
            problems.add("strip.paths", f"'{pattern}' must be an absolute path inside the image")
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


def _display(path: Path | None) -> str:
    if path is None:
        return "<manifest>"
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _describe(value: object) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array"}.get(
        type(value), "table" if isinstance(value, dict) else type(value).__name__
    )
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)

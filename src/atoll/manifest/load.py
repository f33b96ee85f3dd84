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
that wrote them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
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
from atoll.manifest.schema import SCHEMA, Key, Kind

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
        if key.kind is Kind.TABLE:
            _merge_table(into.setdefault(name, {}), value, key.keys, file, f"{path}.", origin)
        elif key.kind is Kind.STR_LIST:
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
        elif key.kind is Kind.TABLE_LIST:
            entries: list[Raw] = into.setdefault(name, [])
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
        elif key.kind is Kind.STR_MAP:
            table: Raw = into.setdefault(name, {})
            for k, v in value.items():
                origin[f"{path}:{k}"] = file
                table[k] = v
        else:
            origin[path] = file
            into[name] = (file.parent / value).resolve() if key.kind is Kind.PATH else value


# --- structural checks, one file at a time ------------------------------------------------


def _check_table(
    raw: Raw, schema: Mapping[str, Key], file: Path, prefix: str, problems: list[str]
) -> None:
    where = _display(file)
    for name, value in raw.items():
        path = f"{prefix}{name}"
        key = schema.get(name)
        if key is None:
            near = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.6)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            section = _section_label(prefix)
            problems.append(f"{where}: {section}unknown key '{name}'{hint}")
            continue
        _check_value(value, key, file, path, problems)
    # Required keys of tables ([image].name...) are checked on the merged manifest:
    # a file that extends another may leave them to its parent.


def _check_value(value: Any, key: Key, file: Path, path: str, problems: list[str]) -> None:
    where = f"{_display(file)}: {_key_label(path)}"

    def wrong(expected: str) -> None:
        problems.append(f"{where}: expected {expected}, got {_describe(value)}")

    match key.kind:
        case Kind.STR | Kind.PATH:
            if not isinstance(value, str):
                wrong("a string")
            elif key.kind is Kind.PATH and not (file.parent / value).exists():
                problems.append(f"{where}: file '{value}' not found (relative to {_display(file)})")
        case Kind.INT:
            if not isinstance(value, int) or isinstance(value, bool):
                wrong("an integer")
        case Kind.BOOL:
            if not isinstance(value, bool):
                wrong("true or false")
        case Kind.MODE:
            if _parse_mode(value) is None:
                wrong('a file mode such as "0644"')
        case Kind.ENUM:
            if not isinstance(value, str):
                wrong(f"one of {_quoted(list(key.choices))}")
            elif value not in key.choices:
                near = difflib.get_close_matches(value, list(key.choices), n=1, cutoff=0.5)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                problems.append(
                    f"{where}: '{value}' is not one of {_quoted(list(key.choices))}{hint}"
                )
        case Kind.STR_LIST:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                wrong("a list of strings")
        case Kind.STR_MAP:
            if not isinstance(value, dict):
                wrong("a table")
            else:
                for k, v in value.items():
                    if not isinstance(v, str | int | bool) or isinstance(v, float):
                        problems.append(
                            f"{where}.{k}: expected a string, integer or boolean, "
                            f"got {_describe(v)}"
                        )
        case Kind.TABLE:
            if not isinstance(value, dict):
                wrong("a table")
            else:
                _check_table(value, key.keys, file, f"{path}.", problems)
        case Kind.TABLE_LIST:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                wrong("an array of tables")
                return
            for i, entry in enumerate(value):
                item_path = f"{path}[{i}]"
                for name in entry:
                    if name not in key.keys:
                        near = difflib.get_close_matches(name, list(key.keys), n=1, cutoff=0.6)
                        hint = f" (did you mean '{near[0]}'?)" if near else ""
                        problems.append(
                            f"{_display(file)}: {_key_label(item_path)}: unknown key '{name}'{hint}"
                        )
                    else:
                        _check_value(
                            entry[name], key.keys[name], file, f"{item_path}.{name}", problems
                        )
                for name, sub in key.keys.items():
                    if sub.required and name not in entry:
                        problems.append(
                            f"{_display(file)}: {_key_label(item_path)}: "
                            f"required key '{name}' is missing"
                        )


# --- building the model, with semantic checks ----------------------------------------------


def _build(
    raw: Raw, origin: Origin, path: Path, sources: tuple[Path, ...], problems: list[str]
) -> Manifest:
    def at(key: str) -> str:
        return f"{_display(origin.get(key, path))}: {_key_label(key)}"

    def section(name: str) -> Raw:
        value = raw.get(name, {})
        return value if isinstance(value, dict) else {}

    image_raw = section("image")
    for required in ("name", "version"):
        if required not in image_raw:
            problems.append(f"{_display(path)}: [image].{required}: required key is missing")
    name = str(image_raw.get("name", "unnamed"))
    version = str(image_raw.get("version", "0"))
    if "name" in image_raw and not _NAME.match(name):
        problems.append(
            f"{at('image.name')}: '{name}' must be lowercase letters, digits and '-' "
            "(it becomes part of the ostree ref)"
        )
    if "version" in image_raw and not _VERSION.match(version):
        problems.append(f"{at('image.version')}: '{version}' is not a valid version")
    image = Image(name=name, version=version, description=str(image_raw.get("description", "")))

    dist_raw = section("distribution")
    distribution = Distribution(**_frozen(dist_raw))
    for key_name in ("mirror", "security_mirror"):
        url = getattr(distribution, key_name)
        if not re.match(r"^(https?|file)://", url):
            problems.append(
                f"{at('distribution.' + key_name)}: '{url}' is not an http(s):// or file:// URL"
            )

    pkg_raw = section("packages")
    packages = Packages(
        include=tuple(pkg_raw.get("include", ())), exclude=tuple(pkg_raw.get("exclude", ()))
    )
    for list_name, names in (("include", packages.include), ("exclude", packages.exclude)):
        for pkg in names:
            if not _PACKAGE.match(pkg):
                problems.append(
                    f"{at(f'packages.{list_name}:{pkg}')}: '{pkg}' is not a valid package name"
                )
    for pkg in sorted(set(packages.include) & set(packages.exclude)):
        a = _display(origin.get(f"packages.include:{pkg}", path))
        b = _display(origin.get(f"packages.exclude:{pkg}", path))
        problems.append(
            f"{a}: [packages].include: '{pkg}' is also in [packages].exclude ({b}): "
            "a package cannot be both"
        )

    kernel_raw = section("kernel")
    kernel = Kernel(
        package=str(kernel_raw.get("package", Kernel.package)),
        arguments=tuple(kernel_raw.get("arguments", ())),
        modules_keep=tuple(kernel_raw.get("modules_keep", ())),
    )
    if kernel.package in packages.exclude:
        problems.append(f"{at('kernel.package')}: '{kernel.package}' is in [packages].exclude")
    for arg in kernel.arguments:
        if not arg or any(c.isspace() for c in arg):
            problems.append(
                f"{at('kernel.arguments:' + arg)}: {arg!r} must be one argument without spaces"
            )

    init = Init(strategy=InitStrategy(section("init").get("strategy", InitStrategy.PREPARE_ROOT)))
    if init.strategy is InitStrategy.PREPARE_ROOT and "initramfs-tools" in packages.include:
        problems.append(
            f"{at('packages.include:initramfs-tools')}: initramfs-tools conflicts with "
            "[init].strategy = 'atoll-prepare-root' (no initramfs)"
        )

    containers_raw = section("containers")
    preload = []
    for entry in containers_raw.get("preload", []):
        reference = str(entry["reference"])
        if not _REFERENCE.match(reference):
            problems.append(
                f"{_display(entry['__file__'])}: [[containers.preload]].reference: "
                f"'{reference}' is not a full image reference (registry/name:tag)"
            )
        preload.append(PreloadImage(archive=Path(entry["archive"]), reference=reference))
    containers = Containers(
        runtime=bool(containers_raw.get("runtime", True)), preload=tuple(preload)
    )

    files = tuple(_build_file(entry, problems) for entry in raw.get("files", []))

    units_raw = section("units")
    units = Units(
        enable=tuple(units_raw.get("enable", ())),
        disable=tuple(units_raw.get("disable", ())),
        mask=tuple(units_raw.get("mask", ())),
    )
    for list_name in ("enable", "disable", "mask"):
        for unit in getattr(units, list_name):
            if not _UNIT.match(unit):
                problems.append(
                    f"{at(f'units.{list_name}:{unit}')}: '{unit}' is not a systemd unit name "
                    "(e.g. 'foo.service')"
                )
    for a_name, b_name in (("enable", "mask"), ("enable", "disable"), ("disable", "mask")):
        for unit in sorted(set(getattr(units, a_name)) & set(getattr(units, b_name))):
            problems.append(f"{at(f'units.{a_name}:{unit}')}: '{unit}' is also in [units].{b_name}")

    users = tuple(_build_user(entry, problems) for entry in raw.get("users", []))
    groups = tuple(
        Group(name=str(e["name"]), gid=e.get("gid"), system=bool(e.get("system", True)))
        for e in raw.get("groups", [])
    )
    for group in groups:
        if not _ACCOUNT.match(group.name):
            problems.append(
                f"{at('groups:' + group.name)}: '{group.name}' is not a valid group name"
            )

    sysctl = tuple(sorted((k, _sysctl_value(v)) for k, v in section("sysctl").items()))
    for key_name, _ in sysctl:
        if not _SYSCTL.match(key_name):
            problems.append(f"{at('sysctl:' + key_name)}: '{key_name}' is not a sysctl key")

    strip_raw = section("strip")
    strip = Strip(**_frozen(strip_raw))
    for pkg in strip.remove:
        if pkg in (kernel.package,):
            problems.append(f"{at('strip.remove:' + pkg)}: cannot remove the kernel package")
    for pattern in strip.paths:
        if not pattern.startswith("/") or ".." in pattern.split("/"):
            problems.append(
                f"{at('strip.paths')}: '{pattern}' must be an absolute path inside the image"
            )

    agent = Agent(include=bool(section("agent").get("include", True)))

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
        agent=agent,
    )


def _build_file(entry: Raw, problems: list[str]) -> FileEntry:
    where = f"{_display(entry['__file__'])}: [[files]] path={entry.get('path')!r}"
    target = str(entry["path"])
    if not target.startswith("/") or ".." in PurePosixPath(target).parts:
        problems.append(f"{where}: path must be absolute and must not contain '..'")
    elif any(target == r or target.startswith(r + "/") for r in _FORBIDDEN_ROOTS):
        root = next(r for r in _FORBIDDEN_ROOTS if target == r or target.startswith(r + "/"))
        problems.append(
            f"{where}: {root} is not part of the image (runtime or per-node state); "
            "use /etc, /usr or a tmpfiles.d entry"
        )
    has_source = "source" in entry
    has_content = "content" in entry
    if has_source == has_content:
        problems.append(f"{where}: give exactly one of 'source' or 'content'")
    for account in ("owner", "group"):
        value = str(entry.get(account, "root"))
        if not _ACCOUNT.match(value):
            problems.append(f"{where}: {account} '{value}' is not a valid name")
    return FileEntry(
        path=PurePosixPath(target),
        source=Path(entry["source"]) if has_source else None,
        content=str(entry["content"]) if has_content else None,
        mode=_parse_mode(entry.get("mode", "0644")) or 0o644,
        owner=str(entry.get("owner", "root")),
        group=str(entry.get("group", "root")),
    )


def _build_user(entry: Raw, problems: list[str]) -> User:
    where = f"{_display(entry['__file__'])}: [[users]] name={entry.get('name')!r}"
    name = str(entry["name"])
    if not _ACCOUNT.match(name):
        problems.append(f"{where}: '{name}' is not a valid user name")
    uid = entry.get("uid")
    if uid is not None and not 0 < uid < 65534:
        problems.append(f"{where}: uid {uid} is outside 1..65533")
    return User(
        name=name,
        uid=uid,
        group=entry.get("group"),
        groups=tuple(entry.get("groups", ())),
        shell=str(entry.get("shell", "/usr/sbin/nologin")),
        home=entry.get("home"),
        system=bool(entry.get("system", True)),
    )


# --- small helpers -----------------------------------------------------------------------


def _frozen(table: Raw) -> dict[str, Any]:
    """Lists become tuples, for the frozen dataclasses (keys were checked against SCHEMA)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}


def _parse_mode(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0o7777 else None
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
        return int(value, 8)
    return None


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

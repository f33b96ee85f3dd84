"""The model and the loader take their defaults from the schema table, and only from it."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from atoll.manifest import load_manifest
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
from atoll.manifest.schema import DEFAULTS, SCHEMA, Key, Kind, model_value, walk

# Each table (or array of tables) of the schema -> the dataclass that holds it.
MODEL: dict[str, type[Any]] = {
    "": Manifest,
    "image": Image,
    "distribution": Distribution,
    "packages": Packages,
    "kernel": Kernel,
    "init": Init,
    "containers": Containers,
    "containers.preload": PreloadImage,
    "files": FileEntry,
    "units": Units,
    "users": User,
    "groups": Group,
    "strip": Strip,
    "kubernetes": Kubernetes,
    "agent": Agent,
}
NOT_FROM_THE_FILE = {"path", "sources"}  # Manifest: where it was loaded from
TOP_LEVEL_ONLY = {"extends"}  # how a file is read, not part of the model


def _keys(prefix: str) -> dict[str, Key]:
    if not prefix:
        return {n: k for n, k in SCHEMA.items() if n not in TOP_LEVEL_ONLY}
    return dict(dict(walk())[prefix].keys)


def test_every_table_of_the_schema_has_a_model_class() -> None:
    tables = {path for path, key in walk() if key.kind in {Kind.TABLE, Kind.TABLE_LIST}}
    assert tables | {""} == set(MODEL)


@pytest.mark.parametrize("prefix", list(MODEL), ids=lambda p: p or "manifest")
def test_model_fields_are_the_schemas_keys_with_its_defaults(prefix: str) -> None:
    skip = NOT_FROM_THE_FILE if not prefix else set()
    fields = {f.name: f for f in dataclasses.fields(MODEL[prefix]) if f.name not in skip}
    keys = _keys(prefix)
    assert list(fields) == list(keys)
    for name, key in keys.items():
        field = fields[name]
        path = f"{prefix}.{name}" if prefix else name
        if key.required:
            assert field.default is dataclasses.MISSING, path
            assert field.default_factory is dataclasses.MISSING, path
        elif key.kind is Kind.TABLE:
            factory: object = field.default_factory
            assert factory is MODEL[path], path
        else:
            assert field.default == DEFAULTS[path], path
            assert type(field.default) is type(DEFAULTS[path]), path


@pytest.mark.parametrize(
    ("key", "written", "held"),
    [
        (Key(Kind.STR_LIST, ""), ["a", "b"], ("a", "b")),
        (Key(Kind.MODE, ""), "0640", 0o640),
        (Key(Kind.MODE, ""), 0o600, 0o600),
        (Key(Kind.PATH, ""), "/x/y", Path("/x/y")),
        (
            Key(Kind.ENUM, "", default=InitStrategy.PREPARE_ROOT),
            "initramfs",
            InitStrategy.INITRAMFS,
        ),
        (Key(Kind.ENUM, "", default="amd64"), "arm64", "arm64"),
        (Key(Kind.STR, ""), None, None),
        (Key(Kind.BOOL, ""), False, False),
    ],
)
def test_model_value(key: Key, written: object, held: object) -> None:
    value = model_value(key, written)
    assert value == held
    assert type(value) is type(held)


def test_defaults_are_the_model_forms_of_the_tables_defaults() -> None:
    assert DEFAULTS["distribution.components"] == ("main",)
    assert DEFAULTS["files.mode"] == 0o644
    assert DEFAULTS["init.strategy"] is InitStrategy.PREPARE_ROOT
    assert DEFAULTS["files"] == () and DEFAULTS["sysctl"] == ()
    assert "image" not in DEFAULTS  # a table: its dataclass is the default


def test_loader_fills_every_absent_key_from_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        textwrap.dedent(
            """
            [image]
            name = "x"
            version = "1"
            [[containers.preload]]
            archive = "m.toml"
            reference = "docker.io/library/busybox:1.36"
            [[files]]
            path = "/etc/x"
            content = ""
            [[users]]
            name = "svc"
            [[groups]]
            name = "svc"
            """
        )
    )
    m = load_manifest(path)
    loaded: dict[str, object] = {
        "image": m.image,
        "containers.preload": m.containers.preload[0],
        "files": m.files[0],
        "users": m.users[0],
        "groups": m.groups[0],
        **{name: getattr(m, name) for name, key in SCHEMA.items() if key.kind is Kind.TABLE},
    }
    given = {"image.name", "image.version", "containers.preload.archive"}
    given |= {"containers.preload.reference", "files.path", "files.content"}
    given |= {"users.name", "groups.name"}
    for path_, key in walk():
        section, _, name = path_.rpartition(".")
        if not section or path_ in given or key.kind in {Kind.TABLE, Kind.TABLE_LIST}:
            continue
        value = getattr(loaded[section], name)
        assert value == DEFAULTS[path_], path_
        assert type(value) is type(DEFAULTS[path_]), path_

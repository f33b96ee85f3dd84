"""docs/manifest.md documents every schema key with its default (the reference cannot drift)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from atoll.manifest import load_manifest
from atoll.manifest.schema import Key, Kind, all_key_paths, walk

DOC = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"

# "- `files.owner`, `files.group` (names, default `root`): ..." -> the keys and what the
# parenthesis says about them; a bullet's continuation lines are indented.
_ENTRY = re.compile(r"^- (?P<keys>`[a-z_.]+`(?:, `[a-z_.]+`)*)(?: \((?P<attrs>[^()]*)\))?")
_DEFAULT = re.compile(r"\bdefault (`[^`]*`|true|false|empty)")


def _entries(text: str) -> dict[str, list[str]]:
    """Each key a bullet documents -> the attributes of every bullet that documents it."""
    bullets: list[str] = []
    for line in text.splitlines():
        if line.startswith("- "):
            bullets.append(line)
        elif line.startswith("  ") and bullets:
            bullets[-1] += " " + line.strip()
        else:
            bullets.append("")
    entries: dict[str, list[str]] = {}
    for bullet in bullets:
        match = _ENTRY.match(bullet)
        if match is None:
            continue
        for key in re.findall(r"`([a-z_.]+)`", match["keys"]):
            entries.setdefault(key, []).append(match["attrs"] or "")
    return entries


def _written(key: Key) -> str | None:
    """How the page writes ``key``'s default; None when it is empty (or there is none)."""
    value = key.default
    if value is None or value in ("", ()):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return f"`{json.dumps(list(value))}`"
    if key.kind is Kind.MODE:  # a string in TOML: an integer 644 would be another mode
        return f'`"{value}"`'
    return f"`{value}`"


ENTRIES = _entries(DOC.read_text())


def test_every_schema_key_is_documented() -> None:
    text = DOC.read_text()
    missing = [path for path in all_key_paths() if f"`{path}`" not in text]
    assert missing == []


def test_every_schema_key_has_one_entry_and_every_entry_a_key() -> None:
    assert {path: len(ENTRIES.get(path, [])) for path in all_key_paths()} == dict.fromkeys(
        all_key_paths(), 1
    )
    assert sorted(set(ENTRIES) - set(all_key_paths())) == []


@pytest.mark.parametrize(("path", "key"), list(walk()), ids=all_key_paths())
def test_entry_states_the_schemas_default_and_whether_required(path: str, key: Key) -> None:
    (attrs,) = ENTRIES[path]
    stated = _DEFAULT.search(attrs)
    default = stated[1] if stated else None
    if _written(key) is None:
        assert default in (None, "empty"), f"{path}: the schema has no default"
    else:
        assert default == _written(key), path
    assert ("required" in attrs.split(", ")) == key.required, path


def test_entries_are_recognised() -> None:
    """The parser above reads what the page says (else the tests above prove nothing)."""
    entries = _entries(
        "- `a.b` (string, default `x`): text\n"
        "- `c`, `d` (names,\n  default true)\n"
        "- `e`: no attributes\n"
        "not a bullet `f` (default `y`)\n"
    )
    assert entries == {
        "a.b": ["string, default `x`"],
        "c": ["names, default true"],
        "d": ["names, default true"],
        "e": [""],
    }


def test_shipped_examples_parse() -> None:
    base = load_manifest(DOC.parents[1] / "examples" / "base.toml")
    assert base.ref == "atoll/x86_64/base"

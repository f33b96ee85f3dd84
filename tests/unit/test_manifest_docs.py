"""docs/manifest.md documents every key of the schema (the reference cannot drift)."""

from __future__ import annotations

from pathlib import Path

from atoll.manifest import load_manifest
from atoll.manifest.schema import all_key_paths

DOC = Path(__file__).resolve().parents[2] / "docs" / "manifest.md"


def test_every_schema_key_is_documented() -> None:
    text = DOC.read_text()
    missing = [path for path in all_key_paths() if f"`{path}`" not in text]
    assert missing == []


def test_shipped_examples_parse() -> None:
    base = load_manifest(DOC.parents[1] / "examples" / "base.toml")
    assert base.ref == "atoll/x86_64/base"

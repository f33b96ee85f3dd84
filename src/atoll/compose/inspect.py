"""``atoll inspect``: what a composed commit is, and what changed since its parent.

Everything comes from the repository alone (commit metadata and the SBOM the
image carries at ``/usr/share/atoll/sbom.json``), so any published repo can
be inspected, not only one this machine composed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atoll.compose.pipeline import METADATA_KEYS
from atoll.compose.slim import SBOM_PATH
from atoll.errors import InputError
from atoll.tools import ostree


@dataclass
class PackageChange:
    name: str
    old: str | None  # None: added
    new: str | None  # None: removed


@dataclass
class Inspection:
    commit: str
    ref: str
    metadata: dict[str, object]
    content_checksum: str
    date: str
    packages: list[dict[str, str]]
    parent: str | None
    package_changes: list[PackageChange] = field(default_factory=list)
    files_added: int = 0
    files_removed: int = 0
    files_modified: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "commit": self.commit,
            "ref": self.ref,
            "version": self.metadata.get("version"),
            "metadata": self.metadata,
            "content_checksum": self.content_checksum,
            "date": self.date,
            "packages": self.packages,
            "parent": self.parent,
            "changes": {
                "packages": [
                    {"name": c.name, "old": c.old, "new": c.new} for c in self.package_changes
                ],
                "files_added": self.files_added,
                "files_removed": self.files_removed,
                "files_modified": self.files_modified,
            },
        }


def _sbom(repo: Path, commit: str) -> list[dict[str, str]]:
    data = json.loads(ostree.cat(repo, commit, "/" + SBOM_PATH))
    return [p for p in data["packages"] if p.get("state") == "installed"]


def inspect(repo: Path, ref: str) -> Inspection:
    if not (repo / "config").exists():
        raise InputError(f"{repo}: not an ostree repository")
    commit = ostree.rev_parse(repo, ref)
    if commit is None:
        known = ", ".join(ostree.refs(repo)) or "none"
        raise InputError(f"{repo}: no ref or commit '{ref}' (refs: {known})")
    info = ostree.commit_info(repo, commit)
    packages = _sbom(repo, commit)
    result = Inspection(
        commit=commit,
        ref=ref,
        metadata=ostree.commit_metadata(repo, commit, METADATA_KEYS),
        content_checksum=info.get("contentchecksum", ""),
        date=info.get("date", ""),
        packages=packages,
        parent=ostree.parent_of(repo, commit),
    )
    if result.parent is not None:
        old = {p["name"]: p["version"] for p in _sbom(repo, result.parent)}
        new = {p["name"]: p["version"] for p in packages}
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                result.package_changes.append(PackageChange(name, old.get(name), new.get(name)))
        changes = ostree.diff(repo, result.parent, commit)
        result.files_added = sum(1 for c in changes if c.kind == "A")
        result.files_removed = sum(1 for c in changes if c.kind == "D")
        result.files_modified = sum(1 for c in changes if c.kind == "M")
    return result

"""A thin typed wrapper around the ``ostree`` command line.

Only what several stages share lives here: creating repositories, committing
a tree, resolving refs, reading a commit's metadata, listing a tree. Stages
add what they need; nobody forks it. Every call goes through
:func:`atoll.process.run`, so a failure names the argv and ostree's stderr.

ostree prints GVariant text for metadata values (``'1.0.0'``, ``uint64 5``);
:func:`commit_metadata` reads them through ``--print-metadata-key`` one key at
a time and :func:`parse_gvariant_text` turns the simple types atoll writes
(strings, integers, booleans) back into Python values.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from atoll.errors import AtollError, ToolError
from atoll.process import run

_TYPED_INT = re.compile(r"^(?:u?int(?:16|32|64)|byte)\s+(-?\d+)$")


@dataclass(frozen=True)
class TreeEntry:
    """One line of ``ostree ls -R -C``."""

    kind: str  # "d", "-", "l"
    mode: int
    uid: int
    gid: int
    size: int
    checksum: str
    path: str
    target: str = ""


def init_repo(repo: Path, mode: str = "archive") -> None:
    """Create ``repo`` if it is not already an ostree repository."""
    if (repo / "config").exists() and (repo / "objects").is_dir():
        return
    repo.mkdir(parents=True, exist_ok=True)
    run(["ostree", "init", f"--repo={repo}", f"--mode={mode}"])


def commit(
    repo: Path,
    tree: Path,
    *,
    branch: str | None,
    subject: str,
    metadata: Mapping[str, str],
    timestamp: int | None = None,
    parent: str | None = None,
    owner_root: bool = False,
) -> str:
    """Commit the directory ``tree``; return the commit checksum.

    ``branch=None`` writes the commit without moving any ref (the caller moves
    it later with :func:`set_ref`, so an interrupted run leaves refs alone).
    """
    argv: list[str] = [
        "ostree",
        "commit",
        f"--repo={repo}",
        f"--tree=dir={tree}",
        f"--subject={subject}",
        "--no-bindings",
    ]
    if branch is None:
        argv.append("--orphan")
    else:
        argv.append(f"--branch={branch}")
    if timestamp is not None:
        argv.append(f"--timestamp=@{timestamp}")
    if parent is not None:
        argv.append(f"--parent={parent}")
    if owner_root:
        argv += ["--owner-uid=0", "--owner-gid=0"]
    for key, value in sorted(metadata.items()):
        argv.append(f"--add-metadata-string={key}={value}")
    result = run(argv)
    return result.stdout.decode().strip()


def pull_local(repo: Path, source: Path, checksum: str) -> None:
    """Copy a commit and its objects from the local repo ``source`` (no ref moves)."""
    run(["ostree", "pull-local", f"--repo={repo}", "--untrusted", str(source), checksum])


def set_ref(repo: Path, ref: str, checksum: str) -> None:
    """Point ``ref`` at ``checksum`` (one atomic file replacement inside ostree)."""
    run(["ostree", "refs", f"--repo={repo}", "--force", f"--create={ref}", checksum])


def rev_parse(repo: Path, ref: str) -> str | None:
    """The checksum ``ref`` points to, or None when the ref does not exist."""
    result = run(["ostree", "rev-parse", f"--repo={repo}", ref], check=False)
    if result.returncode != 0:
        return None
    return result.stdout.decode().strip()


def has_commit(repo: Path, checksum: str) -> bool:
    """Whether the commit object itself is in ``repo`` (rev-parse accepts any checksum)."""
    return (repo / "objects" / checksum[:2] / f"{checksum[2:]}.commit").exists()


def refs(repo: Path) -> list[str]:
    return run(["ostree", "refs", f"--repo={repo}"]).stdout.decode().split()


def parent_of(repo: Path, checksum: str) -> str | None:
    """The parent commit recorded in ``checksum``, if it is in the repo."""
    result = run(["ostree", "rev-parse", f"--repo={repo}", f"{checksum}^"], check=False)
    if result.returncode != 0:
        return None
    return result.stdout.decode().strip()


def commit_metadata(repo: Path, checksum: str, keys: Sequence[str]) -> dict[str, object]:
    """Read the named metadata keys of a commit (absent keys are left out)."""
    found: dict[str, object] = {}
    for key in keys:
        result = run(
            ["ostree", "show", f"--repo={repo}", f"--print-metadata-key={key}", checksum],
            check=False,
        )
        if result.returncode == 0:
            found[key] = parse_gvariant_text(result.stdout.decode().strip())
    return found


def commit_info(repo: Path, checksum: str) -> dict[str, str]:
    """Subject, date and content checksum lines of ``ostree show``."""
    text = run(["ostree", "show", f"--repo={repo}", checksum]).stdout.decode()
    info: dict[str, str] = {}
    lines = text.splitlines()
    for line in lines:
        for field in ("ContentChecksum", "Date", "Parent", "Version"):
            if line.startswith(f"{field}:"):
                info[field.lower()] = line.split(":", 1)[1].strip()
    body = [line.strip() for line in lines if line.startswith("    ")]
    if body:
        info["subject"] = body[0]
    return info


def list_tree(repo: Path, checksum: str, path: str = "/") -> list[TreeEntry]:
    """Every entry under ``path`` in a commit, recursively, with content checksums."""
    try:
        text = run(["ostree", "ls", f"--repo={repo}", "-R", "-C", checksum, path]).stdout.decode()
    except ToolError as e:
        raise AtollError(f"{repo}: cannot list {path} in {checksum[:12]}: {e.stderr_tail}") from e
    entries: list[TreeEntry] = []
    for line in text.splitlines():
        # "-00644 0 0   1234 <checksum> /usr/bin/x" ; links end "-> target".
        # Directories carry two checksums (dirtree, dirmeta) before the path.
        fields = 7 if line.startswith("d") else 6
        parts = line.split(None, fields - 1)
        if len(parts) < fields:
            continue
        kind_mode, uid, gid, size, checksum_field = parts[:5]
        rest = parts[-1]
        target = ""
        if kind_mode[0] == "l" and " -> " in rest:
            rest, target = rest.split(" -> ", 1)
        entries.append(
            TreeEntry(
                kind=kind_mode[0],
                mode=int(kind_mode[1:], 8),
                uid=int(uid),
                gid=int(gid),
                size=int(size),
                checksum=checksum_field,
                path=rest,
                target=target,
            )
        )
    return entries


def cat(repo: Path, checksum: str, path: str) -> bytes:
    return run(["ostree", "cat", f"--repo={repo}", checksum, path]).stdout


def parse_gvariant_text(text: str) -> object:
    """Parse the GVariant text of a simple value: string, integer or boolean."""
    match = _TYPED_INT.match(text)
    if match:
        return int(match.group(1))
    if text in {"true", "false"}:
        return text == "true"
    if text[:1] in {"'", '"'}:
        try:
            return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return text
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text

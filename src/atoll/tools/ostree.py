"""A thin typed wrapper around the ``ostree`` command line.

Every ``ostree`` command line atoll runs on the host is written here, once:
repositories (init, commit, refs, pull-local, summary, prune), reading commits
(metadata, listings, files, diffs), static deltas, and the offline
``ostree admin`` steps that make a disk's sysroot. Stages add what they need;
nobody forks it. Every call goes through :func:`atoll.process.run`, so a
failure names the argv and ostree's stderr. (The node runs its own ostree
through :mod:`atoll.agent`, with the standard library only.)

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
# A static delta's name: "FROM-TO" in hex, or "TO" alone for a delta from nothing.
_DELTA_NAME = re.compile(r"([0-9a-f]{64}-)?[0-9a-f]{64}")


@dataclass(frozen=True)
class TreeChange:
    """One line of ``ostree diff``: ``kind`` is ``A`` (added), ``D`` (deleted) or ``M``."""

    kind: str
    path: str


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


def cat_if_present(repo: Path, checksum: str, path: str) -> bytes | None:
    """The file at ``path`` in a commit, or None when ostree cannot read it there."""
    result = run(["ostree", "cat", f"--repo={repo}", checksum, path], check=False)
    return result.stdout if result.returncode == 0 else None


def diff(repo: Path, old: str, new: str) -> list[TreeChange]:
    """What changed in the tree from commit ``old`` to commit ``new``."""
    text = run(["ostree", "diff", f"--repo={repo}", old, new]).stdout.decode()
    changes: list[TreeChange] = []
    for line in text.splitlines():
        kind, _, path = line.partition(" ")
        if kind in {"A", "D", "M"}:
            changes.append(TreeChange(kind, path.strip()))
    return changes


def delete_ref(repo: Path, ref: str) -> None:
    run(["ostree", "refs", f"--repo={repo}", "--delete", ref])


def update_summary(repo: Path) -> None:
    """Rewrite the repository's summary file (what clients read to find refs and deltas)."""
    run(["ostree", "summary", f"--repo={repo}", "-u"])


def prune_unreachable(repo: Path) -> str:
    """Delete every object no ref reaches (no history kept); ostree's report of what went."""
    result = run(["ostree", "prune", f"--repo={repo}", "--refs-only", "--depth=0"])
    return result.stdout.decode().strip()


def generate_static_delta(repo: Path, old: str, new: str) -> None:
    """A static delta from commit ``old`` to commit ``new`` (one download instead of objects)."""
    run(["ostree", "static-delta", "generate", f"--repo={repo}", f"--from={old}", f"--to={new}"])


def static_deltas(repo: Path) -> list[str]:
    """The names of the repository's static deltas: ``FROM-TO`` (hex), or ``TO`` alone."""
    listing = run(["ostree", "static-delta", "list", f"--repo={repo}"]).stdout.decode()
    return [name for line in listing.splitlines() if _DELTA_NAME.fullmatch(name := line.strip())]


def delete_static_delta(repo: Path, name: str) -> None:
    run(["ostree", "static-delta", "delete", f"--repo={repo}", name])


def set_config(repo: Path, key: str, value: str) -> None:
    """Set ``key`` (``section.name``) in the repository's config file."""
    run(["ostree", "config", f"--repo={repo}", "set", key, value])


def pull(repo: Path, url: str, checksum: str, *, remote: str) -> None:
    """Pull ``checksum`` from the archive repository at ``url`` over HTTP, as a node does.

    The remote is (re)defined without GPG (atoll's signatures are checked by the
    caller, :func:`atoll.wire.channel.verify_commit`); ostree checks every object
    against its checksum and uses a static delta when the server has one."""
    run(["ostree", f"--repo={repo}", "remote", "delete", "--if-exists", remote])
    run(["ostree", f"--repo={repo}", "remote", "add", "--no-gpg-verify", remote, url])
    run(["ostree", f"--repo={repo}", "pull", remote, checksum])


# -- offline `ostree admin`: a sysroot in a directory, for a disk image ---------


def admin_init_fs(sysroot: Path) -> None:
    """Make ``sysroot`` an empty ostree root (modern layout)."""
    run(["ostree", "admin", "init-fs", "--modern", sysroot])


def admin_os_init(sysroot: Path, osname: str) -> None:
    """Create the state directory (``/ostree/deploy/OSNAME``) of an operating system."""
    run(["ostree", "admin", "os-init", osname, f"--sysroot={sysroot}"])


def admin_deploy(
    sysroot: Path,
    osname: str,
    target: str,
    *,
    kernel_arguments: Sequence[str] = (),
    retain: bool = False,
) -> None:
    """Deploy ``target`` (a ref or a commit in the sysroot's repo) as the new default.

    ``retain=True`` keeps every earlier deployment: offline there is no booted
    one, which is what ostree keeps by default.
    """
    argv: list[str | Path] = ["ostree", "admin", "deploy", f"--sysroot={sysroot}", f"--os={osname}"]
    argv += [f"--karg={arg}" for arg in kernel_arguments]
    if retain:
        argv.append("--retain")
    run([*argv, target])


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

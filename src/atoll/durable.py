"""Writing files so that a crash or a power cut leaves the old file or the new one.

Standard library only: both sides use it, the host (signing keys, the CA,
channel documents, caches, reports) and the node (markers, settings, the
audit head, boot entries, user data).

A file is written whole to a temporary file in the same directory, flushed to
disk (``fsync``), given its final mode, renamed over the target, and then the
directory itself is flushed so that the rename survives a power cut. Readers
never see a half-written file; a failure removes the temporary file and leaves
the target as it was. Files are created with mode 0600 until they get their
final mode, so a secret is never readable by others, not even for a moment.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["replace", "sync_directory", "write_atomic"]


def sync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename or a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), atomically and durably."""
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(staged, mode)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def replace(staged: Path, target: Path) -> None:
    """Move a finished file ``staged`` (same file system) over ``target``, durably.

    For files another program wrote (a disk image, a root filesystem tarball):
    their data is flushed first, then the rename, then the directory.
    """
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, target)
    sync_directory(target.parent)

"""Writing files so that a crash or a power cut leaves the old file or the new one.

Standard library only: both sides use it, the host (signing keys, the CA,
channel documents, caches, reports, disk images) and the node (markers,
settings, the audit head, boot entries and kernels on the ESP, user data).

A file is written whole to a temporary file in the same directory
(``.<name>.<random>.tmp``), flushed to disk (``fsync``), given its final mode,
renamed over the target, and then the directory itself is flushed so that the
rename survives a power cut. Readers never see a half-written file; a failure
removes the temporary file and leaves the target as it was. Files are created
with mode 0600 until they get their final mode, so a secret is never readable
by others, not even for a moment.

* :func:`write_atomic`: bytes or text in memory; ``exclusive=True`` never
  replaces an existing file (a key is issued once): the finished file is
  linked into place, which fails if the name exists;
* :func:`copy`: another file's bytes, streamed (a kernel onto the ESP);
* :func:`replace`: a finished file another program wrote beside the target
  (a disk image, a root filesystem tarball), or an existing file renamed
  (a boot entry losing its counter);
* :func:`sync_directory`: flush a directory's entries after a change made
  by other means.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["copy", "replace", "sync_directory", "write_atomic"]


def sync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries (a rename or a new file) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes | str, *, mode: int = 0o644, exclusive: bool = False
) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), atomically and durably.

    With ``exclusive``, ``path`` must not exist: :class:`FileExistsError` if it
    does (checked atomically, when the finished file is put in place).
    """
    payload = data.encode() if isinstance(data, str) else data
    _publish(path, lambda f: f.write(payload), mode=mode, exclusive=exclusive)


def copy(source: Path, target: Path, *, mode: int = 0o644) -> None:
    """Replace ``target`` with a copy of ``source``'s bytes, atomically and durably."""
    with open(source, "rb") as src:
        _publish(target, lambda f: shutil.copyfileobj(src, f), mode=mode, exclusive=False)


def replace(staged: Path, target: Path) -> None:
    """Move a finished file ``staged`` (same file system) over ``target``, durably.

    For files another program wrote (a disk image, a root filesystem tarball)
    and for renaming an existing file: its data is flushed first, then the
    rename, then the directory (and the one it left, if another).
    """
    fd = os.open(staged, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staged, target)
    sync_directory(target.parent)
    if staged.parent.resolve() != target.parent.resolve():
        sync_directory(staged.parent)


def _publish(path: Path, fill: Callable[[BinaryIO], object], *, mode: int, exclusive: bool) -> None:
    """Write a temporary file beside ``path`` with ``fill``, flush it, then put it in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(staged, mode)
        if exclusive:
            os.link(staged, path)  # fails if path exists: never replaces a file
            staged.unlink()
        else:
            os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)

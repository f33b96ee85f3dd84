"""What a ``[[containers.preload]].archive`` may be: outside its tree, only an OCI archive.

A preload archive is copied byte for byte into the image, so the loader must
not let it name an arbitrary file of the build machine (``/etc/shadow``, or a
symlink to it). Unlike a ``[[files]].source`` it cannot simply be confined to
its manifest's directory: the shipped manifests take theirs from
``build/images`` (written by ``atoll oci busybox``), beside the examples.
The rule (docs/manifest.md, "Extending another manifest", and "Limits"):

* always: the path, resolved (symlinks followed), is a regular file of at most
  :data:`MAX_ARCHIVE_BYTES` whose name is one word (it becomes a field of
  ``preload.list`` in the image);
* inside the manifest's tree or an ``--allow-source-outside`` directory: that
  is all, as for sources;
* anywhere else: the file must also *be* an OCI image layout archive
  (:func:`oci_archive_problem`): an uncompressed tar, read one member at a time
  with :mod:`tarfile` and at most :data:`MAX_ARCHIVE_MEMBERS` members, that
  holds ``oci-layout`` (JSON with ``imageLayoutVersion``) and ``index.json``
  (JSON with a ``manifests`` array), no absolute or ``..`` member name or link
  target, no device, FIFO or other special member, no name twice, and only
  zero blocks after its end. A host file that is not such an archive cannot be
  passed off as one.

The file is stat'ed first and opened only when it is a regular file (a FIFO or
a device is never opened); what is read is checked on the open descriptor to
be the file that was stat'ed. Every function returns the problem as a phrase
(the loader adds the file and key), or None.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import tarfile
from pathlib import Path
from typing import IO

# Limits (docs/manifest.md, "Limits").
MAX_ARCHIVE_BYTES = 2 * 1024**3  # 2 GiB: the image's /usr carries it, and compose copies it
MAX_ARCHIVE_MEMBERS = 10_000  # an OCI layout holds a handful of blobs per image
MAX_LAYOUT_JSON = 1024 * 1024  # oci-layout and index.json are read into memory

# The archive's file name is a field of the image's "<archive> <reference>" preload.list.
_FILE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,199}")
_CHUNK = 1024 * 1024


class _NotAnArchive(Exception):
    """Why the file is not an OCI image archive."""


def archive_problem(path: Path, *, confined: bool) -> str | None:
    """What is wrong with ``path`` (already resolved) as a preload archive, or None.

    ``confined``: whether it lies in the manifest's tree or an allowed
    directory; outside them it must be an OCI image archive as well.
    """
    try:
        before = os.stat(path)
    except OSError as e:
        return f"cannot read: {e.strerror}"
    problem = _file_problem(path, before)
    if problem is not None or confined:
        return problem
    return oci_archive_problem(path, before)


def _file_problem(path: Path, st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size > MAX_ARCHIVE_BYTES:
        return f"is larger than {MAX_ARCHIVE_BYTES} bytes"
    if not _FILE_NAME.fullmatch(path.name):
        return "has a file name that is not one word of letters, digits and ._+-"
    return None


def oci_archive_problem(path: Path, expected: os.stat_result | None = None) -> str | None:
    """Why the regular file ``path`` is not an OCI image layout archive, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        return f"cannot read: {e.strerror}"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or (
            expected is not None and (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino)
        ):
            return "changed while it was checked"
        try:
            _check_layout(f, st.st_size)
        except _NotAnArchive as e:
            return f"is not an OCI image archive: {e}"
        except (tarfile.TarError, EOFError, ValueError, LookupError, OverflowError) as e:
            # tarfile lets some errors of a corrupt header through unwrapped.
            return f"is not an OCI image archive: not a tar ({str(e)[:80]})"
        except OSError as e:
            return f"cannot read: {e.strerror}"
    return None


def _check_layout(f: IO[bytes], size: int) -> None:
    """Raise :class:`_NotAnArchive` unless ``f`` is an OCI image layout in a plain tar."""
    layout: dict[str, bytes] = {}
    seen: set[str] = set()
    with tarfile.open(fileobj=f, mode="r:") as tar:
        for count, member in enumerate(tar, start=1):  # headers read one at a time
            if count > MAX_ARCHIVE_MEMBERS:
                raise _NotAnArchive(f"more than {MAX_ARCHIVE_MEMBERS} members")
            name = _member_name(member)
            if name in seen and not member.isdir():
                raise _NotAnArchive(f"member {name[:80]!r} appears twice")
            seen.add(name)
            if name in ("oci-layout", "index.json"):
                layout[name] = _small_file(tar, member, name)
        end = tar.offset
    if "oci-layout" not in layout:
        raise _NotAnArchive("no oci-layout")
    if "index.json" not in layout:
        raise _NotAnArchive("no index.json")
    _check_json(layout["oci-layout"], "oci-layout", "imageLayoutVersion", str)
    _check_json(layout["index.json"], "index.json", "manifests", list)
    _check_trailer(f, end, size)


def _member_name(member: tarfile.TarInfo) -> str:
    """The member's name, normalized; raise unless it and its kind are safe to unpack."""
    name = member.name.removeprefix("./") if member.name != "./" else "."
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise _NotAnArchive(f"member name {member.name[:80]!r} is absolute or holds '..'")
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        _check_link(member, target)
    elif member.islnk():
        _check_link(member, posixpath.normpath(member.linkname))
    elif not (member.isfile() or member.isdir()):
        raise _NotAnArchive(f"member {name[:80]!r} is a device, FIFO or other special file")
    return name


def _check_link(member: tarfile.TarInfo, target: str) -> None:
    if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
        raise _NotAnArchive(
            f"member {member.name[:80]!r} links outside the archive ({member.linkname[:80]!r})"
        )


def _small_file(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> bytes:
    if not member.isfile():
        raise _NotAnArchive(f"{name} is not a regular file")
    if member.size > MAX_LAYOUT_JSON:
        raise _NotAnArchive(f"{name} is larger than {MAX_LAYOUT_JSON} bytes")
    data = tar.extractfile(member)
    assert data is not None  # a regular member always has data
    return data.read(MAX_LAYOUT_JSON + 1)


def _check_json(data: bytes, name: str, key: str, kind: type) -> None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise _NotAnArchive(f"{name} is not JSON") from None
    if not isinstance(value, dict) or not isinstance(value.get(key), kind):
        raise _NotAnArchive(f"{name} has no {key}")


def _check_trailer(f: IO[bytes], end: int, size: int) -> None:
    """Only zero blocks after the archive's end: nothing hides behind a valid tar."""
    f.seek(end)
    while end < size:
        chunk = f.read(min(_CHUNK, size - end))
        if not chunk:
            break
        if chunk.count(0) != len(chunk):
            raise _NotAnArchive("data after the end of the tar")
        end += len(chunk)

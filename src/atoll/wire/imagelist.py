"""The image's lists of container image archives: ``preload.list`` and ``toolbox.list``.

``atoll compose`` copies OCI image archives into ``/usr/share/atoll/images``
and lists them, one ``<archive> <reference>`` line each: ``preload.list`` for
the images ``atoll-preload.service`` imports at first boot (a shell script,
``/usr/lib/atoll/preload``, reads it), ``toolbox.list`` for the ops shell's
toolbox, which the agent imports (with the same script) the first time a
shell needs it. The archive is a bare file name in that directory, the
reference a full image reference; neither holds a space or a control
character, so a line is the two fields and nothing can be smuggled in.
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIRECTORY = "usr/share/atoll/images"  # inside the image (relative to its root)
PRELOAD_LIST = "preload.list"
TOOLBOX_LIST = "toolbox.list"

_ARCHIVE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}")


class ImageListError(ValueError):
    """A list line that is not ``<archive> <reference>``; the message names the line."""


@dataclass(frozen=True)
class ListedImage:
    archive: str  # a file name in DIRECTORY
    reference: str  # what containerd knows the image by

    def __post_init__(self) -> None:
        if not _ARCHIVE.fullmatch(self.archive) or self.archive in {".", ".."}:
            raise ImageListError(f"archive {self.archive!r} is not a plain file name")
        if not _REFERENCE.fullmatch(self.reference):
            raise ImageListError(f"reference {self.reference!r} is not an image reference")


def format_list(images: list[ListedImage]) -> str:
    return "".join(f"{image.archive} {image.reference}\n" for image in images)


def parse_list(text: str, source: str) -> list[ListedImage]:
    """The lines of a list; ``source`` (its path) names it in errors."""
    images = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        if len(fields) != 2:  # archive and reference
            raise ImageListError(f"{source}:{number}: expected '<archive> <reference>'")
        try:
            images.append(ListedImage(fields[0], fields[1]))
        except ImageListError as e:
            raise ImageListError(f"{source}:{number}: {e}") from e
    return images

"""The image's first-boot preload (overlay ``usr/lib/atoll/preload``) against a stand-in ``ctr``.

The stand-in keeps containerd's image names in a file and answers ``images
import`` the way ctr 1.6 does: one ``unpacking <name> (<digest>)...done`` line
per image, named after the archive's annotations. Here an "archive" is a text
file holding those names. The VM tests check the real ctr with the default
image, whose archive already carries the wanted name; these cases cover the
archives that do not (umoci writes only a tag, ctr then says ``import-<date>``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atoll.compose.customize import OVERLAY
from atoll.errors import ToolError
from atoll.process import CLEAN_PATH, run

SCRIPT = OVERLAY / "usr/lib/atoll/preload"

FAKE_CTR = """\
#!/bin/sh
# ctr -n default images import|tag --force|rm ...
set -eu
store=$FAKE_CTR_STORE
shift 2
verb=$2
shift 2
case $verb in
import)
    while read -r name; do
        grep -qx "$name" "$store" || echo "$name" >> "$store"
        echo "unpacking $name (sha256:0123456789abcdef)...done"
    done < "$1" ;;
tag)
    [ "$1" = --force ] && shift
    grep -qx "$1" "$store" || { echo "ctr: image \\"$1\\": not found" >&2; exit 1; }
    grep -qx "$2" "$store" || echo "$2" >> "$store" ;;
rm)
    grep -vx "$1" "$store" > "$store.new" || true
    mv "$store.new" "$store" ;;
*)
    echo "fake ctr: $verb?" >&2; exit 2 ;;
esac
"""


def _preload(
    tmp_path: Path, archives: dict[str, list[str]], references: dict[str, str]
) -> set[str]:
    """Run the preload with ``archives`` (file -> names ctr gives its images); the names after."""
    images = tmp_path / "images"
    images.mkdir()
    for archive, names in archives.items():
        (images / archive).write_text("".join(f"{n}\n" for n in names))
    (images / "preload.list").write_text(
        "".join(f"{archive} {reference}\n" for archive, reference in references.items())
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ctr").write_text(FAKE_CTR)
    os.chmod(bin_dir / "ctr", 0o700)
    store = tmp_path / "store"
    store.write_text("")
    done = tmp_path / "var/lib/atoll/preload.done"
    run(
        ["/bin/sh", SCRIPT],
        env={
            "PATH": f"{bin_dir}:{CLEAN_PATH}",
            "FAKE_CTR_STORE": str(store),
            "ATOLL_PRELOAD_DIR": str(images),
            "ATOLL_PRELOAD_DONE": str(done),
        },
    )
    assert done.exists()
    return set(store.read_text().split())


@pytest.mark.parametrize(
    ("archives", "references", "expected"),
    [
        pytest.param(
            {"00-app.tar": ["import-2026-12-06:1.0"]},
            {"00-app.tar": "example.org/app:1.0"},
            {"example.org/app:1.0"},
            id="only-a-tag-in-the-archive",
        ),
        pytest.param(
            {"00-bb.tar": ["docker.io/library/busybox:atoll"]},
            {"00-bb.tar": "docker.io/library/busybox:atoll"},
            {"docker.io/library/busybox:atoll"},
            id="archive-names-the-reference",
        ),
        pytest.param(
            {"00-app.tar": ["example.org/app:old"]},
            {"00-app.tar": "example.org/app:1.0"},
            {"example.org/app:1.0"},
            id="archive-names-another-reference",
        ),
        pytest.param(
            {"00-a.tar": ["example.org/a:1"], "01-b.tar": ["example.org/a:1"]},
            {"00-a.tar": "example.org/a:1", "01-b.tar": "example.org/b:1"},
            {"example.org/a:1", "example.org/b:1"},
            id="import-name-another-line-wants-is-kept",
        ),
        pytest.param(
            {"00-multi.tar": ["import-2026-12-06:1.0", "import-2026-12-06:debug"]},
            {"00-multi.tar": "example.org/app:1.0"},
            {"example.org/app:1.0"},
            id="extra-images-of-an-archive-are-not-kept",
        ),
    ],
)
def test_each_preloaded_image_has_only_its_reference(
    tmp_path: Path,
    archives: dict[str, list[str]],
    references: dict[str, str],
    expected: set[str],
) -> None:
    assert _preload(tmp_path, archives, references) == expected


def test_an_archive_that_imports_nothing_fails_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"00-empty\.tar: ctr imported no image"):
        _preload(tmp_path, {"00-empty.tar": []}, {"00-empty.tar": "example.org/app:1.0"})

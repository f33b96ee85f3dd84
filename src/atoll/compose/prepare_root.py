"""Build and install atoll's static PID-1 step (``prepare_root.c``).

Debian's ``ostree-prepare-root`` is dynamically linked; started as PID 1
from the physical root (no initramfs), it cannot find its ELF interpreter
and the kernel panics (MACHINE-FACTS, step 5). atoll compiles its own,
statically, at compose time and installs it where ``ostree admin deploy``
points ``init=``: ``/usr/lib/ostree/ostree-prepare-root`` inside the
deployment. What it does is described in the C file's header.

The build is reproducible: no debug information, no timestamps, and the
source path is not embedded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from atoll.errors import AtollError
from atoll.process import run

SOURCE = Path(__file__).resolve().with_name("prepare_root.c")
TARGET = "usr/lib/ostree/ostree-prepare-root"


def build(output: Path) -> None:
    """Compile the static binary to ``output``."""
    compile_static(SOURCE, output)


def compile_static(source: Path, output: Path) -> None:
    """Compile the C program ``source`` to a static, stripped, reproducible ``output``
    (also atoll's pause, :func:`atoll.compose.oci.write_pause_archive`)."""
    run(
        [
            "gcc",
            "-static",
            "-Os",
            "-s",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-ffile-prefix-map=" + str(source.parent) + "=.",
            "-o",
            output,
            source,
        ]
    )
    if b"ld-linux" in output.read_bytes()[:8192]:
        raise AtollError(f"{output}: gcc produced a dynamically linked program")


def install(root: Path) -> None:
    """Install the static PID-1 step into the tree at ``root``."""
    target = root / TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "ostree-prepare-root"
        build(built)
        if target.exists() or target.is_symlink():
            target.unlink()
        shutil.copyfile(built, target)
    os.chown(target, 0, 0)
    target.chmod(0o755)

"""A config drive: first-boot user data on a small disk of its own.

For hypervisors without qemu's fw_cfg: an ext4 filesystem labelled
``ATOLL-CONFIG`` holding ``user-data.toml`` (names and format:
:mod:`atoll.wire.userdata`), which the agent's first boot mounts read-only.
ext4 because the kernel has it built in and its labels may be 16 characters
(FAT stops at 11, too short for the name).
Built with ``mkfs.ext4 -d``, so no mount is needed on the host. Attach it as
any block device the kernel sees early (a second NVMe namespace or disk).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from atoll import durable
from atoll.errors import InputError
from atoll.process import run
from atoll.wire.userdata import (
    CONFIG_DRIVE_FILE,
    CONFIG_DRIVE_LABEL,
    UserDataError,
    parse_user_data,
)

SIZE = "4M"


def write_config_drive(user_data: Path, output: Path) -> None:
    """Validate ``user_data`` and write a config drive image to ``output`` (atomically)."""
    try:
        raw = user_data.read_bytes()
        parse_user_data(raw, str(user_data))
    except OSError as e:
        raise InputError(f"{user_data}: {e.strerror}") from e
    except UserDataError as e:
        raise InputError(f"user data rejected:\n{e}") from e
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        durable.write_atomic(tree / CONFIG_DRIVE_FILE, raw, mode=0o600)  # 0600 throughout
        image = Path(tmp) / "drive.img"
        run(
            [
                "mkfs.ext4",
                "-q",
                "-L",
                CONFIG_DRIVE_LABEL,
                "-d",
                tree,
                "-E",
                "root_owner=0:0",
                image,
                SIZE,
            ]
        )
        durable.replace(image, output)
        shutil.rmtree(tree)

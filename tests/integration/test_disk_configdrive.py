"""A config drive built on the host is read by first boot (a real read-only mount)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.agent.provision import provision
from atoll.disk.configdrive import write_config_drive
from atoll.errors import InputError


def test_config_drive_provisions_a_node(tmp_path: Path) -> None:
    user_data = tmp_path / "node.toml"
    user_data.write_text('[node]\nhostname = "drive-1"\n')
    drive = tmp_path / "config.img"
    write_config_drive(user_data, drive)
    root = tmp_path / "root"
    by_label = root / "dev/disk/by-label"
    by_label.mkdir(parents=True)
    (by_label / "ATOLL-CONFIG").symlink_to(drive)  # what udev creates on the node
    record = provision(root, tmp_path / "no-fw-cfg")
    assert (root / "etc/hostname").read_text() == "drive-1\n"
    assert record["source"].startswith("config drive ")


def test_config_drive_refuses_bad_user_data(tmp_path: Path) -> None:
    user_data = tmp_path / "node.toml"
    user_data.write_text('[node]\nhostname = "_"\n')
    with pytest.raises(InputError, match=r"node\.toml: \[node\]\.hostname"):
        write_config_drive(user_data, tmp_path / "config.img")
    assert not (tmp_path / "config.img").exists()

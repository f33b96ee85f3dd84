"""shape's tmpfiles.d handling: lines through the top-level links, no duplicate lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from atoll.compose.shape import created_paths, follow_links, shape, top_level_links

LINKS = top_level_links()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # systemd's home.conf and provision.conf (Debian 12): directories on the links.
        ("Q /home 0755 - - -", "Q /var/home 0755 - - -"),
        ("q /srv 0755 - - -", "q /var/srv 0755 - - -"),
        ("d- /root :0700 root :root -", "d- /var/roothome :0700 root :root -"),
        (
            "f^ /root/.ssh/authorized_keys :0600 root :root - ssh.authorized_keys.root",
            "f^ /var/roothome/.ssh/authorized_keys :0600 root :root - ssh.authorized_keys.root",
        ),
        ("d /usr/local/bin 0755 - - -", "d /var/usrlocal/bin 0755 - - -"),
        ("d /media/usb 0755 - - -", "d /run/media/usb 0755 - - -"),
        ("  d\t/opt/tool 0755 - - -", "  d\t/var/opt/tool 0755 - - -"),
        # About the link itself, or not through a link: unchanged.
        ("L /home - - - - var/home", "L /home - - - - var/home"),
        ("r /root", "r /root"),
        ("d /homework 0755 - - -", "d /homework 0755 - - -"),
        ("d /var/home 0755 - - -", "d /var/home 0755 - - -"),
        ("d /run/lock 0755 - - -", "d /run/lock 0755 - - -"),
        ("# Q /home 0755 - - -", "# Q /home 0755 - - -"),
        ("", ""),
    ],
)
def test_follow_links(line: str, expected: str) -> None:
    assert follow_links(line, LINKS) == expected


def test_created_paths_are_the_lines_that_create() -> None:
    lines = [
        "# comment",
        "d /var/log 0755 - - -",
        "L+ /etc/mtab - - - - ../proc/self/mounts",
        "f^ /etc/hosts - - - - network.hosts",
        "r! /forcefsck",
        "x /var/tmp/systemd-private-*",
        "z /var/log/journal 2755 root systemd-journal - -",
        "e /var/tmp - - - 30d",
    ]
    assert created_paths(lines) == {"/var/log", "/etc/mtab", "/etc/hosts"}


def _debian_like_root(root: Path) -> None:
    for d in ("usr/bin", "usr/lib/tmpfiles.d", "etc/tmpfiles.d", "boot", "home", "srv"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "boot/vmlinuz-6.1.0-1-cloud-amd64").write_text("kernel")
    (root / "etc/machine-id").write_text("0123\n")
    (root / "var/log").mkdir(parents=True)
    (root / "var/log/wtmp").write_text("")
    (root / "var/local").mkdir()
    (root / "var/lock").symlink_to("/run/lock")
    (root / "var/lib/app").mkdir(parents=True)
    (root / "var/lib/app/state").write_text("seed")
    tmpfiles = root / "usr/lib/tmpfiles.d"
    (tmpfiles / "home.conf").write_text("Q /home 0755 - - -\nq /srv 0755 - - -\n")
    (tmpfiles / "var.conf").write_text("d /var/log 0755 - - -\nf /var/log/wtmp 0664 root utmp -\n")
    (tmpfiles / "legacy.conf").write_text("L /var/lock - - - - ../run/lock\n")
    (tmpfiles / "app.conf").write_text("f /var/lib/app/state 0644 - - -\n")
    # A site masks one of Debian's files in /etc: its lines count for nothing.
    (tmpfiles / "masked.conf").write_text("d /var/local 0755 - - -\n")
    (root / "etc/tmpfiles.d/masked.conf").symlink_to("/dev/null")


def test_shape_leaves_no_tmpfiles_line_on_a_link_and_no_duplicate(tmp_path: Path) -> None:
    _debian_like_root(tmp_path)
    shape(tmp_path)
    assert (tmp_path / "home").readlink() == Path("var/home")
    home = (tmp_path / "usr/lib/tmpfiles.d/home.conf").read_text().splitlines()
    assert home[1:] == ["Q /var/home 0755 - - -", "q /var/srv 0755 - - -"]
    ours = (tmp_path / "usr/lib/tmpfiles.d/atoll-var.conf").read_text().splitlines()
    paths = [line.split()[1] for line in ours if not line.startswith("#")]
    assert len(paths) == len(set(paths))
    # Created by home.conf, var.conf and legacy.conf: not declared twice.
    for declared in ("/var/home", "/var/srv", "/var/log", "/var/log/wtmp", "/var/lock"):
        assert declared not in paths, declared
    assert not (tmp_path / "usr/share/factory/var/log/wtmp").exists()
    # A file with content stays ours: app.conf could only create it empty.
    assert "C /var/lib/app/state - - - - /usr/share/factory/var/lib/app/state" in ours
    assert (tmp_path / "usr/share/factory/var/lib/app/state").read_text() == "seed"
    # Nobody else creates these (masked.conf is masked).
    for ours_only in ("/var/roothome", "/var/opt", "/var/usrlocal/bin", "/var/local"):
        assert ours_only in paths, ours_only

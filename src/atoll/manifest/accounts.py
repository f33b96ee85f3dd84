"""The accounts every atoll image has before a manifest adds its own.

:mod:`atoll.compose.customize` writes a manifest's ``[[users]]`` and
``[[groups]]`` into the image's ``/etc/passwd`` and ``/etc/group`` and refuses
a name or id the image already has, but only after the root filesystem is
built (minutes). The names and ids below are what that check finds in every
atoll image, so validation refuses them in a second instead:

* Debian's ``base-passwd`` (``/usr/share/base-passwd/{passwd,group}.master``),
  plus ``_apt``, which apt adds at uid 42;
* what systemd and udev (in every atoll image) create: their users and groups,
  as the bookworm base root filesystem has them.

Ids a manifest may set follow Debian policy (section 9.2.2): 0-99 are
allocated statically by base-passwd, 60000-64999 are global static ids, 65534
is ``nobody``/``nogroup`` and 65535 is invalid, so an explicit id must lie in
:data:`ID_RANGE` (100-999 dynamic system ids, 1000-59999 regular ones). The
build-time check stays as the backstop for accounts that packages a manifest
adds create.
"""

from __future__ import annotations

from collections.abc import Mapping

# (first, last) id a manifest may give a user or a group.
ID_RANGE = (100, 59999)

BASE_USERS: Mapping[str, int] = {
    "root": 0,
    "daemon": 1,
    "bin": 2,
    "sys": 3,
    "sync": 4,
    "games": 5,
    "man": 6,
    "lp": 7,
    "mail": 8,
    "news": 9,
    "uucp": 10,
    "proxy": 13,
    "www-data": 33,
    "backup": 34,
    "list": 38,
    "irc": 39,
    "_apt": 42,
    "nobody": 65534,
    "systemd-network": 998,
}

BASE_GROUPS: Mapping[str, int] = {
    "root": 0,
    "daemon": 1,
    "bin": 2,
    "sys": 3,
    "adm": 4,
    "tty": 5,
    "disk": 6,
    "lp": 7,
    "mail": 8,
    "news": 9,
    "uucp": 10,
    "man": 12,
    "proxy": 13,
    "kmem": 15,
    "dialout": 20,
    "fax": 21,
    "voice": 22,
    "cdrom": 24,
    "floppy": 25,
    "tape": 26,
    "sudo": 27,
    "audio": 29,
    "dip": 30,
    "www-data": 33,
    "backup": 34,
    "operator": 37,
    "list": 38,
    "irc": 39,
    "src": 40,
    "shadow": 42,
    "utmp": 43,
    "video": 44,
    "sasl": 45,
    "plugdev": 46,
    "staff": 50,
    "games": 60,
    "users": 100,
    "input": 101,
    "sgx": 102,
    "kvm": 103,
    "render": 104,
    "systemd-network": 998,
    "systemd-journal": 999,
    "nogroup": 65534,
}


def user_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a new user: the base system has it as a user or a group.

    A group counts too: a user's primary group is a group of its name, and
    joining ``sudo`` or ``disk`` that way would be a privilege nobody asked for.
    """
    if name in BASE_USERS or name in BASE_GROUPS:
        return f"{name!r} is reserved (the base system has it as a user or group)"
    return None


def id_problem(kind: str, value: int, base: Mapping[str, int]) -> str | None:
    """Why ``value`` cannot be an explicit ``kind`` (``uid``/``gid``): reserved or taken."""
    first, last = ID_RANGE
    if not first <= value <= last:
        return (
            f"{kind} {value} is outside {first}..{last} "
            "(Debian reserves 0-99 and 60000-65535 for the base system)"
        )
    owner = next((name for name, taken in base.items() if taken == value), None)
    if owner is not None:
        return f"{kind} {value} is taken by {owner!r} in the base system"
    return None

"""The unit tier runs no programs, sockets or ptys: enforced here, for every unit test.

An autouse fixture replaces the ways out of the process (starting a program,
connecting or binding a socket, forking, opening a pty) with a call that fails
the test, naming what was called. A unit test that needs any of them belongs in
``tests/integration``. Socket pairs (``socket.socketpair``) stay allowed: they
are in-process pipes, neither bound nor connected.

Guarded: ``subprocess.Popen``, ``os.posix_spawn``/``posix_spawnp``,
``os.fork``/``forkpty``, ``pty.openpty``/``os.openpty``, and
``socket.socket.connect``/``connect_ex``/``bind``. The two runners start
programs only through these (``atoll.process.run``/``start`` and
``atoll.agent.command.run`` through ``subprocess.Popen``,
``atoll.agent.command.spawn`` through ``os.fork``), so they fail exactly where
they would start one, also when a module imported ``run`` by name; what they
check before that (an empty argv, a timeout that is not finite) stays testable
here.

matplotlib lists the system's fonts with ``fc-list`` the first time it is
imported on a machine (then caches the list): the ``matplotlib_fonts`` fixture
does that before the guard is in place, for the tests that draw plots.
"""

from __future__ import annotations

import os
import pty
import socket
from collections.abc import Callable
from typing import NoReturn

import pytest

MESSAGE = "unit tests run no programs, sockets or ptys: move this test to tests/integration"

# (where, attribute, its name in the message); a module given as a string is
# resolved when the fixture patches it.
GUARDED: tuple[tuple[object, str, str], ...] = (
    ("subprocess", "Popen", "subprocess"),  # by name: only the runners may import subprocess
    (os, "posix_spawn", "os"),
    (os, "posix_spawnp", "os"),
    (os, "fork", "os"),
    (os, "forkpty", "os"),
    (os, "openpty", "os"),
    (pty, "openpty", "pty"),
    (socket.socket, "connect", "socket.socket"),
    (socket.socket, "connect_ex", "socket.socket"),
    (socket.socket, "bind", "socket.socket"),
)


def _refuse(name: str) -> Callable[..., NoReturn]:
    def refused(*args: object, **kwargs: object) -> NoReturn:
        # pytest.fail raises an OutcomeException (a BaseException): a product
        # ``except Exception`` around the call cannot swallow it.
        pytest.fail(f"{MESSAGE} (called {name})", pytrace=True)

    return refused


@pytest.fixture(autouse=True)
def _no_programs_sockets_or_ptys(monkeypatch: pytest.MonkeyPatch) -> None:
    for target, attribute, where in GUARDED:
        refused = _refuse(f"{where}.{attribute}")
        if isinstance(target, str):
            monkeypatch.setattr(f"{target}.{attribute}", refused)
        else:
            monkeypatch.setattr(target, attribute, refused)


@pytest.fixture(scope="session")
def matplotlib_fonts() -> None:
    """matplotlib's font list, built (``fc-list``) before any test's guard is set."""
    import matplotlib.font_manager  # noqa: F401, PLC0415 - builds and caches the font list

"""The fleet CA: issuing and revoking, refusals, keys written or not at all.

Real TLS handshakes with its certificates (roles, revocation, another CA) are in
tests/integration/test_agent_pki_handshake.py."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from atoll.cli import main
from atoll.errors import InputError
from atoll.pki import Kind, Role, init, issue, revoke


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    assert main(["pki", "init", str(root)]) == 0
    assert main(["pki", "issue", str(root), "--node", "n1"]) == 0
    return root


@pytest.mark.parametrize(
    "argv",
    [
        ["--client", "carol"],  # no role
        ["--client", "../x", "--role", "admin"],
        ["--node", "n2", "--role", "admin"],
        ["--client", "a", "--node", "b", "--role", "viewer"],
    ],
)
def test_bad_issue_requests_are_input_errors(pki: Path, argv: list[str]) -> None:
    assert main(["pki", "issue", str(pki), *argv]) == 2


def test_names_are_never_reissued_or_revoked_blindly(pki: Path) -> None:
    issue(pki, "dave", kind=Kind.CLIENT, role=Role.VIEWER)
    with pytest.raises(InputError, match="already issued"):
        issue(pki, "dave", kind=Kind.CLIENT, role=Role.VIEWER)
    with pytest.raises(InputError, match="no client named 'erin'"):
        revoke(pki, "erin")
    with pytest.raises(InputError, match="already holds a CA"):
        init(pki)


def failing_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fsync of a file fails, as on a disk that went away."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_key_whose_write_failed_is_not_issued(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key appears under its name only once it is on disk: the name stays free."""
    before = (
        sorted(p.name for p in (pki / "clients").iterdir()) if (pki / "clients").exists() else []
    )
    with monkeypatch.context() as m:
        failing_disk(m)
        with pytest.raises(OSError, match="Input/output error"):
            issue(pki, "frank", kind=Kind.CLIENT, role=Role.VIEWER)
    assert sorted(p.name for p in (pki / "clients").iterdir()) == before
    done = issue(pki, "frank", kind=Kind.CLIENT, role=Role.VIEWER)
    assert stat.S_IMODE(done.key.stat().st_mode) == 0o600

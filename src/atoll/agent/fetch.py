"""The node's side of signed updates: follow a channel, pull, verify.

Used by the agent's upgrade path (standard library only):

1. :func:`check_channel` downloads ``<server>/channels/<name>.json``,
   verifies its signature and refuses replays and unsigned downgrades against
   the last document this node accepted (kept in ``state``, written only
   after a successful verification);
2. :func:`pull_verified` lets ostree pull the commit from
   ``<server>/repo`` (every object checked against its checksum, deltas used
   when the server has one from the node's commit, downloads resumed), then
   verifies the commit's signature before anything deploys it. A refused
   commit is removed from the node's repository again.

ostree is run through an injectable ``run`` callable, so the logic is tested
on the build machine against a real ostree repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from atoll.agent.verify import Channel, TrustedKey, VerificationError, verify_channel, verify_commit

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[bytes]]
REMOTE = "atoll-updates"


def default_run(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True, check=False)


def _load_state(state: Path, name: str) -> Channel | None:
    if not state.exists():
        return None
    data = json.loads(state.read_text()).get(name)
    if not data:
        return None
    return Channel(
        name=name,
        ref=data["ref"],
        commit=data["commit"],
        version=data["version"],
        serial=int(data["serial"]),
        rollback=bool(data.get("rollback", False)),
        history=(),
        signed_by=data.get("signed_by", ""),
    )


def _save_state(state: Path, channel: Channel) -> None:
    current = json.loads(state.read_text()) if state.exists() else {}
    current[channel.name] = {
        "ref": channel.ref,
        "commit": channel.commit,
        "version": channel.version,
        "serial": channel.serial,
        "rollback": channel.rollback,
        "signed_by": channel.signed_by,
    }
    state.parent.mkdir(parents=True, exist_ok=True)
    staged = state.with_name(state.name + ".partial")
    with staged.open("w") as f:
        json.dump(current, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, state)


def check_channel(
    server: str, name: str, keys: list[TrustedKey], state: Path, timeout: float = 30
) -> Channel:
    """The verified channel document; raises :class:`VerificationError` or ``OSError``."""
    url = f"{server.rstrip('/')}/channels/{name}.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            data = response.read()
    except urllib.error.URLError as e:
        raise OSError(f"{url}: {e.reason}") from e
    channel = verify_channel(data, keys, name=name, accepted=_load_state(state, name))
    _save_state(state, channel)
    return channel


def pull_verified(
    repo: Path, server: str, commit: str, keys: list[TrustedKey], run: Runner = default_run
) -> None:
    """Pull ``commit`` from the update server into ``repo`` and verify its signature."""
    url = f"{server.rstrip('/')}/repo"
    run(["ostree", f"--repo={repo}", "remote", "delete", "--if-exists", REMOTE])
    added = run(["ostree", f"--repo={repo}", "remote", "add", "--no-gpg-verify", REMOTE, url])
    if added.returncode != 0:
        raise OSError(f"ostree remote add {url}: {added.stderr.decode(errors='replace')}")
    pulled = run(["ostree", f"--repo={repo}", "pull", REMOTE, commit])
    if pulled.returncode != 0:
        detail = pulled.stderr.decode(errors="replace").strip().splitlines()
        raise VerificationError(
            f"pull of {commit[:12]} from {url} failed: {detail[-1] if detail else 'no detail'}"
        )
    try:
        verify_commit(repo, commit, keys)
    except VerificationError:
        # Never leave an untrusted commit where a later deploy could pick it up.
        run(["ostree", f"--repo={repo}", "prune", f"--delete-commit={commit}"])
        raise

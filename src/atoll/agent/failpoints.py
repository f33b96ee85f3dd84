"""Failpoints: named places in an upgrade where a test cuts the node's power.

Inert unless ``/etc/atoll/failpoints`` exists (one name per line, ``#``
comments). When the agent reaches an armed name it records it in
``/var/lib/atoll/failpoints.fired`` (fsynced: a failpoint fires once, so the
node gets past it at the next boot), prints ``atoll-failpoint: NAME`` on its
log (the serial console) and blocks that thread, so that whatever it would do
next has not started when the power goes. The power-cut test
(``tests/vm/test_agent_power_cut.py``) arms them through first-boot user
data. The names, in the order an upgrade reaches them:

* ``update:pulled``: the new commit is pulled and verified, nothing deployed;
* ``upgrade:deployed``: ``ostree admin deploy`` is done, the marker says
  ``deploying``, the ESP still holds the old boot entries;
* ``upgrade:synced``: the ESP boots the new deployment, the marker still
  says ``deploying``;
* ``trial:started``: the new deployment booted and its trial began;
* ``restart:soft``: ``systemctl soft-reboot`` into the new deployment was
  asked for (systemd goes on with it: the cut lands during the soft-reboot).

Standard library only: this runs on the node.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

ARMED = Path("etc/atoll/failpoints")
FIRED = Path("var/lib/atoll/failpoints.fired")
NAMES = ("update:pulled", "upgrade:deployed", "upgrade:synced", "trial:started", "restart:soft")


def _names(path: Path) -> set[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    return {line.split("#", 1)[0].strip() for line in text.splitlines()} - {""}


def armed(root: Path = Path("/")) -> list[str]:
    """The armed names not fired yet; unknown names are an error naming the file."""
    names = _names(root / ARMED)
    unknown = sorted(names - set(NAMES))
    if unknown:
        raise ValueError(f"{root / ARMED}: unknown failpoint(s) {unknown}; known: {list(NAMES)}")
    fired = _names(root / FIRED)
    return [name for name in NAMES if name in names and name not in fired]


def hit(name: str, root: Path = Path("/"), block: threading.Event | None = None) -> bool:
    """Fire ``name`` if it is armed and has not fired: record it, say so, then block.

    Returns False at once when ``name`` is not armed (the normal case).
    ``block`` is for tests on the host: the call returns True once it is set.
    """
    assert name in NAMES, name
    try:
        if name not in armed(root):
            return False
    except ValueError as e:
        print(f"atoll-agent: failpoints ignored: {e}", file=sys.stderr, flush=True)
        return False
    fired = root / FIRED
    fired.parent.mkdir(parents=True, exist_ok=True)
    with fired.open("a") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    print(f"atoll-failpoint: {name}: waiting for the power to be cut", file=sys.stderr, flush=True)
    (block or threading.Event()).wait()
    return True

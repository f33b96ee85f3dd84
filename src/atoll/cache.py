"""Where atoll keeps what it builds once: ``$ATOLL_CACHE``, else ``~/.cache/atoll``.

Outside any checkout, so a fresh clone on a machine that has built before
starts warm; every entry below it is keyed by its content (compose's root
filesystems and toolboxes, the Kubernetes binaries), so sharing it is safe.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def default_cache(environ: Mapping[str, str] = os.environ) -> Path:
    configured = environ.get("ATOLL_CACHE")
    if configured:
        return Path(configured).resolve()
    return Path.home() / ".cache" / "atoll"

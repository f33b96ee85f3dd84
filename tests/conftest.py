"""Shared test configuration: tiers are marked by directory.

``tests/unit`` runs in seconds with no external tools, ``tests/integration``
uses real mmdebstrap/ostree/sqlite/etcd, ``tests/vm`` boots real images under
qemu. Built images are shared between tests through session fixtures in the
tier's own conftest, so each is built once per run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in {"integration", "vm"}:
            item.add_marker(getattr(pytest.mark, tier))

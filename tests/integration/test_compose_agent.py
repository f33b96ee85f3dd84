"""The agent as the image carries it: what compose installs is all the node's python3 needs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from atoll.compose.customize import AGENT_PREFIX, install_agent
from atoll.process import run

NODE_PYTHON = Path("/usr/bin/python3")

# Every module the agent's entry points import, directly or not, resolved from
# the image's tree alone: a module compose forgot to ship fails here.
IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import atoll.agent, atoll.wire
for package in (atoll.agent, atoll.wire):
    for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(found.name)
outside = sorted(
    name for name, module in sys.modules.items()
    if name.startswith("atoll") and not module.__file__.startswith(sys.argv[1])
)
assert not outside, outside
print(sorted(name for name in sys.modules if name.startswith("atoll.")))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="install_agent chowns the tree to root")
def test_the_installed_agent_imports_with_the_node_python_alone(tmp_path: Path) -> None:
    install_agent(tmp_path, python=[NODE_PYTHON])
    python_dir = tmp_path / AGENT_PREFIX
    shipped = {p.name for p in (python_dir / "atoll").iterdir()}
    assert shipped == {"__init__.py", "__pycache__", "agent", "durable.py", "wire"}
    env = {"PYTHONPATH": str(python_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    result = run([NODE_PYTHON, "-c", IMPORT_EVERYTHING, str(python_dir)], env=env, cwd=tmp_path)
    imported = result.stdout.decode()
    for module in ("atoll.agent.update_loop", "atoll.wire.fleet", "atoll.durable"):
        assert f"'{module}'" in imported
    usage = run([NODE_PYTHON, "-m", "atoll.agent", "--help"], env=env, cwd=tmp_path)
    assert b"usage: atoll-agent" in usage.stdout

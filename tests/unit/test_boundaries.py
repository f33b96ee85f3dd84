"""The package layout is the architecture: enforce its import directions, without exemptions.

* ``atoll.agent`` runs on the node with Debian's python3: it imports only the
  standard library, itself, ``atoll.wire`` (the formats both sides speak) and
  ``atoll.durable`` (atomic file writes); the image ships exactly these
  (``compose.customize.AGENT_SOURCES``).
* ``atoll.durable`` imports only the standard library, ``atoll.wire`` only the
  standard library, itself and ``atoll.durable`` (it writes the ESP), so the
  agent can carry them.
* Nothing else imports ``atoll.agent``: host code speaks to the node through
  ``atoll.wire``, never through the node's code.
* A stage imports the shared plumbing and the stages before it in the data's
  journey, never a later one (``fleet`` may use ``publish``'s types;
  ``compose`` may not know about ``fleet``). The shared plumbing imports no
  stage; ``atoll.cli`` wires every stage's verbs. ``bench`` and ``demo`` string
  the stages together and may import any of them, except the agent.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from atoll.compose.customize import AGENT_SOURCES

SRC = Path(__file__).resolve().parents[2] / "src" / "atoll"
STAGES = [
    "manifest",
    "cluster",
    "compose",
    "publish",
    "disk",
    "boot",
    "agent",
    "fleet",
    "pki",
    "ops",
]
SHARED = {"errors", "process", "progress", "tools", "durable", "wire", "cache"}
STANDALONE = {"wire", "durable"}  # the standard library only: the node carries them
STANDALONE_MAY_IMPORT = {"wire": {"wire", "durable"}, "durable": {"durable"}}
AGENT_MAY_IMPORT = {"agent", *STANDALONE}
TOP_LEVEL = {"demo", "demo_cluster", "bench"}  # string the stages together
ENTRY = {"cli", "__main__", "__init__"}  # the command and the package itself


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, ``from atoll import x``
    counted as ``atoll.x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "atoll" and all(_is_part(a.name) for a in node.names):
                # from atoll import durable: modules of atoll, not the package itself
                names.update(f"atoll.{a.name}" for a in node.names)
            else:
                names.add(base)
    return names


def _is_part(name: str) -> bool:
    return (SRC / name).is_dir() or (SRC / f"{name}.py").is_file()


def _part(name: str) -> str | None:
    """The part of atoll a module name belongs to (``atoll.fleet.cli`` -> ``fleet``)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "atoll" and len(parts) > 1 else None


def _owner(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def _sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _is_stdlib(name: str) -> bool:
    return name.split(".", maxsplit=1)[0] in sys.stdlib_module_names or name == "__future__"


def test_the_imports_are_found() -> None:
    """The checks below would pass on nothing: make sure they see real imports."""
    agent = _imports(SRC / "agent" / "update_loop.py")
    assert {"atoll.agent.deployments", "atoll.wire.fleet", "json"} <= agent
    assert "atoll.durable" in _imports(SRC / "disk" / "build.py")
    assert "atoll.durable" in _imports(SRC / "wire" / "bootentry.py")
    assert set(STANDALONE_MAY_IMPORT) == STANDALONE


def test_agent_imports_only_the_standard_library_wire_and_durable() -> None:
    offenders = []
    for path in sorted((SRC / "agent").rglob("*.py")):
        for name in _imports(path):
            if _is_stdlib(name) or _part(name) in AGENT_MAY_IMPORT:
                continue
            offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


@pytest.mark.parametrize("part", sorted(STANDALONE))
def test_wire_and_durable_import_only_the_standard_library(part: str) -> None:
    paths = sorted((SRC / part).rglob("*.py")) if (SRC / part).is_dir() else [SRC / f"{part}.py"]
    assert paths and all(p.exists() for p in paths)
    offenders = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in paths
        for name in _imports(path)
        if not _is_stdlib(name) and _part(name) not in STANDALONE_MAY_IMPORT[part]
    ]
    assert offenders == []


def test_the_image_ships_what_the_agent_imports() -> None:
    """Every part of atoll the agent may import is in what compose installs beside it."""
    shipped = {name.removesuffix(".py") for name in AGENT_SOURCES}
    assert shipped == {"__init__", *AGENT_MAY_IMPORT}


def test_nothing_outside_the_agent_imports_it() -> None:
    offenders = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in _sources()
        if _owner(path) != "agent"
        for name in _imports(path)
        if _part(name) == "agent"
    ]
    assert offenders == []


def test_stages_import_only_earlier_stages() -> None:
    offenders = []
    for path in _sources():
        owner = _owner(path)
        if owner in TOP_LEVEL or owner in ENTRY or owner == "agent":
            continue  # bench and demo: any stage; the agent: its own test above
        for name in _imports(path):
            target = _part(name)
            if target is None or target in SHARED or target == owner:
                continue
            if owner in SHARED:
                offenders.append(f"{path.relative_to(SRC)} (shared) imports {name}")
            elif target in STAGES and STAGES.index(target) > STAGES.index(owner):
                offenders.append(f"{path.relative_to(SRC)} imports later stage {name}")
            elif target not in STAGES:
                offenders.append(f"{path.relative_to(SRC)} imports {name} (not a stage)")
    assert offenders == []

"""The package layout is the architecture: enforce its import directions.

* ``atoll.agent`` runs on the node with Debian's python3: it may import only
  the standard library and itself.
* A stage may import the shared plumbing and the stages before it in the
  data's journey, never a later one (``fleet`` may use ``publish``'s types;
  ``compose`` may not know about ``fleet``). Any stage may import
  ``atoll.agent`` (standard library only, so always safe).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "atoll"
STAGES = ["manifest", "compose", "publish", "disk", "boot", "agent", "fleet", "pki", "ops"]
SHARED = {"errors", "process", "progress", "tools", "cli", "__main__", "__init__", "py"}
TOP_LEVEL = {"demo", "bench"}  # string the stages together; may import anything


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            names.add("atoll.<relative>")
    return names


def _owner(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def test_agent_uses_only_the_standard_library() -> None:
    offenders = []
    for path in sorted((SRC / "agent").rglob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith("atoll.agent") or top in sys.stdlib_module_names:
                continue
            if name == "atoll.<relative>":
                continue
            offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


def test_stages_import_only_earlier_stages() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        owner = _owner(path)
        if owner in TOP_LEVEL:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "atoll" or len(parts) < 2:
                continue
            target = parts[1]
            if target in SHARED or target in (owner, "agent"):
                continue
            if owner in SHARED:
                if owner == "cli":
                    continue  # the CLI wires every stage's verbs
                offenders.append(f"{path.relative_to(SRC)} (shared) imports {name}")
                continue
            if target in STAGES and STAGES.index(target) > STAGES.index(owner):
                offenders.append(f"{path.relative_to(SRC)} imports later stage {name}")
    assert offenders == []

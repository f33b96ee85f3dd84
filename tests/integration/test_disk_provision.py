"""First boot as the node runs it: Debian's python3, only the agent package on the path."""

from __future__ import annotations

import json
from pathlib import Path

import atoll
from atoll.process import Completed, as_text, run

AGENT_PATH = Path(atoll.__file__).resolve().parent.parent


def _node_python(*args: str) -> Completed[str]:
    done = run(
        ["/usr/bin/python3", "-m", "atoll.agent.provision", *args],
        env={"PYTHONPATH": str(AGENT_PATH), "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    return as_text(done)


def test_provision_runs_on_the_node_python_once(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.write_text('[node]\nhostname = "edge-9"\n[credentials]\n"node.key" = "K"\n')
    root = tmp_path / "root"
    first = _node_python("--root", str(root), "--fw-cfg", str(raw))
    assert first.returncode == 0, first.stderr
    assert "applied /etc/hostname, /etc/atoll/credentials/node.key" in first.stdout
    assert (root / "etc/atoll/credentials/node.key").stat().st_mode & 0o777 == 0o600
    record = json.loads((root / "var/lib/atoll/firstboot.json").read_text())
    raw.write_text('[node]\nhostname = "other"\n')
    second = _node_python("--root", str(root), "--fw-cfg", str(raw))
    assert second.returncode == 0
    assert json.loads((root / "var/lib/atoll/firstboot.json").read_text()) == record
    assert (root / "etc/hostname").read_text() == "edge-9\n"


def test_check_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text('[time]\nntp = ["ok", "bad server"]\n')
    result = _node_python("--check", str(bad))
    assert result.returncode == 2
    assert f"{bad}: [time].ntp: 'bad server'" in result.stderr

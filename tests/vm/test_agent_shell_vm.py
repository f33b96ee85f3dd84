"""The ops shell and the logs on a booted node, through the forwarded agent port (one boot).

The default disk boots (direct mode) with user data carrying the node's TLS
credentials (made here with ``atoll pki``); the agent's port 7443 is forwarded to
127.0.0.1. Everything goes through ``python -m atoll node ...`` as a user runs
it, with the shell's stdin scripted: real containerd, crun, the toolbox atoll
builds from Debian packages and the preloaded busybox image on the node.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.pki import Kind, Role, init, issue
from atoll.process import Completed, as_text, run
from tests.vm.conftest import READY_TIMEOUT, DefaultDisk

# The boot (2-4 min on the shared cores) counts against pytest-timeout's default 600 s too.
pytestmark = pytest.mark.timeout(1800)

AGENT_PORT = 7443
TASKS = "/host/run/containerd/io.containerd.runtime.v2.task/default"


@dataclass(frozen=True)
class Node:
    endpoint: str
    pki: Path

    def atoll(self, client: str, *argv: str, stdin: str = "") -> Completed[str]:
        creds = self.pki / "clients"
        return as_text(run(
            [sys.executable, "-m", "atoll", "node", "--endpoint", self.endpoint,
             "--ca", str(self.pki / "ca.crt"), "--cert", str(creds / f"{client}.crt"),
             "--key", str(creds / f"{client}.key"), *argv],
            input=stdin.encode(), timeout=600, check=False,
        ))  # fmt: skip

    def audit(self) -> list[dict[str, Any]]:
        done = self.atoll("ada", "audit", "--limit", "1000")
        assert done.returncode == 0, done.stderr
        records: list[dict[str, Any]] = json.loads(done.stdout)["records"]
        return records


def _user_data(pki: Path) -> str:
    files = []
    for name, source, mode in (
        ("node.crt", pki / "nodes/node1.crt", "0644"),
        ("node.key", pki / "nodes/node1.key", "0600"),
        ("ca.crt", pki / "ca.crt", "0644"),
    ):
        content = base64.b64encode(source.read_bytes()).decode()
        files.append(
            f'[[files]]\npath = "/etc/atoll/agent/{name}"\ncontent = "{content}"\n'
            f'encoding = "base64"\nmode = "{mode}"\n'
        )
    return '[node]\nhostname = "node-1"\n' + "".join(files)


@pytest.fixture(scope="module")
def node(default_disk: DefaultDisk, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    work = tmp_path_factory.mktemp("agent-shell")
    pki = work / "pki"
    init(pki)
    issue(pki, "node1", kind=Kind.NODE)
    issue(pki, "ada", kind=Kind.CLIENT, role=Role.ADMIN)
    issue(pki, "otto", kind=Kind.CLIENT, role=Role.OPERATOR)
    user_data = work / "node.toml"
    user_data.write_text(_user_data(pki))
    spec = BootSpec(
        default_disk.image,
        Firmware.DIRECT,
        user_data=user_data,
        guest_ports=(AGENT_PORT,),
        snapshot=True,
    )
    with Machine(spec) as vm:
        vm.wait_ready(READY_TIMEOUT)
        yield Node(f"https://127.0.0.1:{vm.host_port(AGENT_PORT)}", pki)


def _shell(node: Node, script: str, *flags: str) -> Completed[str]:
    return node.atoll("ada", "shell", "--reason", "vm test", *flags, stdin=script)


def test_ops_shell_sessions_are_isolated_recorded_and_cleaned_up(node: Node) -> None:
    first = _shell(
        node,
        "cat /host/usr/lib/os-release; echo pid1=$(cat /proc/1/comm); "
        f"touch /host/etc/probe 2>&1 || echo host-ro; ls {TASKS}; exit 3\n",
    )
    assert first.returncode == 3, (first.stdout, first.stderr)
    out = first.stdout
    assert "IMAGE_ID=atoll" in out  # the host's root, mounted at /host
    assert "pid1=systemd" in out  # the host's PID namespace
    assert "Read-only file system" in out and "host-ro" in out
    records = node.audit()
    start, end = (r for r in records if r.get("session") and r["who"] == "ada")
    session = start["session"]
    assert f"atoll-shell-{session}" in out  # its own task, seen from inside
    assert start["what"] == "POST /v1/shell" and start["result"] == 101
    assert start["params"] == {"reason": "vm test", "ttl": 900, "tty": False}
    assert end["what"] == "shell end" and end["end"] == "exit" and end["exit_status"] == 3
    assert end["problems"] == [], end  # ctr no longer lists the container
    assert end["transcript"] == f"/var/log/atoll/shell/{session}.log"

    # A second session outlives its TTL; the first one's task is gone by then. (A container
    # takes 5-40 s to start under TCG on the shared cores: the TTL leaves room for that.)
    second = _shell(node, f"echo tasks: $(ls {TASKS}); sleep 600\n", "--ttl", "90s")
    assert second.returncode == 1, (second.stdout, second.stderr)
    assert "ended: ttl (TTL of 90 s)" in second.stderr
    assert f"atoll-shell-{session}" not in second.stdout and "tasks: atoll-shell-" in second.stdout
    ttl_end = [r for r in node.audit() if r["what"] == "shell end"][-1]
    assert ttl_end["what"] == "shell end" and ttl_end["end"] == "ttl", ttl_end
    assert ttl_end["problems"] == [], ttl_end

    # A third checks that nothing is left of the second and that the transcript is intact.
    third = _shell(node, f"echo tasks: $(ls {TASKS}); sha256sum /host{end['transcript']}\n")
    assert third.returncode == 0, (third.stdout, third.stderr)
    assert f"tasks: atoll-shell-{ttl_end['session']}" not in third.stdout
    assert end["transcript_sha256"] in third.stdout
    verify = node.atoll("ada", "audit", "--verify")
    assert verify.returncode == 0, verify.stdout
    durations = [r["seconds"] for r in node.audit() if r["what"] == "shell end"]
    print(f"shell sessions (s): {durations}")  # container start under TCG, for the record


TOOLBOX = "localhost/atoll/toolbox:1"
PRELOADED = "docker.io/library/busybox:atoll"


def test_the_toolbox_has_the_tools_and_reaches_the_host(node: Node) -> None:
    """The toolbox atoll builds from Debian packages: an operator's tools, the host's
    ctr and ostree; a preloaded image for diagnosis is a shell of its own."""
    script = (
        "ps -e -o comm= | grep -qx containerd && echo ps-sees-containerd\n"
        "ip -o link show lo >/dev/null && echo ip-works\n"
        "ss -ltn | grep -q ':7443 ' && echo ss-sees-the-agent\n"
        "tcpdump --version 2>&1 | head -n1\n"
        "strace -V | head -n1\n"
        "ostree admin status\n"
        "ctr images ls -q\n"
        f"ctr run --rm {PRELOADED} diag /bin/true || echo ctr-run-refused=$?\n"
        f"ctr images rm {TOOLBOX}\n"
    )
    done = _shell(node, script)
    assert done.returncode == 0, (done.stdout, done.stderr)
    out = done.stdout
    for word in ("ps-sees-containerd", "ip-works", "ss-sees-the-agent", "tcpdump version"):
        assert word in out, out
    assert "strace -- version" in out, out
    assert "* atoll " in out and "Version: 1.0.0" in out, out  # ostree admin status: booted
    assert TOOLBOX in out and PRELOADED in out, out
    assert "ctr-run-refused=2" in out and "atoll node shell --image" in done.stderr + out
    diagnosis = _shell(
        node, "cat /bin/sh >/dev/null && ls -l /bin/sh; uname -s\n", "--image", PRELOADED
    )
    assert diagnosis.returncode == 0, (diagnosis.stdout, diagnosis.stderr)
    assert "busybox" in diagnosis.stdout and "Linux" in diagnosis.stdout  # busybox's sh
    assert [r["params"].get("image") for r in node.audit() if r.get("what") == "POST /v1/shell"][
        -1
    ] == PRELOADED
    absent = _shell(node, "exit\n", "--image", "docker.io/library/absent:1")
    assert absent.returncode == 1 and "HTTP 404" in absent.stderr, absent.stderr
    assert "docker.io/library/absent:1 is not in containerd" in absent.stderr
    # The toolbox was removed from containerd (above): the next shell imports it again.
    again = _shell(node, "ctr images ls -q; echo second-shell\n")
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert "second-shell" in again.stdout and TOOLBOX in again.stdout, again.stdout


def test_logs_of_the_agent_and_role_checks(node: Node) -> None:
    logs = node.atoll("otto", "logs", "atoll-agent", "-n", "20")
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert 0 < len(lines) <= 20 and any("atoll-agent" in line for line in lines), lines
    refused = node.atoll("otto", "shell", "--reason", "not mine", stdin="exit\n")
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr


def test_a_setting_changed_through_the_api_takes_effect_on_the_node(node: Node) -> None:
    changed = node.atoll("ada", "settings", "set", 'kernel.sysctls={"vm.swappiness": "17"}')
    assert changed.returncode == 0, changed.stderr
    seen = _shell(node, "cat /proc/sys/vm/swappiness /host/etc/sysctl.d/90-atoll.conf\n")
    assert seen.returncode == 0, (seen.stdout, seen.stderr)
    assert seen.stdout.splitlines()[0] == "17", seen.stdout  # systemd-sysctl re-applied it
    assert "vm.swappiness = 17" in seen.stdout

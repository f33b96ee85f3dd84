"""The agent's runner with real programs, and the hung ``ostree`` it was made for.

A fake ``ostree`` (a shell script first on ``PATH``) answers ``admin status``
and deploys into files; told to hang, its ``admin deploy`` never exits. With a
short timeout the deployments, the API and the update loop each fail with the
timeout named, the deployments' lock is free again, and the next operation
goes through: before the runner, one hung ``ostree admin upgrade`` blocked
upgrades, rollbacks and the update loop for good.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from atoll.agent import command, health
from atoll.agent.deployments import DEPLOY_TIMEOUT, DeploymentError, Deployments
from atoll.agent.server import Agent, AgentConfig, ApiError, Identity, Role
from atoll.agent.update_loop import Updater, UpdaterConfig
from atoll.wire.fleet import request_json
from tests.integration.test_agent_update_loop import controller  # noqa: F401
from tests.integration.test_publish import World, _node, _publish, world  # noqa: F401

OLD = "c462f77e059e6caec7c945196c77782e2ecea4cee96c561524552714f10e507a"
NEW = "1f" * 32
LIMIT = 0.5  # seconds: what the tests give a call instead of the node's minutes


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _gone(pids: Sequence[int], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _phase(server: str, name: str) -> str | None:
    """The controller's phase for node ``name`` (None before it registered)."""
    nodes = request_json("GET", f"{server}/v1/nodes")
    return next((str(n["phase"]) for n in nodes if n["name"] == name), None)


def _until(condition: Callable[[], bool], within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


# -- the runner ------------------------------------------------------------------------


def test_a_program_runs_with_stdin_closed_and_a_clean_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "s3cret")
    env = command.run(["env"], timeout=10).stdout_text.splitlines()
    assert sorted(env) == ["LANG=C.UTF-8", f"PATH={command.PATH}"]
    assert "EXTRA=1" in command.run(["env"], timeout=10, env={"EXTRA": "1"}).stdout_text
    # stdin is /dev/null: cat ends at once instead of waiting for input.
    assert command.run(["cat"], timeout=10).stdout == b""
    assert command.run(["cat"], timeout=10, input=b"given\n").stdout == b"given\n"
    assert command.output(["echo", "out"], timeout=10) == "out\n"


def test_a_failure_names_the_argv_the_status_and_the_end_of_stderr() -> None:
    script = "echo one >&2; echo two >&2; echo three >&2; echo four >&2; exit 3"
    with pytest.raises(command.CommandError) as failed:
        command.run(["sh", "-c", script], timeout=10)
    assert str(failed.value) == f"sh -c '{script}': exit 3 | two | three | four"
    assert failed.value.status == 3
    done = command.run(["sh", "-c", "echo out; exit 4"], timeout=10, check=False)
    assert (done.status, done.stdout_text) == (4, "out\n")
    with pytest.raises(command.CommandError, match=r"^no-such-program-x: cannot run: No such file"):
        command.run(["no-such-program-x"], timeout=10)


def test_a_timeout_kills_the_whole_process_group_and_reaps_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"echo started >&2; echo $$ > {pids}; sleep 600 & echo $! >> {pids}; wait"
    started = time.monotonic()
    with pytest.raises(command.CommandError) as failed:
        command.run(["sh", "-c", script], timeout=LIMIT)
    assert time.monotonic() - started < LIMIT + 3
    assert str(failed.value).endswith(": timed out after 0.5 s | started")
    assert failed.value.timed_out and failed.value.status is None
    shell, sleeper = (int(p) for p in pids.read_text().split())
    assert _gone([shell, sleeper]), "the program or its child outlived the timeout"


def test_a_descendant_that_left_the_group_does_not_keep_the_call_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It holds stdout open from another session: the call still ends, bounded."""
    monkeypatch.setattr(command, "REAP_SECONDS", LIMIT)
    pid = tmp_path / "pid"
    started = time.monotonic()
    try:
        with pytest.raises(command.CommandError, match=r"timed out after 0\.5 s"):
            command.run(["sh", "-c", f"setsid sleep 30 & echo $! > {pid}; exit 0"], timeout=LIMIT)
        assert time.monotonic() - started < 3 * LIMIT + 2
    finally:
        if pid.exists():
            command.run(["kill", pid.read_text().strip()], timeout=10, check=False)


# -- health probes ---------------------------------------------------------------------


def test_user_checks_run_for_real_and_etc_overrides_usr(tmp_path: Path) -> None:
    for directory, name, body in (
        ("usr/lib/atoll/health.d", "10-disk", "echo vendor; exit 1"),
        ("etc/atoll/health.d", "10-disk", "echo site ok"),  # overrides the vendor one
        ("usr/lib/atoll/health.d", "20-app", "echo app down >&2; exit 3"),
        ("etc/atoll/health.d", "30-notes", None),  # not executable: not a check
    ):
        path = tmp_path / directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\n{body}\n" if body else "notes\n")
        path.chmod(0o755 if body else 0o644)
    checks = health.user_checks(tmp_path, health.run_probe)
    assert checks == [
        health.Check("user:10-disk", True, "site ok"),
        health.Check("user:20-app", False, "exit 3: app down"),
    ]


def test_a_probe_that_hangs_or_cannot_run_fails_its_check(tmp_path: Path) -> None:
    assert health.run_probe(["sleep", "600"], timeout=LIMIT) == (
        124,
        "sleep 600: no answer within 0.5 s",
    )
    assert health.run_probe(["no-such-check-x"]) == (127, "no-such-check-x: not found")
    (tmp_path / "check").write_text("#!/bin/sh\n")  # not executable
    assert health.run_probe([str(tmp_path / "check")]) == (
        126,
        f"{tmp_path / 'check'}: Permission denied",
    )


def test_the_console_command_prints_the_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No agent listens on that socket: unhealthy whatever the host's systemd says.
    assert health.main(["--root", str(tmp_path), "--socket", str(tmp_path / "none.sock")]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["healthy"] is False
    names = [c["name"] for c in printed["checks"]]
    assert names == ["systemd", "containerd", "var-space", "agent"]


# -- the hung ostree -------------------------------------------------------------------

FAKE_OSTREE = """#!/bin/sh
# ostree admin status/deploy/undeploy over files in {state}; deploy hangs while {state}/hang exists
state={state}
case "$1 $2" in
"admin status")
    if [ -f "$state/pending" ]; then
        printf '  atoll %s.1 (pending)\\n    Version: 1.1.0\\n' "$(cat "$state/pending")"
    fi
    printf '* atoll %s.0\\n    Version: 1.0.0\\n' "$(cat "$state/booted")"
    ;;
"admin deploy")
    for commit; do :; done  # the last argument (after --retain, for a rollback)
    if [ -f "$state/hang" ]; then
        echo "deploying $commit" >&2
        echo $$ >> "$state/pids"
        sleep 600 &
        echo $! >> "$state/pids"
        wait
    fi
    echo "$commit" > "$state/pending"
    ;;
"admin undeploy")
    rm -f "$state/pending"
    ;;
*)
    echo "fake ostree: unexpected $*" >&2
    exit 2
    ;;
esac
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> {state}/systemctl
"""


class FakeNode:
    """A node whose ``ostree`` is the script above, run through the real runner."""

    def __init__(self, tmp_path: Path, booted: str) -> None:
        self.state = tmp_path / "ostree-state"
        self.state.mkdir()
        (self.state / "booted").write_text(booted)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, script in (("ostree", FAKE_OSTREE), ("systemctl", FAKE_SYSTEMCTL)):
            (bin_dir / name).write_text(script.format(state=self.state))
            (bin_dir / name).chmod(0o755)
        self.path = f"{bin_dir}:{command.PATH}"
        self.given: list[tuple[str, float]] = []  # (argv, the timeout the caller chose)

    def run(self, argv: Sequence[str], *, timeout: float) -> str:
        """The node's runner with ``ostree`` first on PATH and every call cut to LIMIT."""
        assert argv[0] in ("ostree", "systemctl"), f"not on this host: {argv}"
        self.given.append((" ".join(argv), timeout))
        done = command.run(argv, timeout=min(timeout, LIMIT), env={"PATH": self.path})
        return done.stdout_text

    def hang(self, hang: bool) -> None:
        if hang:
            (self.state / "hang").touch()
        else:
            (self.state / "hang").unlink()

    def pending(self) -> str | None:
        path = self.state / "pending"
        return path.read_text().strip() if path.exists() else None

    def pids(self) -> list[int]:
        path = self.state / "pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []


def _lock_is_free(deployments: Deployments) -> bool:
    """Whether another thread can take the deployments' lock (it is re-entrant: not this one)."""
    got: list[bool] = []

    def take() -> None:
        if deployments.lock.acquire(timeout=5):
            deployments.lock.release()
            got.append(True)

    other = threading.Thread(target=take)
    other.start()
    other.join(10)
    return got == [True]


@pytest.mark.timeout(60)  # a regression hangs: fail it soon
def test_a_hung_ostree_deploy_ends_with_the_timeout_named_and_the_lock_released(
    tmp_path: Path,
) -> None:
    node = FakeNode(tmp_path, OLD)
    deployments = Deployments(node.run, lambda: None)
    node.hang(True)
    started = time.monotonic()
    with pytest.raises(DeploymentError) as failed:
        deployments.upgrade(NEW)
    assert time.monotonic() - started < LIMIT + 5
    assert str(failed.value) == (
        f"ostree admin deploy {NEW}: timed out after 0.5 s | deploying {NEW}"
    )
    assert isinstance(failed.value.__cause__, command.CommandError)
    # The node's own limit for the call was finite too (here cut to LIMIT).
    assert (f"ostree admin deploy {NEW}", DEPLOY_TIMEOUT) in node.given
    assert _gone(node.pids()), "the hung ostree (or its child) is still running"
    assert node.pending() is None
    assert _lock_is_free(deployments)
    # Another operation proceeds: ostree answers again, the upgrade goes through.
    node.hang(False)
    result = deployments.upgrade(NEW)
    assert result["deployments"][0]["checksum"] == NEW and node.pending() == NEW


@pytest.mark.timeout(60)  # a regression hangs: fail it soon
def test_the_api_answers_a_hung_ostree_with_a_conflict_naming_it(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, OLD)
    root = tmp_path / "root"
    config = AgentConfig(
        root=root,
        audit_path=root / "var/lib/atoll/audit.jsonl",
        cert=root / "none",
        key=root / "none",
        ca=root / "none",
        crl=None,
        runner=lambda _: None,
        commands=node.run,
        sync=lambda: None,
    )
    agent = Agent(config)
    otto = Identity("otto", Role.OPERATOR)
    node.hang(True)
    expected = rf"^ostree admin deploy {NEW}: timed out after 0\.5 s"
    with pytest.raises(ApiError, match=expected) as refused:
        agent.upgrade(otto, {"to": NEW}, {})
    assert refused.value.status == 409
    assert _lock_is_free(agent.deployments)
    node.hang(False)
    assert agent.upgrade(otto, {"to": NEW}, {})["deployments"][0]["checksum"] == NEW
    assert agent.rollback(otto, {}, {})["ran"] == ["ostree", "admin", "undeploy", "0"]
    assert node.pending() is None


@pytest.mark.timeout(60)  # a regression hangs: fail it soon
def test_the_update_loop_reports_a_hung_ostree_and_stages_in_a_later_round(
    world: World,  # noqa: F811
    tmp_path: Path,
    controller: str,  # noqa: F811
) -> None:
    _publish(world, "1.0.0")
    _publish(world, "1.1.0")
    v1, v2 = world.commits["1.0.0"], world.commits["1.1.0"]
    node = FakeNode(tmp_path, v1)
    repo, keys = _node(tmp_path, world)
    root = tmp_path / "root"
    (root / "var/lib/atoll").mkdir(parents=True)
    (root / "ostree").mkdir()
    (root / "ostree/repo").symlink_to(repo)
    config = UpdaterConfig(controller, world.url, "stable", "node-1", {"zone": "a"}, 0.05)
    deployments = Deployments(node.run, lambda: None)
    logged: list[str] = []
    updater = Updater(config, deployments, keys, root=root, log=logged.append)
    pool = {
        "pool": {"name": "web", "version": "1.1.0", "previous_version": "1.0.0"},
        "strategy": {"max_unavailable": 1},
    }
    request_json("PUT", f"{controller}/v1/pools/web", pool)
    node.hang(True)
    stop = threading.Event()
    loop = threading.Thread(target=updater.run_forever, args=(stop,))
    loop.start()
    try:
        failure = f"deploy of 1.1.0 failed: ostree admin deploy {v2}: timed out after 0.5 s"
        assert _until(lambda: any(m.startswith(failure) for m in logged)), logged
        assert node.pending() is None and _gone(node.pids())
        # The lock is free and the loop goes on: once ostree answers and the controller lets
        # the node try again (it reported the failed step; the operator retries the pool's
        # failed nodes), a round stages v2.
        node.hang(False)
        # The loop logs the failure before its report reaches the controller: resume only
        # once the controller has failed the node (a resume before that would find nothing
        # to retry, and the report would then fail the node and pause the pool).
        assert _until(lambda: _phase(controller, "node-1") == "failed")
        request_json("POST", f"{controller}/v1/pools/web/resume", {})
        assert _until(lambda: any(m.startswith("staged 1.1.0") for m in logged)), logged
        assert node.pending() == v2
    finally:
        stop.set()
        loop.join(10)
    assert not loop.is_alive()

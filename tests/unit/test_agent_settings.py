"""Settings: whole-model validation naming the key, atomic rendering, rollback on failure."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from atoll.agent.server import IGNORED_SETTINGS, Agent, AgentConfig, Identity, Reply, Role
from atoll.agent.settings import (
    ApplyError,
    SettingsError,
    SettingsStore,
    defaults,
    merge,
    root_karg,
    root_sysctl,
)


class Recorder:
    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv: Sequence[str]) -> None:
        self.calls.append(list(argv))
        if self.fail_on and self.fail_on in argv and len(self.calls) == 1:
            raise RuntimeError(f"{self.fail_on} failed to restart")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"hostname": "Bad_Host"}, "hostname: 'Bad_Host' is not a host name"),
        ({"hostname": 3}, "hostname: expected a string, got int"),
        ({"network.ntp.servers": "pool.ntp.org"}, "network.ntp.servers: expected a list"),
        ({"network.ntp.servers": ["a", "a"]}, "network.ntp.servers: duplicate entries"),
        ({"network.dns.servers": ["dns.example"]}, "network.dns.servers[0]: 'dns.example'"),
        ({"kernel.sysctls": {"vm swappiness": 1}}, "kernel.sysctls.vm swappiness: not a sysctl"),
        ({"kernel.sysctls": {"vm.swappiness": True}}, "kernel.sysctls.vm.swappiness: expected"),
        ({"kernel.args": ["a b"]}, "kernel.args[0]: 'a b' is not a kernel argument"),
        ({"containers.registry_mirrors": {"docker.io": ["ftp://x"]}}, "docker.io[0]"),
        ({"updates.maintenance_window": "sunday 2am"}, "updates.maintenance_window:"),
        ({"fleet.controller": "controller:8080"}, "fleet.controller: 'controller:8080'"),
        ({"fleet.controller": "http://a:1,b:2"}, "fleet.controller: 'http://a:1,b:2'"),
        ({"no.such": 1}, "no.such: unknown setting"),
        ({}, "expected a non-empty object"),
    ],
)
def test_bad_values_name_the_key(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        merge(defaults(), change)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_a_change_is_rendered_atomically_and_restarts_only_what_depends_on_it(
    tmp_path: Path,
) -> None:
    runner = Recorder()
    store = SettingsStore(tmp_path, runner)
    new = store.set(
        {
            "hostname": "node-1",
            "network.ntp.servers": ["10.0.0.1", "ntp.example"],
            "kernel.sysctls": {"vm.swappiness": 10},
            "containers.registry_mirrors": {"docker.io": ["https://mirror.example:5000"]},
            "updates.maintenance_window": "sat,sun 02:00-04:00",
        }
    )
    assert new["kernel.sysctls"] == {"vm.swappiness": "10"}
    assert (tmp_path / "etc/hostname").read_text() == "node-1\n"
    ntp = tmp_path / "etc/systemd/timesyncd.conf.d/50-atoll.conf"
    assert ntp.read_text() == "[Time]\nNTP=10.0.0.1 ntp.example\n"
    assert (tmp_path / "etc/sysctl.d/90-atoll.conf").read_text() == "vm.swappiness = 10\n"
    hosts = (tmp_path / "etc/containerd/certs.d/docker.io/hosts.toml").read_text()
    assert '[host."https://mirror.example:5000"]' in hosts
    assert sorted(c[-1] for c in runner.calls) == [
        "systemd-hostnamed.service",
        "systemd-sysctl.service",
        "systemd-timesyncd.service",
    ]
    assert store.current() == new
    assert not list(tmp_path.rglob(".*.tmp"))

    runner.calls.clear()
    store.set({"network.ntp.servers": []})
    assert not ntp.exists()  # rendered by the old settings only: removed
    assert runner.calls == [["systemctl", "try-restart", "systemd-timesyncd.service"]]


def test_a_failed_restart_restores_every_file(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path, Recorder())
    store.set({"hostname": "before", "kernel.sysctls": {"vm.swappiness": 1}})
    snapshot = {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    failing = Recorder(fail_on="systemd-hostnamed.service")
    store.runner = failing
    with pytest.raises(ApplyError, match="previous settings restored"):
        store.set(
            {"hostname": "after", "kernel.sysctls": {}, "network.dns.servers": ["192.0.2.53"]}
        )
    assert {p: p.read_text() for p in tmp_path.rglob("*") if p.is_file()} == snapshot
    assert store.current()["hostname"] == "before"
    assert len(failing.calls) > 1  # the units were restarted again on the old files


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path, Recorder())
    with pytest.raises(SettingsError):
        store.set({"hostname": "ok", "kernel.args": ["bad arg"]})
    assert not (tmp_path / "etc").exists()


def test_concurrent_changes_are_applied_one_at_a_time(tmp_path: Path) -> None:
    """The API's worker threads change settings at once: no error, no lost change."""
    store = SettingsStore(tmp_path, Recorder())
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def change(i: int) -> None:
        start.wait()
        try:
            for j in range(25):
                store.set({"hostname": f"node-{i}-{j}"})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.current()["hostname"].startswith("node-")
    assert not list(tmp_path.rglob(".*.tmp"))


def test_controller_replicas_are_accepted() -> None:
    replicas = "https://10.0.2.100:9443,https://10.0.2.101:9443"
    assert merge(defaults(), {"fleet.controller": replicas})["fleet.controller"] == replicas


def test_the_first_change_keeps_the_provisioned_host_name(tmp_path: Path) -> None:
    """No settings.json yet: a sysctl change must not rename the node to the default."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("node-1\n")
    store = SettingsStore(tmp_path, Recorder())
    assert store.current()["hostname"] == "node-1"
    store.set({"kernel.sysctls": {"vm.swappiness": "10"}})
    assert (tmp_path / "etc/hostname").read_text() == "node-1\n"
    # An unusable /etc/hostname falls back to the default rather than failing.
    (tmp_path / "etc/atoll/settings.json").unlink()
    (tmp_path / "etc/hostname").write_text("Not A Host Name\n")
    assert store.current()["hostname"] == defaults()["hostname"]


@pytest.mark.parametrize(
    "change",
    [
        # a trailing newline passed every `...$` pattern: one more line in a line-oriented file
        {"hostname": "node-1\n"},
        {"network.ntp.servers": ["ntp.example\n"]},
        {"network.dns.servers": ["fe80::1%eth0\nDNS=192.0.2.66"]},  # a scope id took anything
        {"network.dns.servers": ["fe80::1%eth 0"]},
        {"kernel.sysctls": {"vm.swappiness\n": 1}},
        {"kernel.sysctls": {"vm.swappiness": "1\r"}},
        {"kernel.sysctls": {"vm.swappiness": "1\x00"}},
        {"kernel.sysctls": {"kernel.core_pattern": "|/bin/x\u2028y"}},
        {"kernel.sysctls": {"vm.swappiness": 2**64}},
        {"kernel.args": ["quiet\n"]},
        {"containers.registry_mirrors": {"docker.io\n": ["https://m.example"]}},
        {"containers.registry_mirrors": {"..": ["https://m.example"]}},  # certs.d/../hosts.toml
        {"containers.registry_mirrors": {"docker.io": ["https://m.example/\n"]}},
        {"containers.registry_mirrors": {"docker.io": ['https://m.example/"]\n[x']}},
        {"updates.server": "https://updates.example/\n"},
        {"updates.server": "https://updates.example/\ud800"},  # a lone surrogate
        {"updates.server": "https://updates.example/\u00e4"},
        {"updates.channel": "stable\n"},
        {"updates.maintenance_window": "daily 02:00-04:00\n"},
        {"updates.maintenance_window": "daily 0\u0662:00-04:00"},  # an Arabic-Indic digit
        {"fleet.controller": "https://c.example:9443\n"},
        {"fleet.controller": "http://a/\ud800"},
        {"hostname": "a" * 40 + "." + "b" * 40},  # over the kernel's 64
    ],
)
def test_values_for_line_oriented_files_hold_no_control_characters(
    change: dict[str, Any], tmp_path: Path
) -> None:
    key = next(iter(change))
    with pytest.raises(SettingsError) as caught:
        merge(defaults(), change)
    assert caught.value.problems[0].startswith(key), caught.value.problems
    store = SettingsStore(tmp_path, Recorder())
    with pytest.raises(SettingsError):
        store.set(change)
    assert not (tmp_path / "etc").exists()  # validated before anything was written


def test_every_rendered_file_is_ascii_and_one_entry_per_line(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path, Recorder())
    store.set(
        {
            "hostname": "node-1",
            "network.ntp.servers": ["ntp.example", "fe80::1%eth0"],
            "kernel.sysctls": {"vm.swappiness": 10, "net.ipv4.ip_local_port_range": "32768 60999"},
            "containers.registry_mirrors": {"registry.example:5000": ["https://m.example/v2?x=1"]},
            "fleet.controller": "https://c.example:9443,https://[fd00::1]:9443",
        }
    )
    sysctl = (tmp_path / "etc/sysctl.d/90-atoll.conf").read_text()
    assert sysctl == "net.ipv4.ip_local_port_range = 32768 60999\nvm.swappiness = 10\n"
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert path.read_bytes().isascii(), path


def test_a_stored_value_refused_today_is_named_and_can_be_replaced(tmp_path: Path) -> None:
    """settings.json written by an agent that let a value in: named, and fixable by a change."""
    store = SettingsStore(tmp_path, Recorder())
    store.set({"hostname": "node-1", "network.ntp.servers": ["ntp.example"]})
    path = tmp_path / "etc/atoll/settings.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "hostname": "node-1\n"}))
    with pytest.raises(SettingsError, match=r"settings\.json: hostname: 'node-1\\n'"):
        store.current()
    with pytest.raises(SettingsError, match="hostname: 'node-1"):
        store.set({"kernel.args": ["quiet"]})  # the stored value must be replaced too
    assert store.set({"hostname": "node-2", "kernel.args": ["quiet"]})["hostname"] == "node-2"
    assert store.current()["network.ntp.servers"] == ["ntp.example"]
    assert (tmp_path / "etc/hostname").read_text() == "node-2\n"
    for broken in ("{not json", "[1]", "\udcff"):
        path.write_bytes(broken.encode("utf-8", "surrogateescape"))
        with pytest.raises(SettingsError, match=r"settings\.json: "):
            store.current()


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("kernel.core_pattern", True),  # "|/bin/sh -c ..." runs as root on a crash
        ("kernel.modprobe", True),
        ("kernel.hotplug", True),
        ("kernel.poweroff_cmd", True),
        ("kernel.usermodehelper.bset", True),
        ("kernel.usermodehelper.inheritable", True),
        ("fs.binfmt_misc.register", True),
        ("fs.binfmt_misc.status", True),
        ("kernel.core_pattern_x", False),  # whole names only
        ("kernel.core_uses_pid", False),
        ("kernel.keys.maxkeys", False),
        ("vm.swappiness", False),
        ("net.ipv4.ip_forward", False),
    ],
)
def test_sysctls_that_make_the_kernel_run_a_program_are_refused(name: str, refused: bool) -> None:
    assert root_sysctl(name) is refused
    change = {"kernel.sysctls": {name: "|/bin/sh -c id"}}
    if not refused:
        assert merge(defaults(), change)["kernel.sysctls"] == {name: "|/bin/sh -c id"}
        return
    with pytest.raises(SettingsError) as caught:
        merge(defaults(), change)
    assert caught.value.problems == [
        f"kernel.sysctls.{name}: refused: it makes the kernel run a program or says who may "
        "(operators cannot gain root through settings)"
    ]


@pytest.mark.parametrize(
    ("arg", "refused"),
    [
        ("init=/bin/sh", True),
        ("rdinit=/bin/sh", True),
        ("root=/dev/sdb1", True),
        ("ostree=/ostree/deploy/x", True),
        ("systemd.debug_shell", True),
        ("systemd.debug-shell=1", True),
        ("systemd.unit=emergency.target", True),
        ("systemd.run=/bin/sh", True),
        ("systemd.setenv=LD_PRELOAD=/x.so", True),
        ("rd.break", True),
        ("rd.shell", True),
        ("emergency", True),
        ("rescue", True),
        ("single", True),
        ("1", True),
        ("S", True),
        ("-s", True),
        ("--", True),
        ("LD_PRELOAD=/x.so", True),  # handed to init as an environment variable
        ("selinux=0", True),
        ("lsm=landlock", True),
        ("module.sig_enforce=0", True),
        ("nowatchdog", False),
        ("console=ttyS0,115200", False),
        ("mitigations=auto", False),
        ("module_blacklist=nouveau", False),
        ("transparent_hugepage=never", False),
        ("initcall_debug", False),
    ],
)
def test_kernel_arguments_that_choose_what_runs_as_root_are_refused(
    arg: str, refused: bool
) -> None:
    assert root_karg(arg) is refused
    change = {"kernel.args": ["quiet", arg]}
    if not refused:
        assert merge(defaults(), change)["kernel.args"] == ["quiet", arg]
        return
    with pytest.raises(SettingsError) as caught:
        merge(defaults(), change)
    assert caught.value.problems == [
        f"kernel.args[1]: {arg!r} is refused: it chooses what runs as root "
        "(operators cannot gain root through settings)"
    ]


def test_keys_another_agent_stored_are_ignored_and_dropped_by_the_next_change(
    tmp_path: Path,
) -> None:
    store = SettingsStore(tmp_path, Recorder())
    store.set({"hostname": "node-1", "network.ntp.servers": ["ntp.example"]})
    path = tmp_path / "etc/atoll/settings.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "future.setting": 1, "bad\nkey": 2}))
    assert store.current() == {**defaults(), **stored}
    assert store.ignored() == ["'bad\\nkey'", "future.setting"]
    assert store.set({"kernel.args": ["quiet"]})["kernel.args"] == ["quiet"]
    assert json.loads(path.read_text()) == {**stored, "kernel.args": ["quiet"]}
    assert store.ignored() == []
    assert store.current()["network.ntp.servers"] == ["ntp.example"]


def test_get_names_the_ignored_keys_in_its_answer(tmp_path: Path) -> None:
    def no_command(argv: Sequence[str], *, timeout: float) -> str:
        raise AssertionError(f"no command expected: {argv}")

    agent = Agent(
        AgentConfig(
            root=tmp_path,
            audit_path=tmp_path / "var/lib/atoll/audit.jsonl",
            cert=tmp_path / "none",
            key=tmp_path / "none",
            ca=tmp_path / "none",
            crl=None,
            runner=Recorder(),
            commands=no_command,
            sync=lambda: None,
        )
    )
    who = Identity("vera", Role.VIEWER)
    agent.settings.set({"hostname": "node-1"})
    assert agent.settings_get(who, {}, {}) == Reply(agent.settings.current())
    path = tmp_path / "etc/atoll/settings.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "z.new": 1, "a.new": 2}))
    reply = agent.settings_get(who, {}, {})
    assert reply.payload["hostname"] == "node-1" and "z.new" not in reply.payload
    assert reply.fields == ((IGNORED_SETTINGS, "a.new, z.new"),)

"""A node whose ESP is full cannot take an upgrade that changes the kernel: it says so.

One UEFI node (systemd-boot, real ostree, its agent following a signed channel
served from the host, a real fleet controller on SQLite) boots v1 from a disk
whose ESP the host filled before the first boot (``mcopy`` of a filler that
takes every free cluster). The pool moves it to a build of v2 with a changed
kernel: the node pulls and deploys it, the ESP check refuses the boot entries
sync, and the node undoes the deployment and reports the failure (issue 20).
Checked: the controller's record of the node holds the failed step with the ESP
named, the node stays on v1 with nothing pending (its API's status, the disk's
boot entries), its audit has the record, and no reboot was asked for or run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atoll.boot.runner import BootSpec, Firmware, Machine
from atoll.demo import AGENT_PORT, user_data
from atoll.disk import boot_entries, build_disk, plan_disk
from atoll.disk.layout import ALIGN, MIB
from atoll.ops.client import NodeClient
from atoll.pki import Kind, Role
from atoll.pki import init as pki_init
from atoll.pki import issue as pki_issue
from atoll.process import run
from atoll.progress import PlainReporter
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish
from atoll.tools import ostree
from atoll.tools.qemu import HostService
from atoll.wire.fleet import request_json
from tests.conftest import TEST_EPOCH
from tests.vm.conftest import READY_TIMEOUT, TwoVersions, update_server_and_controller

# One UEFI boot under TCG with a pull, a deploy and its undo.
pytestmark = pytest.mark.timeout(2400)

NODE = "node-esp"
NEW_KERNEL_VERSION = "1.0.2"
FAILURE_TIMEOUT = 1200.0  # from the pool's creation to the reported failure (pull, deploy)
METADATA = ("atoll.name", "atoll.kernel", "atoll.kargs", "atoll.manifest-digest")


@dataclass(frozen=True)
class Host:
    fleet: str
    services: tuple[HostService, ...]
    user_data: Path
    pki: Path


def _with_new_kernel(repo: Path, base: str, work: Path) -> str:
    """``base`` with another kernel (the same bytes and a tail): a new boot checksum, so
    its deploy needs the kernel and initrd copied onto the ESP."""
    kernels = [
        e.path
        for e in ostree.list_tree(repo, base, "/usr/lib/modules")
        if e.kind == "-" and e.path.endswith("/vmlinuz")
    ]
    assert len(kernels) == 1, kernels
    overlay = work / "new-kernel"
    target = overlay / kernels[0].lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(ostree.cat(repo, base, kernels[0]) + b"\0" * 4096 + b"atoll esp test\n")
    metadata = {**ostree.commit_metadata(repo, base, METADATA), "version": NEW_KERNEL_VERSION}
    argv = [
        "ostree", "commit", f"--repo={repo}", f"--tree=ref={base}", f"--tree=dir={overlay}",
        "--orphan", "--no-bindings", f"--timestamp=@{TEST_EPOCH}",
        f"--subject=minimal {NEW_KERNEL_VERSION} (new kernel)",
    ]  # fmt: skip
    argv += [f"--add-metadata-string={k}={v}" for k, v in sorted(metadata.items())]
    return run(argv).stdout.decode().strip()


def _fill_esp(disk: Path) -> int:
    """Fill the disk's ESP (partition 1, at ``ALIGN``) to the last cluster; its size."""
    esp = f"{disk}@@{ALIGN}"
    listing = run(["mdir", "-i", esp, "::/"]).stdout.decode()
    free = int(re.search(r"([\d ]+) bytes free", listing)[1].replace(" ", ""))  # type: ignore[index]
    filler = disk.parent / "filler"
    with filler.open("wb") as f:
        f.truncate(free)
    run(["mcopy", "-i", esp, str(filler), "::/filler"])
    assert re.search(r"\b0 bytes free", run(["mdir", "-i", esp, "::/"]).stdout.decode())
    return free


@pytest.fixture
def host(two_versions: TwoVersions, tmp_path: Path) -> Iterator[tuple[Host, str]]:
    reporter = PlainReporter()
    new_kernel = _with_new_kernel(two_versions.repo, two_versions.new_commit, tmp_path)
    keys = tmp_path / "keys"
    init_keys(keys)
    key = load_private_key(keys / "atoll-ed25519.key")
    updates = tmp_path / "updates"
    for commit in (two_versions.old.commit, new_kernel):
        publish(two_versions.repo, commit, updates, "stable", key, reporter)
    pki = tmp_path / "pki"
    pki_init(pki)
    pki_issue(pki, "esp-admin", kind=Kind.CLIENT, role=Role.ADMIN)
    data = tmp_path / "node.toml"
    data.write_text(user_data(NODE, "stable", (keys / "atoll-ed25519.pub").read_bytes(), pki))
    with update_server_and_controller(updates, tmp_path / "fleet.db") as (controller, services):
        yield Host(controller, services, data, pki), new_kernel


def _node(fleet: str) -> dict[str, Any] | None:
    nodes = request_json("GET", f"{fleet}/v1/nodes")
    return next((n for n in nodes if n["name"] == NODE), None)


def _until(fleet: str, ok: Any, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    node = _node(fleet)
    while not (node is not None and ok(node)) and time.monotonic() < deadline:
        time.sleep(2.0)
        node = _node(fleet)
    return node


def test_a_full_esp_fails_the_kernel_upgrade_reports_it_and_stays_on_v1(
    two_versions: TwoVersions, host: tuple[Host, str], tmp_path: Path
) -> None:
    services, new_kernel = host
    v1 = two_versions.old
    disk = tmp_path / "node.img"
    build_disk(plan_disk(two_versions.repo, v1.commit, disk, size=2048 * MIB), PlainReporter())
    filled = _fill_esp(disk)
    spec = BootSpec(
        disk,
        Firmware.UEFI,
        user_data=services.user_data,
        host_services=services.services,
        guest_ports=(AGENT_PORT,),
        state_dir=tmp_path / "vm",
    )
    pool = {
        "pool": {"name": "esp", "version": NEW_KERNEL_VERSION, "previous_version": v1.version},
        "strategy": {"max_unavailable": 1, "reboot": "full"},  # this test's subject
    }
    with Machine(spec) as vm:
        vm.wait_ready(READY_TIMEOUT)
        assert _until(services.fleet, lambda n: True, READY_TIMEOUT), "the node did not register"
        request_json("PUT", f"{services.fleet}/v1/pools/esp", pool)
        failed = _until(services.fleet, lambda n: n.get("failure"), FAILURE_TIMEOUT)
        # Rounds after the failure report what the node runs and has staged, as it is.
        time.sleep(15.0)
        after = _node(services.fleet)
        client = NodeClient(
            f"https://127.0.0.1:{vm.host_port(AGENT_PORT)}",
            services.pki / "ca.crt",
            services.pki / "clients/esp-admin.crt",
            services.pki / "clients/esp-admin.key",
        )
        status = client.request("GET", "/v1/status")
        records = client.request("GET", "/v1/audit")
        vm.stop()
        console = vm.console_log.read_text(errors="replace")
    (tmp_path / "console.log").write_text(console)
    tail = "\n".join(console.splitlines()[-40:])

    assert failed is not None and failed.get("failure"), f"no failure reported:\n{tail}"
    failure = failed["failure"]
    assert (failure["step"], failure["version"]) == ("boot-entries", NEW_KERNEL_VERSION), failure
    resource = failure["resource"]
    assert re.fullmatch(r"ESP \(/[\w/.-]+\)", resource or ""), failure
    reason = re.fullmatch(
        re.escape(resource) + r" has (\d+ bytes|\d+ MB) free, the new kernel needs (\d+) MB",
        failure["reason"],
    )
    assert reason is not None and int(reason[2]) > 1, failure
    assert filled > 0
    # Nothing half-staged: the node runs v1 and reports nothing staged.
    assert after is not None and (after["current"], after["staged"]) == (v1.version, None), after
    deployments = status.get("deployments") or []
    assert [d["checksum"] for d in deployments] == [v1.commit], deployments
    assert all(d["booted"] for d in deployments), deployments
    entries = records.get("records", records) if isinstance(records, dict) else records
    audited = [r for r in entries if r.get("what") == "update: boot-entries failed"]
    assert len(audited) >= 1, entries[-5:]
    assert audited[0]["params"]["resource"] == resource
    assert audited[0]["params"]["undeployed"] == [new_kernel]
    assert f"boot-entries of {NEW_KERNEL_VERSION} failed: ESP (" in console
    assert "rebooting into" not in console
    assert (
        len([line for line in console.splitlines() if "atoll-prepare-root: booting" in line]) == 1
    )
    # The disk after the stop: only v1's boot entry on the root partition.
    assert len(boot_entries(disk)) == 1, boot_entries(disk)

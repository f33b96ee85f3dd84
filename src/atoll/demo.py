"""``make demo``: atoll's main job on built-in defaults, step by step.

1. compose the default image v1 and v2 (a few packages more);
2. sign and publish both to a local channel, and measure what a node on v1
   downloads for v2 (the static delta) against a full pull;
3. start the update server and the fleet controller (embedded SQLite store)
   on 127.0.0.1;
4. build a disk of v1 with first-boot user data and boot it under qemu with
   the network restricted: the node provisions itself, and a container runs
   from the preloaded image without any pull; the boot phases are printed;
5. roll v2 across a pool with maxUnavailable 1; one node fails its health
   check, the pool pauses itself and says why; the operator resumes once the
   node is fixed and the pool finishes;
6. print a summary and shut everything down, also on Ctrl-C.

Each step uses only the stages' public Python API (what the ``atoll``
command does). Step 5 uses agents that speak the real fleet protocol through
the node's own client (:mod:`atoll.agent.fleet_client`) from this machine:
the agent daemon inside the image does not run the rollout yet, and the
demo says so rather than pretend. All files go under ``build/demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atoll.agent.fleet_client import Backoff, FleetClient, request_json
from atoll.agent.updates import pull_verified
from atoll.agent.verify import load_trusted_keys
from atoll.boot.runner import BootFailed, BootSpec, Firmware, Machine
from atoll.compose import ComposeResult, compose
from atoll.compose.oci import write_busybox_archive
from atoll.disk import build_disk, plan_disk
from atoll.disk.layout import MIB
from atoll.errors import AtollError, Interrupted
from atoll.fleet.server import FleetService
from atoll.fleet.store import Store
from atoll.progress import Reporter, reporter_for
from atoll.publish.keys import init_keys, load_private_key
from atoll.publish.publish import publish
from atoll.publish.serve import UpdateServer, serve_in_thread, url_of
from atoll.tools import ostree

CHECKOUT = Path(__file__).resolve().parents[2]
EXAMPLES = CHECKOUT / "examples"
NODES = ("node-1", "node-2", "node-3")
BROKEN = "node-2"


@dataclass
class Summary:
    rows: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))

    def render(self) -> str:
        width = max((len(n) for n, _ in self.rows), default=10)
        lines = ["", "atoll demo summary", "-" * (width + 50)]
        lines += [f"{name.ljust(width)}  {value}" for name, value in self.rows]
        lines += ["", *self.notes] if self.notes else []
        return "\n".join(lines)


def _baseline_figures() -> dict[str, object]:
    """The conventional host's figures from the last `make bench`, if there is one."""
    raw = CHECKOUT / "docs" / "benchmarks.json"
    if not raw.exists():
        return {}
    data = json.loads(raw.read_text())
    figures = data.get("results", {}).get("compose", {}).get("figures", {})
    return {**figures, "date": data.get("machine", {}).get("date", "?")}


def step_compose(
    reporter: Reporter, summary: Summary, workdir: Path
) -> tuple[Path, ComposeResult, ComposeResult]:
    write_busybox_archive(
        CHECKOUT / "build/images/busybox.oci.tar", "docker.io/library/busybox:atoll"
    )
    repo = workdir / "repo"
    v1 = compose(EXAMPLES / "minimal.toml", repo, reporter)
    v2 = compose(EXAMPLES / "minimal-v2.toml", repo, reporter)
    summary.add("image v1", f"{v1.ref} {v1.version} {v1.commit[:12]}")
    summary.add("image v2", f"{v2.version} {v2.commit[:12]} (+conntrack)")
    baseline = _baseline_figures()
    packages = f"{v1.packages} packages, {v1.size / 1e6:.0f} MB"
    if baseline:
        packages += (
            f"  vs conventional Debian host {baseline.get('baseline packages')} packages, "
            f"{baseline.get('baseline size (MB)')} MB (make bench, {baseline['date']})"
        )
    summary.add("image size", packages)
    return repo, v1, v2


def step_publish(
    reporter: Reporter, summary: Summary, workdir: Path, repo: Path, v1: str, v2: str
) -> tuple[Path, Path]:
    updates = workdir / "updates"
    shutil.rmtree(updates, ignore_errors=True)
    keys = workdir / "keys"
    if not (keys / "atoll-ed25519.key").exists():
        init_keys(keys)
    key = load_private_key(keys / "atoll-ed25519.key")
    publish(repo, v1, updates, "stable", key, reporter)
    publish(repo, v2, updates, "stable", key, reporter)
    trusted = workdir / "trusted-keys.d"
    trusted.mkdir(exist_ok=True)
    shutil.copy(keys / "atoll-ed25519.pub", trusted / "demo.pub")
    return updates, trusted


def step_download(
    reporter: Reporter,
    summary: Summary,
    workdir: Path,
    server: UpdateServer,
    trusted: Path,
    v1: str,
    v2: str,
) -> None:
    keys = load_trusted_keys((trusted,))
    url = url_of(server)
    node = workdir / "node-repo"
    shutil.rmtree(node, ignore_errors=True)
    ostree.init_repo(node, mode="bare-user")
    with reporter.stage("download", "a node on v1 pulls v2, verified"):
        pull_verified(node, url, v1, keys)
        before = server.counters.bytes_sent
        pull_verified(node, url, v2, keys)
        delta = server.counters.bytes_sent - before
    full = workdir / "node-fresh"
    shutil.rmtree(full, ignore_errors=True)
    ostree.init_repo(full, mode="bare-user")
    with reporter.stage("download", "a fresh node pulls v2 in full"):
        before = server.counters.bytes_sent
        pull_verified(full, url, v2, keys)
        whole = server.counters.bytes_sent - before
    summary.add(
        "upgrade download",
        f"{delta / 1e6:.2f} MB delta vs {whole / 1e6:.1f} MB full pull ({delta / whole:.1%})",
    )
    shutil.rmtree(node, ignore_errors=True)
    shutil.rmtree(full, ignore_errors=True)


def step_boot(
    reporter: Reporter, summary: Summary, workdir: Path, repo: Path, commit: str, fleet_url: str
) -> None:
    user_data = workdir / "node-1.toml"
    user_data.write_text(
        '[node]\nhostname = "node-1"\n\n[time]\nntp = ["time.example.org"]\n\n'
        f'[fleet]\ncontroller = "{fleet_url}"\n'
    )
    image = workdir / "node-1.img"
    with reporter.stage("disk", "v1 with first-boot user data"):
        build_disk(plan_disk(repo, commit, image, size=2048 * MIB), reporter)
    spec = BootSpec(image, firmware=Firmware.DIRECT, user_data=user_data, selftest=True)
    with (
        reporter.stage("boot", "node-1 under qemu, network restricted (TCG: slow)"),
        Machine(spec) as vm,
    ):
        report = vm.wait_ready(300)
        vm.wait_until(lambda c: c.selftest_verdict is not None, 240)
        checks = dict(vm.console.selftest)
    summary.add("boot to ready", f"{report.ready_seconds:.1f} s (qemu start -> ready, TCG)")
    for phase in report.phases:
        shown = f"{phase.seconds:6.1f} s" if phase.seconds is not None else "     -"
        reporter.info(f"  {phase.name:<28} {shown}")
    container = checks.get("container", ("missing", ""))
    summary.add("container without pull", f"{container[0]} {container[1]}".strip())
    summary.add("self-test verdict", checks.get("verdict", ("none", ""))[0])


def step_rollout(reporter: Reporter, summary: Summary, url: str, v1: str, v2: str) -> None:
    stop = threading.Event()
    fixed = threading.Event()
    timeline: list[str] = []
    started = time.monotonic()

    def note(text: str) -> None:
        timeline.append(f"{time.monotonic() - started:5.1f}s {text}")
        reporter.info(text)

    def agent(name: str) -> None:
        client = FleetClient(url, backoff=Backoff(base=0.1, cap=2.0, attempts=20), timeout=10)
        current, staged, failed = v1, None, False
        client.register(name, {"zone": "a" if name != "node-3" else "b"}, current)
        while not stop.is_set():
            healthy = not failed or fixed.is_set()
            if failed and fixed.is_set():
                failed = False
            desired = client.report(
                name, version=current, staged=staged, healthy=healthy, failed=failed
            )
            if desired.may_reboot and desired.version != current and not failed:
                note(f"{name}: rebooting into {desired.version[:12]}")
                time.sleep(1.0)
                if name == BROKEN and not fixed.is_set():
                    note(f"{name}: health check failed after reboot, rolled back to v1")
                    staged, failed = None, True
                    continue
                current, staged = desired.version, None
                note(f"{name}: healthy on {current[:12]}")
                continue
            if desired.stage and staged != desired.version and not failed:
                staged = desired.version
                note(f"{name}: staged {staged[:12]} (download + deploy, no downtime)")
            time.sleep(0.2)

    threads = [threading.Thread(target=agent, args=(n,), daemon=True) for n in NODES]
    for thread in threads:
        thread.start()
    pool = {
        "pool": {"name": "demo", "version": v2, "previous_version": v1},
        "strategy": {"max_unavailable": 1, "failure_budget": 0},
    }
    try:
        with reporter.stage("rollout", "pool demo: v1 -> v2, maxUnavailable 1"):
            time.sleep(1.0)
            request_json("PUT", f"{url}/v1/pools/demo", pool)
            status = _wait_pool(url, lambda s: bool(s.get("paused_reason")), 120)
            why = status["paused_reason"]
            note(f"pool paused itself: {why}")
            summary.add("pool paused because", str(why))
            fixed.set()
            note("operator: fixed node-2, resume")
            request_json("POST", f"{url}/v1/pools/demo/resume", {})
            final = _wait_pool(url, lambda s: s.get("updated") == len(NODES), 180)
            note(f"pool finished: {final.get('updated')}/{len(NODES)} updated")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    summary.add("rollout", f"{len(NODES)} nodes in {time.monotonic() - started:.0f} s")
    summary.notes.append("rollout timeline:\n  " + "\n  ".join(timeline))


def _wait_pool(url: str, condition: object, timeout: float) -> dict[str, object]:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while True:
        status = request_json("GET", f"{url}/v1/pools/demo")["status"]
        assert isinstance(status, dict)
        if condition(status):
            return status
        if time.monotonic() > deadline:
            raise AtollError(f"pool demo: timed out waiting; status {status}")
        time.sleep(0.3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atoll.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=CHECKOUT / "build" / "demo")
    parser.add_argument("--no-vm", action="store_true", help="skip the qemu boot (step 4)")
    parser.add_argument("--json", action="store_true", help="progress as JSON lines")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reporter = reporter_for(json_lines=args.json)
    summary = Summary()
    try:
        with contextlib.ExitStack() as stack:
            with reporter.stage("compose", "v1 and v2 of the default image"):
                repo, v1, v2 = step_compose(reporter, summary, args.workdir)
            with reporter.stage("publish", "sign, channel stable, static delta"):
                updates, trusted = step_publish(
                    reporter, summary, args.workdir, repo, v1.commit, v2.commit
                )
            server = serve_in_thread(updates)
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            db = args.workdir / "fleet.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            fleet = FleetService(Store(db), "127.0.0.1", 0, tick=0.2)
            fleet.start()
            stack.callback(fleet.stop)
            host, port = fleet.address
            fleet_url = f"http://{host}:{port}"
            summary.add("update server", url_of(server))
            summary.add("fleet controller", f"{fleet_url} (sqlite {db})")
            step_download(reporter, summary, args.workdir, server, trusted, v1.commit, v2.commit)
            if args.no_vm:
                summary.notes.append("boot skipped (--no-vm)")
            else:
                step_boot(reporter, summary, args.workdir, repo, v1.commit, fleet_url)
            step_rollout(reporter, summary, fleet_url, v1.commit, v2.commit)
            summary.notes.append(
                "The rollout's agents ran on this machine with the node's own fleet client; "
                "the agent daemon in the image does not drive upgrades yet."
            )
    except KeyboardInterrupt:
        reporter.close()
        print("atoll demo: interrupted; everything it started was stopped")
        return Interrupted.exit_code
    except (AtollError, BootFailed) as e:
        reporter.close()
        print(f"atoll demo: {e}")
        return e.exit_code
    reporter.close()
    print(summary.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make demo``: atoll's main job on built-in defaults, step by step.

Each step uses only the public Python API of a stage, exactly what the
``atoll`` command does, and reports through the same progress reporter. The
demo runs the steps whose stages exist in this tree and says which ones it
skipped, so it always shows the project as it is, never a mock of it.

Everything it starts (servers, VMs) is stopped on the way out, also on
Ctrl-C; all files go under ``build/demo``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from atoll.compose import compose, inspect
from atoll.compose.oci import write_busybox_archive
from atoll.errors import AtollError, Interrupted
from atoll.progress import Reporter, reporter_for

CHECKOUT = Path(__file__).resolve().parents[1].parent
EXAMPLES = CHECKOUT / "examples"


@dataclass
class Summary:
    rows: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))

    def render(self) -> str:
        width = max((len(n) for n, _ in self.rows), default=10)
        lines = ["", "atoll demo summary", "-" * (width + 40)]
        lines += [f"{name.ljust(width)}  {value}" for name, value in self.rows]
        if self.skipped:
            lines.append("")
            lines += [f"skipped: {reason}" for reason in self.skipped]
        return "\n".join(lines)


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def step_compose(workdir: Path, reporter: Reporter, summary: Summary) -> Path:
    """Compose the default image v1 (examples/minimal.toml) into build/demo/repo."""
    write_busybox_archive(
        CHECKOUT / "build/images/busybox.oci.tar", "docker.io/library/busybox:atoll"
    )
    repo = workdir / "repo"
    started = time.monotonic()
    result = compose(EXAMPLES / "minimal.toml", repo, reporter)
    seconds = time.monotonic() - started
    found = inspect(repo, result.ref)
    state = "unchanged, from cache" if result.unchanged else f"composed in {seconds:.0f}s"
    summary.add("image", f"{result.ref} {result.version} ({state})")
    summary.add("commit", result.commit)
    summary.add("kernel", result.kernel)
    summary.add(
        "packages", f"{result.packages} in the image (+{result.packages_removed} only to build)"
    )
    summary.add("size", f"{result.size / 1e6:.0f} MB")
    summary.add("no sshd, no apt/dpkg", "yes" if not _has_forbidden(found.packages) else "NO")
    return repo


def _has_forbidden(packages: list[dict[str, str]]) -> bool:
    names = {p["name"] for p in packages}
    return bool(names & {"openssh-server", "apt", "dpkg", "cloud-init", "initramfs-tools"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atoll.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=CHECKOUT / "build" / "demo")
    parser.add_argument("--json", action="store_true", help="progress as JSON lines")
    args = parser.parse_args(argv)
    os.chdir(CHECKOUT)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reporter = reporter_for(json_lines=args.json)
    summary = Summary()
    try:
        with reporter.stage("compose", "the default image, examples/minimal.toml"):
            step_compose(args.workdir, reporter, summary)
        for stage, what in (
            ("atoll.publish", "signed publishing (publish stage not in this tree yet)"),
            ("atoll.disk", "disk images and VM boots (disk stage not in this tree yet)"),
            ("atoll.fleet", "fleet rollout (fleet stage not in this tree yet)"),
        ):
            if not _have(stage):
                summary.skipped.append(what)
    except KeyboardInterrupt:
        reporter.close()
        print("atoll demo: interrupted; nothing was left running")
        return Interrupted.exit_code
    except AtollError as e:
        reporter.close()
        print(f"atoll demo: {e}")
        return e.exit_code
    reporter.close()
    print(summary.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

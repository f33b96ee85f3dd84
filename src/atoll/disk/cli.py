"""Verbs of the disk stage: ``atoll disk``."""

from __future__ import annotations

import argparse
from pathlib import Path

from atoll.disk.build import DiskFormat, build_disk, plan_disk
from atoll.disk.configdrive import write_config_drive
from atoll.disk.layout import MIB, parse_size
from atoll.progress import reporter_for


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("disk", help="build a bootable GPT disk image from a composed commit")
    p.add_argument("repo", type=Path, help="ostree repository written by atoll compose")
    p.add_argument("ref", help="ref or commit, e.g. atoll/x86_64/minimal")
    p.add_argument("-o", "--output", type=Path, required=True, help="the disk image to write")
    p.add_argument("--size", default="4G", help="disk size (default 4G)")
    p.add_argument(
        "--format", choices=[f.value for f in DiskFormat], default="raw", help="image format"
    )
    p.add_argument("--user-data", type=Path, help="first-boot user data (TOML) to embed")
    p.add_argument(
        "--boot-tries",
        type=int,
        help="systemd-boot boot counting for the new entry (rollback if never blessed)",
    )
    p.add_argument(
        "--previous",
        metavar="REF",
        help="deploy this ref or commit first, so the disk also has it as the rollback entry",
    )
    p.add_argument("--plan", action="store_true", help="print the plan and build nothing")
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    p.set_defaults(handler=_disk)

    p = sub.add_parser(
        "config-drive", help="write first-boot user data to a config drive (ext4, ATOLL-CONFIG)"
    )
    p.add_argument("user_data", type=Path, help="user data (TOML, see docs/boot.md)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the drive image to write")
    p.set_defaults(handler=_config_drive)


def _config_drive(args: argparse.Namespace) -> int:
    write_config_drive(args.user_data, args.output)
    print(args.output)
    return 0


def _disk(args: argparse.Namespace) -> int:
    plan = plan_disk(
        args.repo,
        args.ref,
        args.output,
        size=parse_size(args.size),
        disk_format=DiskFormat(args.format),
        user_data=args.user_data,
        boot_tries=args.boot_tries,
        previous=args.previous,
    )
    reporter = reporter_for(json_lines=args.json)
    try:
        layout = plan.layout
        reporter.info(f"commit {plan.commit[:12]} version {plan.version} kernel {plan.kernel}")
        for part in layout.partitions:
            reporter.info(
                f"partition {part.number} {part.name}: {part.size // MIB} MiB "
                f"at {part.start // MIB} MiB, PARTUUID {part.uuid}"
            )
        reporter.info("kernel arguments: " + " ".join(plan.kernel_arguments))
        if args.plan:
            return 0
        result = build_disk(plan, reporter)
        reporter.info(f"{result.output}: default entry {result.default_entry.id}")
        reporter.result(
            {
                "output": str(result.output),
                "format": result.format.value,
                "commit": result.commit,
                "version": result.version,
                "root_partuuid": layout.root.uuid,
                "default_entry": result.default_entry.id,
                "options": result.default_entry.options,
                "root_bytes_used": result.root_bytes_used,
            }
        )
    finally:
        reporter.close()
    return 0

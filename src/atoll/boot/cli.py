"""``atoll boot``: boot a disk under qemu, wait until it is ready, show the measured boot.

::

    atoll boot IMG [--firmware uefi|direct] [--user-data node.toml] [--timeout 120]
                   [--forward PORT]... [--json] [--keep]
    atoll boot IMG --stop

Everything is done by :class:`atoll.boot.runner.Machine`; this module maps
flags to a :class:`~atoll.boot.runner.BootSpec` and prints the
:class:`~atoll.boot.report.BootReport` (a table, or JSON with ``--json``).
With ``--keep`` the VM stays up, described by ``state.json`` in its state
directory (``$XDG_RUNTIME_DIR/atoll/vm/<image>`` or ``build/vm/<image>``);
``--stop`` powers it off through QMP. Ctrl-C while waiting stops the VM too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from atoll.boot.report import BootReport
from atoll.boot.runner import (
    BootFailed,
    BootSpec,
    Firmware,
    Machine,
    SystemClock,
    read_state,
    state_dir_for,
    stop_qemu,
)
from atoll.errors import InputError
from atoll.tools import qemu


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("boot", help="boot a disk image under qemu and measure the boot")
    p.add_argument("image", type=Path, metavar="IMG", help="disk image (raw or qcow2)")
    p.add_argument(
        "--firmware",
        type=Firmware,
        choices=list(Firmware),
        default=Firmware.UEFI,
        help="uefi: OVMF and the disk's bootloader; direct: qemu -kernel with the "
        "default entry's kernel and command line (fast tests)",
    )
    p.add_argument("--user-data", type=Path, help="first-boot TOML, passed via fw_cfg")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for ready")
    p.add_argument(
        "--forward",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="forward this guest TCP port from a free port on 127.0.0.1 (repeatable)",
    )
    p.add_argument("--accel", type=qemu.AccelChoice, choices=list(qemu.AccelChoice), default=None)
    p.add_argument("--memory", type=int, default=1024, help="MiB of guest memory")
    p.add_argument("--snapshot", action="store_true", help="throw the VM's disk writes away")
    p.add_argument("--json", action="store_true", help="print the boot report as JSON")
    p.add_argument("--keep", action="store_true", help="leave the VM running when ready")
    p.add_argument("--stop", action="store_true", help="stop the VM left running by --keep")
    p.set_defaults(handler=_boot)


def _boot(args: argparse.Namespace) -> int:
    image: Path = args.image
    state_dir = state_dir_for(image)
    if args.stop:
        return _stop(state_dir, bool(args.json))
    if (state_dir / "state.json").exists():
        state = read_state(state_dir)
        if qemu.process_alive(state["pid"]):
            raise InputError(
                f"{image}: already running (pid {state['pid']})",
                hint=f"atoll boot {image} --stop",
            )
    if args.timeout <= 0:
        raise InputError(f"--timeout {args.timeout}: must be positive")
    spec = BootSpec(
        image=image,
        firmware=args.firmware,
        user_data=args.user_data,
        guest_ports=tuple(args.forward),
        snapshot=bool(args.snapshot),
        state_dir=state_dir,
        memory_mib=args.memory,
        accel=args.accel,
    )
    out = Console(stderr=bool(args.json))
    machine = Machine(spec, keep=bool(args.keep))
    with machine:
        try:
            # The systemd-analyze block follows the ready marker by a few seconds.
            report = machine.wait_ready(args.timeout, then_analysis=20.0)
        except BootFailed as e:
            _show(e.report, bool(args.json), out)
            raise
        _show(report, bool(args.json), out)
        if args.keep:
            ports = ", ".join(f"127.0.0.1:{h} -> guest {g}" for g, h in machine.ports.items())
            out.print(
                f"VM running: pid {machine.pid}, console {machine.console_log}"
                + (f", ports {ports}" if ports else "")
                + f"\nstop it with: atoll boot {image} --stop",
                highlight=False,
            )
    return 0


def _show(report: BootReport, as_json: bool, out: Console) -> None:
    if as_json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        report.render(out)


def _stop(state_dir: Path, as_json: bool) -> int:
    state = read_state(state_dir)
    how = stop_qemu(state["pid"], Path(state["qmp"]), 30.0, SystemClock())
    (state_dir / "state.json").unlink(missing_ok=True)
    if as_json:
        print(json.dumps({"pid": state["pid"], "stopped": how}))
    else:
        print(f"VM pid {state['pid']} ({state['image']}): {how}")
    return 0

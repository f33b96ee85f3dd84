"""PNG plots for docs/benchmarks.md, drawn from the benchmarks' stored results.

Plots are made from the results dict that ``atoll.bench.page`` keeps in
docs/benchmarks.json, not inside the benchmarks, so a partial run
(``--only agent``) still redraws every stage's plot from its last results
(the boot benchmark takes ten minutes of both CPUs; its plot must not need a
rerun). Each plot reads only plain data (figures and ``"series"``), imports
no stage, and is skipped when its stage has no data yet.

matplotlib (the ``dev`` extra) is imported lazily with the non-interactive
Agg backend, so the rest of the toolkit never needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

IMG = "img"  # under docs/; the page links plots relative to itself
PHASES = ("kernel", "initrd", "userspace")
COLOURS = {
    "kernel": "#4c72b0",
    "initrd": "#dd8452",
    "userspace": "#55a868",
    "rest": "#c0c0c0",
    "unknown": "#e8e8e8",
}


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - heavy, and only `make bench` draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    # No software version / date in the file: the PNG changes only when the data does.
    fig.savefig(out, dpi=100, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return out


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def boot_phases(figures: Mapping[str, Any], out: Path) -> Path:
    """Stacked bars (kernel, initrd, userspace, rest until ready): atoll vs the baseline."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.6))
    labels: list[str] = []
    shown: set[str] = set()
    for row, image in enumerate(("atoll", "baseline")):
        ready = _number(figures.get(f"{image} boot to ready, median (s)"))
        if ready is None:
            raise ValueError(f"boot figures: no '{image} boot to ready, median (s)'")
        left = 0.0
        for phase in PHASES:
            took = _number(figures.get(f"{image} {phase} (systemd-analyze, s)"))
            if took is None:
                continue
            label = phase if phase not in shown else None
            ax.barh(row, took, left=left, color=COLOURS[phase], label=label)
            shown.add(phase)
            left += took
        rest = max(0.0, ready - left)
        if rest > 0:
            name = "until ready marker" if left else "to ready (phases not reported)"
            colour = COLOURS["rest"] if left else COLOURS["unknown"]
            ax.barh(row, rest, left=left, color=colour, label=name, hatch="//")
        ax.text(max(ready, left), row, f" {ready:.1f} s", va="center")
        labels.append(image)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from power-on (median, qemu TCG)")
    ax.set_title("Boot to ready: atoll vs conventional Debian host")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.margins(x=0.12)
    return _save(fig, out)


def rollout_progress(series: Mapping[str, Any], out: Path) -> Path:
    """Nodes per version over time during the rollout, with the ideal wave staircase."""
    t = [float(x) for x in series["t"]]
    new = [int(x) for x in series["updated"]]
    nodes = int(series["nodes"])
    max_unavailable = int(series["max_unavailable"])
    reboot = float(series["reboot_seconds"])
    if not t or len(t) != len(new):
        raise ValueError("rollout series: 't' and 'updated' must be non-empty and of equal length")
    old = [nodes - n for n in new]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, old, label=f"on {series.get('from', 'old')}", color="#dd8452")
    ax.plot(t, new, label=f"on {series.get('to', 'new')}", color="#4c72b0")
    if "unavailable" in series:
        ax.plot(t, series["unavailable"], label="rebooting / unavailable", color="#c44e52", lw=0.8)
    waves = -(-nodes // max_unavailable)
    steps_t = [0.0]
    steps_n = [0]
    for wave in range(1, waves + 1):
        steps_t += [wave * reboot, wave * reboot]
        steps_n += [steps_n[-1], min(nodes, wave * max_unavailable)]
    ax.plot(steps_t, steps_n, "--", color="grey", label="ideal (waves x reboot time)")
    ax.set_xlabel("seconds since the pool was applied")
    ax.set_ylabel("nodes")
    ax.set_title(f"Rollout of {nodes} nodes, maxUnavailable {max_unavailable}")
    ax.legend(loc="center right", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def latency_distribution(series: Mapping[str, Any], out: Path) -> Path:
    """Cumulative distribution of request latencies (one line per operation, log x)."""
    quantiles = [float(q) for q in series["quantiles"]]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = 0
    for name, values in series.items():
        if name == "quantiles":
            continue
        if len(values) != len(quantiles):
            raise ValueError(f"latency series {name!r}: {len(values)} values, not {len(quantiles)}")
        ax.plot([max(float(v), 0.01) for v in values], quantiles, label=name)
        drawn += 1
    if not drawn:
        raise ValueError("latency series: no operation")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("percentile")
    ax.axhline(99, color="grey", lw=0.6, ls=":")
    ax.set_title("Agent API latency over mutual TLS on loopback")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out)


def ready_distributions(series: Mapping[str, Any], out: Path) -> Path:
    """Cumulative distribution of qemu start to Node Ready, one line per kind and N
    (colour: the kind; line style: how many nodes were started at once)."""
    colours = {"atoll": "#4c72b0", "conventional": "#dd8452"}
    styles = ("-", "--", ":", "-.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    drawn = 0
    for row, (nodes, kinds) in enumerate(sorted(series.items(), key=lambda item: int(item[0]))):
        for kind, values in kinds.items():
            seconds = sorted(float(v) for v in values)
            if not seconds:
                continue
            shares = [100 * (i + 1) / len(seconds) for i in range(len(seconds))]
            label = f"{kind}, {'1 node' if nodes == '1' else nodes + ' at once'}"
            ax.step(
                [0.0, *seconds],
                [0.0, *shares],
                where="post",
                color=colours.get(kind, "grey"),
                ls=styles[row % len(styles)],
                label=label,
            )
            drawn += 1
    if not drawn:
        raise ValueError("ready series: no times")
    ax.set_xlabel("seconds from qemu start to Node Ready (qemu TCG)")
    ax.set_ylabel("% of nodes Ready")
    ax.set_title("Node Ready: atoll vs conventional Debian host with the same kubelet")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    return _save(fig, out)


def _boot(data: Mapping[str, Any], img: Path) -> list[Path]:
    figures = data.get("figures") or {}
    if "atoll boot to ready, median (s)" not in figures:
        return []
    return [boot_phases(figures, img / "boot-phases.png")]


def _ready(data: Mapping[str, Any], img: Path) -> list[Path]:
    seconds = (data.get("series") or {}).get("ready seconds")
    return [ready_distributions(seconds, img / "ready-distribution.png")] if seconds else []


def _fleet(data: Mapping[str, Any], img: Path) -> list[Path]:
    timeline = (data.get("series") or {}).get("rollout timeline")
    return [rollout_progress(timeline, img / "fleet-rollout.png")] if timeline else []


def _agent(data: Mapping[str, Any], img: Path) -> list[Path]:
    latency = (data.get("series") or {}).get("latency quantiles (ms)")
    return [latency_distribution(latency, img / "agent-latency.png")] if latency else []


PLOTTERS: dict[str, Callable[[Mapping[str, Any], Path], list[Path]]] = {
    "boot": _boot,
    "ready": _ready,
    "fleet": _fleet,
    "agent": _agent,
}


def attach(results: dict[str, Any], docs: Path) -> dict[str, Any]:
    """Draw every stage's plots under ``docs/img`` and list them in its ``"plots"``.

    A plot that cannot be drawn is reported in the stage's ``"plot_error"``
    (shown on the page); it never hides the figures.
    """
    for stage, plot in PLOTTERS.items():
        data = results.get(stage)
        if not isinstance(data, dict) or "missing" in data:
            continue
        data.pop("plot_error", None)
        try:
            paths = plot(data, docs / IMG)
        except Exception as e:  # reported on the page, not hidden
            data["plot_error"] = f"{type(e).__name__}: {e}"
            continue
        if paths:
            data["plots"] = [path.relative_to(docs).as_posix() for path in paths]
    return results

"""``pool.toml``: the operator's declaration of a pool, validated into a :class:`PoolSpec`.

The same dictionary shape is used on the wire (``PUT /v1/pools/{name}``) and in
the store, so there is one validator and every error names its source (file or
URL) and key::

    [pool]
    name = "web"
    version = "2.0"                 # target version: printable ASCII, at most 128 characters
    previous_version = "1.0"        # optional; defaults to the previous target
    [pool.selector]                 # nodes whose labels match all of these
    role = "web"
    [strategy]
    partition = 0                   # count or "N%"
    max_unavailable = "20%"         # count or "N%"
    paused = false
    min_ready_seconds = 0
    canary = 0
    priority_label = "atoll.io/priority"
    scatter_label = "zone"
    failure_budget = 1              # count or "N%"
    reboot_timeout_seconds = 900    # default 900; 0 (explicit) = wait forever for a granted reboot
    canary_soak_seconds = 0         # > 0: canaries release themselves after this soak
    failure_window_seconds = 0      # > 0: only failures this recent count to the budget
    on_step_failure = "fail"        # or "retry": a failed update step retries with backoff
    max_step_retries = 3            # "retry": failed after this many retries of one version
    reboot = "auto"                 # default; "full": always a full reboot
    [strategy.maintenance_window]   # optional; reboots only inside it
    days = ["sat", "sun"]
    start = "02:00"                 # local time HH:MM
    length_minutes = 180
    timezone = "Europe/Paris"       # IANA name, default UTC
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atoll.errors import InputError
from atoll.fleet.rollout import (
    DAYS,
    MAX_STEP_RETRIES,
    REBOOT_TIMEOUT_SECONDS,
    MaintenanceWindow,
    OnStepFailure,
    PoolSpec,
    Quantity,
)
from atoll.wire.fleet import ProtocolError, RebootPolicy, check_version

_POOL_KEYS = {"name", "version", "previous_version", "selector"}
_STRATEGY_KEYS = {
    "partition",
    "max_unavailable",
    "paused",
    "min_ready_seconds",
    "canary",
    "priority_label",
    "scatter_label",
    "failure_budget",
    "reboot_timeout_seconds",
    "maintenance_window",
    "canary_soak_seconds",
    "failure_window_seconds",
    "on_step_failure",
    "max_step_retries",
    "reboot",
}
_WINDOW_KEYS = {"days", "start", "length_minutes", "timezone"}
_HHMM = re.compile(r"^(\d{2}):(\d{2})$")


def _window(raw: object, source: str) -> MaintenanceWindow | None:
    key = f"{source}: strategy.maintenance_window"
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InputError(f"{key}: expected a table, got {raw!r}")
    for name in raw:
        if name not in _WINDOW_KEYS:
            raise InputError(f"{key}.{name}: unknown key")
    days = raw.get("days")
    if (
        not isinstance(days, list)
        or not days
        or not all(isinstance(d, str) and d in DAYS for d in days)
    ):
        raise InputError(f"{key}.days: expected a non-empty list of {list(DAYS)}, got {days!r}")
    start = raw.get("start")
    match = _HHMM.match(start) if isinstance(start, str) else None
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise InputError(f"{key}.start: expected local time 'HH:MM', got {start!r}")
    length = raw.get("length_minutes")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= 7 * 24 * 60:
        raise InputError(f"{key}.length_minutes: expected 1..10080, got {length!r}")
    timezone = raw.get("timezone", "UTC")
    try:
        if not isinstance(timezone, str):
            raise ValueError(timezone)
        ZoneInfo(timezone)
    except (ValueError, ZoneInfoNotFoundError) as e:
        raise InputError(f"{key}.timezone: unknown time zone {timezone!r}") from e
    return MaintenanceWindow(
        days=tuple(days),
        start_minute=int(match.group(1)) * 60 + int(match.group(2)),
        length_minutes=length,
        timezone=timezone,
    )


def _str(raw: object, source: str, *, optional: bool = False) -> str | None:
    if raw is None and optional:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise InputError(f"{source}: expected a non-empty string, got {raw!r}")
    return raw


def _version(raw: object, source: str, *, optional: bool = False) -> str | None:
    """A version by the protocol's rule (:data:`atoll.wire.fleet.VERSION`)."""
    if raw is None and optional:
        return None
    try:
        return check_version(source, raw)
    except ProtocolError as e:
        raise InputError(str(e)) from e


def _quantity(table: dict[str, Any], key: str, default: Quantity, source: str) -> Quantity:
    if key not in table:
        return default
    try:
        return Quantity.parse(table[key], source=f"{source}: strategy.{key}")
    except ValueError as e:
        raise InputError(str(e)) from e


def _seconds(table: dict[str, Any], key: str, source: str, default: float = 0.0) -> float:
    raw = table.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise InputError(f"{source}: strategy.{key}: expected seconds >= 0, got {raw!r}")
    return float(raw)


def _on_step_failure(table: dict[str, Any], source: str) -> OnStepFailure:
    raw = table.get("on_step_failure", OnStepFailure.FAIL.value)
    choices = [c.value for c in OnStepFailure]
    if raw not in choices:
        raise InputError(
            f"{source}: strategy.on_step_failure: expected one of {choices}, got {raw!r}"
        )
    return OnStepFailure(raw)


def _reboot(table: dict[str, Any], source: str) -> RebootPolicy:
    raw = table.get("reboot", RebootPolicy.AUTO.value)
    choices = [p.value for p in RebootPolicy]
    if raw not in choices:
        raise InputError(f"{source}: strategy.reboot: expected one of {choices}, got {raw!r}")
    return RebootPolicy(raw)


def _max_step_retries(table: dict[str, Any], source: str) -> int:
    raw = table.get("max_step_retries", MAX_STEP_RETRIES)
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 100:
        raise InputError(f"{source}: strategy.max_step_retries: expected 0..100, got {raw!r}")
    return raw


def spec_from_dict(data: dict[str, Any], source: str) -> PoolSpec:
    """Validate the ``{"pool": {...}, "strategy": {...}}`` shape; ``source`` names its origin."""
    unknown_top = set(data) - {"pool", "strategy"}
    if unknown_top:
        raise InputError(f"{source}: unknown table(s) {sorted(unknown_top)}")
    pool = data.get("pool")
    if not isinstance(pool, dict):
        raise InputError(f"{source}: missing [pool] table")
    strategy = data.get("strategy", {})
    if not isinstance(strategy, dict):
        raise InputError(f"{source}: [strategy] must be a table")
    for table, allowed, prefix in (
        (pool, _POOL_KEYS, "pool"),
        (strategy, _STRATEGY_KEYS, "strategy"),
    ):
        for key in table:
            if key not in allowed:
                raise InputError(f"{source}: unknown key {prefix}.{key}")
    name = _str(pool.get("name"), f"{source}: pool.name")
    version = _version(pool.get("version"), f"{source}: pool.version")
    previous = _version(
        pool.get("previous_version"), f"{source}: pool.previous_version", optional=True
    )
    selector = pool.get("selector", {})
    if not isinstance(selector, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in selector.items()
    ):
        raise InputError(f"{source}: pool.selector must be a table of strings, got {selector!r}")
    paused = strategy.get("paused", False)
    if not isinstance(paused, bool):
        raise InputError(f"{source}: strategy.paused: expected true/false, got {paused!r}")
    min_ready = _seconds(strategy, "min_ready_seconds", source)
    reboot_timeout = _seconds(
        strategy, "reboot_timeout_seconds", source, default=REBOOT_TIMEOUT_SECONDS
    )
    canary = strategy.get("canary", 0)
    if isinstance(canary, bool) or not isinstance(canary, int) or canary < 0:
        raise InputError(f"{source}: strategy.canary: expected a count >= 0, got {canary!r}")
    priority = _str(
        strategy.get("priority_label"), f"{source}: strategy.priority_label", optional=True
    )
    scatter = _str(
        strategy.get("scatter_label"), f"{source}: strategy.scatter_label", optional=True
    )
    assert name is not None and version is not None  # never None without optional
    return PoolSpec(
        name=name,
        target_version=version,
        previous_version=previous,
        selector=dict(selector),
        partition=_quantity(strategy, "partition", Quantity(0), source),
        max_unavailable=_quantity(strategy, "max_unavailable", Quantity(1), source),
        paused=paused,
        min_ready_seconds=min_ready,
        reboot_timeout_seconds=reboot_timeout,
        canary=canary,
        priority_label=priority,
        scatter_label=scatter,
        failure_budget=_quantity(strategy, "failure_budget", Quantity(0), source),
        canary_soak_seconds=_seconds(strategy, "canary_soak_seconds", source),
        failure_window_seconds=_seconds(strategy, "failure_window_seconds", source),
        maintenance_window=_window(strategy.get("maintenance_window"), source),
        on_step_failure=_on_step_failure(strategy, source),
        max_step_retries=_max_step_retries(strategy, source),
        reboot=_reboot(strategy, source),
    )


def spec_to_dict(spec: PoolSpec) -> dict[str, Any]:
    """The inverse of :func:`spec_from_dict` (JSON- and TOML-safe)."""
    pool: dict[str, Any] = {
        "name": spec.name,
        "version": spec.target_version,
        "selector": dict(spec.selector),
    }
    if spec.previous_version is not None:
        pool["previous_version"] = spec.previous_version
    strategy: dict[str, Any] = {
        "partition": str(spec.partition),
        "max_unavailable": str(spec.max_unavailable),
        "paused": spec.paused,
        "min_ready_seconds": spec.min_ready_seconds,
        "canary": spec.canary,
        "failure_budget": str(spec.failure_budget),
        "reboot_timeout_seconds": spec.reboot_timeout_seconds,
        "canary_soak_seconds": spec.canary_soak_seconds,
        "failure_window_seconds": spec.failure_window_seconds,
        "on_step_failure": spec.on_step_failure.value,
        "max_step_retries": spec.max_step_retries,
        "reboot": spec.reboot.value,
    }
    if spec.priority_label is not None:
        strategy["priority_label"] = spec.priority_label
    if spec.scatter_label is not None:
        strategy["scatter_label"] = spec.scatter_label
    window = spec.maintenance_window
    if window is not None:
        hours, minutes = divmod(window.start_minute, 60)
        strategy["maintenance_window"] = {
            "days": list(window.days),
            "start": f"{hours:02d}:{minutes:02d}",
            "length_minutes": window.length_minutes,
            "timezone": window.timezone,
        }
    return {"pool": pool, "strategy": strategy}


def load_pool_file(path: Path) -> PoolSpec:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML: {e}") from e
    return spec_from_dict(data, str(path))

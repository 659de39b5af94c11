"""The SLO and schedule model of the rules config: what ``slos``, ``slo_alerts`` and ``schedules`` in
alerts/config.yaml (or a user's override) may hold, validated once into frozen dataclasses.

Every refusal is a ``MixinError`` naming the SLO (or schedule) and the field: an unknown kind, an
objective outside (0, 100), a latency threshold that is not a bound of the histogram it reads (the bounds
come from the config's ``duration_buckets`` / ``queue_wait_buckets``, which must match the exporter's
``--duration-buckets`` / ``--queue-wait-buckets``), a duplicate name, a bad duration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from exporter.mixin.config import MixinError
from exporter.options import DEFAULT_DURATION_BUCKETS, DEFAULT_QUEUE_WAIT_BUCKETS

# kind -> (fields it requires, fields it allows besides the common ones)
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "success": ((), ("task_name", "queue")),
    "queue_latency": (("queue", "threshold_seconds"), ("task_name", "queue", "threshold_seconds")),
    "run_time": (("task_name", "threshold_seconds"), ("task_name", "queue", "threshold_seconds")),
}
_COMMON = ("name", "kind", "objective", "period", "min_events")
_DURATION = re.compile(r"^(?:\d+[smhdw])+$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
# What a latency SLO reads, and the exporter flag and config key that set the histogram's bounds.
HISTOGRAMS = {
    "queue_latency": ("celery_task_queue_wait_seconds", "--queue-wait-buckets", "queue_wait_buckets"),
    "run_time": ("celery_task_duration_seconds", "--duration-buckets", "duration_buckets"),
}


def _label_value(value: Any) -> bool:
    """A name or glob that fits in a PromQL string as is (no quote, backslash or line break)."""
    return isinstance(value, str) and bool(value) and not any(c in value for c in '"\\\n')


def seconds(text: str) -> int:
    """Seconds in a Prometheus duration such as ``30m`` or ``1d12h``."""
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", text))


def _duration(where: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not _DURATION.match(value) or seconds(value) <= 0:
        raise MixinError(f"{where}: {field}: expected a duration such as 30m, 6h or 30d, got {value!r}")
    return value


@dataclass(frozen=True)
class BurnAlert:
    """One multi-window burn-rate alert: fires when both windows burn faster than ``burn_rate``."""

    severity: str
    long: str
    short: str
    burn_rate: float
    hold: str


@dataclass(frozen=True)
class Slo:
    name: str
    kind: str
    objective: Decimal  # percent, in (0, 100)
    period: str
    task_name: str | None
    queue: str | None
    threshold: float | None
    min_events: int

    @property
    def budget(self) -> Decimal:
        """The error budget as a ratio: 1 - objective."""
        return (Decimal(100) - self.objective) / 100


@dataclass(frozen=True)
class Schedule:
    task_name: str
    every: str
    grace: str


def parse_burn_alerts(config: dict[str, Any]) -> list[BurnAlert]:
    raw = config.get("slo_alerts")
    if not isinstance(raw, list) or not raw:
        raise MixinError("slo_alerts: expected a list of {severity, long, short, burn_rate, for}")
    out = []
    for i, item in enumerate(raw):
        where = f"slo_alerts[{i}]"
        if not isinstance(item, dict) or set(item) != {"severity", "long", "short", "burn_rate", "for"}:
            raise MixinError(f"{where}: expected exactly the keys severity, long, short, burn_rate, for")
        if item["severity"] not in ("critical", "warning", "info"):
            raise MixinError(f"{where}: severity: expected critical, warning or info")
        rate = item["burn_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
            raise MixinError(f"{where}: burn_rate: expected a positive number, got {rate!r}")
        long, short = _duration(where, "long", item["long"]), _duration(where, "short", item["short"])
        if seconds(short) >= seconds(long):
            raise MixinError(f"{where}: short: {short} must be shorter than long ({long})")
        hold = item["for"]
        if hold not in ("0s", 0) and not (isinstance(hold, str) and _DURATION.match(hold)):
            raise MixinError(f"{where}: for: expected a duration, got {hold!r}")
        out.append(BurnAlert(item["severity"], long, short, float(rate), str(hold)))
    return out


def bucket_bounds(config: dict[str, Any], kind: str) -> tuple[float, ...]:
    key = HISTOGRAMS[kind][2]
    value = config.get(key)
    if value is None:
        return DEFAULT_QUEUE_WAIT_BUCKETS if kind == "queue_latency" else DEFAULT_DURATION_BUCKETS
    if not isinstance(value, list) or not value or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in value):
        raise MixinError(f"{key}: expected a list of bucket bounds in seconds (or null for the default)")
    return tuple(float(b) for b in value)


def _slo(config: dict[str, Any], i: int, item: Any, defaults: dict[str, Any]) -> Slo:
    if not isinstance(item, dict):
        raise MixinError(f"slos[{i}]: expected a mapping with name, kind and objective")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise MixinError(f"slos[{i}]: name: expected a name of letters, digits and . _ : -, got {name!r}")
    where = f"SLO {name!r}"
    kind = item.get("kind")
    if kind not in KINDS:
        raise MixinError(f"{where}: kind: {kind!r} is not one of {', '.join(KINDS)}")
    required, allowed = KINDS[kind]
    unknown = sorted(set(item) - {*_COMMON, *allowed}, key=str)
    if unknown:
        raise MixinError(f"{where}: {unknown[0]}: not a field of a {kind} SLO "
                         f"(fields: {', '.join((*_COMMON, *allowed))})")
    for key in ("objective", *required):
        if item.get(key) is None:
            raise MixinError(f"{where}: {key}: required for a {kind} SLO")
    objective = item["objective"]
    if isinstance(objective, bool) or not isinstance(objective, (int, float)) or not 0 < objective < 100:
        raise MixinError(f"{where}: objective: expected a percentage strictly between 0 and 100 "
                         f"(e.g. 99.5), got {objective!r}")
    for key in ("task_name", "queue"):
        if key in item and not _label_value(item[key]):
            raise MixinError(f"{where}: {key}: expected a name or a glob such as \"payments.*\"")
    threshold = None
    if kind in HISTOGRAMS:
        threshold = item["threshold_seconds"]
        metric, flag, key = HISTOGRAMS[kind]
        bounds = bucket_bounds(config, kind)
        number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not number or float(threshold) not in bounds:
            shown = ", ".join(f"{b:g}" for b in bounds)
            raise MixinError(f"{where}: threshold_seconds: {threshold!r} is not a bucket bound of {metric} "
                             f"({shown}); pick one, or add it to the exporter's {flag} and to this "
                             f"config's {key}")
        threshold = float(threshold)
    min_events = item.get("min_events", defaults["slo_min_events"])
    if isinstance(min_events, bool) or not isinstance(min_events, int) or min_events < 0:
        raise MixinError(f"{where}: min_events: expected a whole number >= 0, got {min_events!r}")
    return Slo(name, kind, Decimal(str(objective)), _duration(where, "period", item.get("period", "30d")),
               item.get("task_name"), item.get("queue"), threshold, min_events)


def parse_slos(config: dict[str, Any]) -> list[Slo]:
    raw = config.get("slos") or []
    if not isinstance(raw, list):
        raise MixinError("slos: expected a list of SLOs (see the examples in alerts/config.yaml)")
    slos: list[Slo] = []
    for i, item in enumerate(raw):
        slo = _slo(config, i, item, config)
        if any(s.name == slo.name for s in slos):
            raise MixinError(f"SLO {slo.name!r}: name: declared twice (names must be unique)")
        slos.append(slo)
    return slos


def parse_schedules(config: dict[str, Any]) -> list[Schedule]:
    _duration("schedule_for", "value", config.get("schedule_for"))
    raw = config.get("schedules") or []
    if not isinstance(raw, list):
        raise MixinError("schedules: expected a list of {task_name, every, grace}")
    out: list[Schedule] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not _label_value(item.get("task_name")):
            raise MixinError(f"schedules[{i}]: task_name: required (the periodic task's name)")
        where = f"schedule {item['task_name']!r}"
        unknown = sorted(set(item) - {"task_name", "every", "grace"}, key=str)
        if unknown:
            raise MixinError(f"{where}: {unknown[0]}: not a field of a schedule (task_name, every, grace)")
        every = _duration(where, "every", item.get("every"))
        grace = item.get("grace", "0s")
        if grace != "0s":
            grace = _duration(where, "grace", grace)
        if any(s.task_name == item["task_name"] for s in out):
            raise MixinError(f"{where}: task_name: declared twice")
        out.append(Schedule(item["task_name"], every, grace))
    return out

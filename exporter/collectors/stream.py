"""Self-metrics of the exporter's event pipeline: events by type, refusals by reason, broker connection,
the task table, and the cardinality guards. Also ``celery_exporter_build_info``.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from exporter import __version__
from exporter.collectors.base import MetricSpec, Sources, SpecCollector
from exporter.events.decode import FUTURE_SKEW
from exporter.state import Snapshot
from exporter.status import StreamStatus

BUILD_SPEC = MetricSpec(
    "celery_exporter_build_info", "gauge", "Version of the exporter and of what it runs on (always 1).",
    ("version", "python_version", "celery_version"),
)
EVENTS_SPEC = MetricSpec(
    "celery_exporter_events_total", "counter", "Celery events applied, by event type.", ("type",)
)
INVALID_SPEC = MetricSpec(
    "celery_exporter_events_invalid_total", "counter",
    "Event messages or events refused (undecodable, not JSON, missing fields, bad timestamps), by reason.",
    ("reason",),
)
CONNECTED_SPEC = MetricSpec(
    "celery_exporter_broker_connected", "gauge", "1 while the event stream is connected to the broker."
)
RECONNECTS_SPEC = MetricSpec(
    "celery_exporter_broker_reconnects_total", "counter",
    "Times the event stream re-established its broker connection after losing it.",
)
LAST_EVENT_SPEC = MetricSpec(
    "celery_exporter_last_event_timestamp_seconds", "gauge",
    "Timestamp of the newest event applied (the sender's clock, utcoffset-adjusted).",
)
TRACKED_SPEC = MetricSpec(
    "celery_exporter_tracked_tasks", "gauge", "Tasks held in the task table that pairs events by uuid."
)
EVICTED_SPEC = MetricSpec(
    "celery_exporter_tracked_tasks_evicted_total", "counter",
    "Tasks dropped from the task table before finishing, by reason (capacity: LRU; age: task_max_age).",
    ("reason",),
)
OVERFLOW_SPEC = MetricSpec(
    "celery_exporter_label_overflow_total", "counter",
    'Events whose task_name, exception, queue or worker was folded into "__overflow__" (or, for '
    "workers, not tracked) because a cardinality cap was reached, by label; label=\"series\" counts "
    "new per-task series folded into task_name=queue=\"__overflow__\" past --max-series.",
    ("label",),
)
IGNORED_SPEC = MetricSpec(
    "celery_exporter_events_ignored_total", "counter",
    "Task events applied that changed nothing, by reason: duplicate (a terminal or start event repeated, "
    "e.g. an AMQP redelivery), after_terminal (a task-started later than its task's end, with no new "
    "delivery), no_uuid.",
    ("reason",),
)
UNKNOWN_SPEC = MetricSpec(
    "celery_exporter_unknown_tasks_total", "counter",
    'Tasks counted under task_name="unknown": the exporter never saw a named event (task-sent, '
    "task-received) for them, e.g. tasks already running when it started that the in-flight inventory did "
    "not name.",
)
CLAMPED_SPEC = MetricSpec(
    "celery_exporter_events_clamped_total", "counter",
    f"Events stamped more than {FUTURE_SKEW:g} s ahead of the exporter's clock (a sender whose clock runs "
    "fast), applied with the time they arrived instead, so no timestamp served runs ahead of the exporter's "
    "clock.",
)
PURGED_SPEC = MetricSpec(
    "celery_exporter_workers_purged_total", "counter",
    "Workers dropped after --worker-purge-after seconds of silence.",
)

METRICS = (
    BUILD_SPEC, EVENTS_SPEC, INVALID_SPEC, CONNECTED_SPEC, RECONNECTS_SPEC, LAST_EVENT_SPEC, TRACKED_SPEC,
    EVICTED_SPEC, OVERFLOW_SPEC, PURGED_SPEC, IGNORED_SPEC, UNKNOWN_SPEC, CLAMPED_SPEC,
)


def _celery_version() -> str:
    try:
        import celery

        return str(celery.__version__)
    except Exception:  # pragma: no cover
        return ""


_BUILD_LABELS = (__version__, platform.python_version(), _celery_version())


def stream_families(snap: Snapshot, status: StreamStatus) -> Iterator[Metric]:
    """Pure: the exporter's self-metrics from a snapshot and the stream status."""
    build = BUILD_SPEC.family()
    build.add(_BUILD_LABELS, 1.0)
    yield build
    for spec, table in (
        (EVENTS_SPEC, snap.events_by_type),
        (INVALID_SPEC, snap.invalid_by_reason),
        (EVICTED_SPEC, snap.evicted),
        (OVERFLOW_SPEC, snap.overflow),
        (IGNORED_SPEC, snap.ignored),
    ):
        fam = spec.family()
        for label, count in sorted(table.items()):
            fam.add((label,), count)
        yield fam
    singles: tuple[tuple[MetricSpec, float], ...] = (
        (CONNECTED_SPEC, 1.0 if status.connected else 0.0),
        (RECONNECTS_SPEC, status.reconnects),
        (TRACKED_SPEC, snap.tracked_tasks),
        (PURGED_SPEC, snap.workers_purged),
        (UNKNOWN_SPEC, snap.unnamed_tasks),
        (CLAMPED_SPEC, snap.clamped),
    )
    for spec, value in singles:
        fam = spec.family()
        fam.add((), value)
        yield fam
    if snap.last_event_ts is not None:
        fam = LAST_EVENT_SPEC.family()
        fam.add((), snap.last_event_ts)
        yield fam


class StreamCollector(SpecCollector):
    """Serves the exporter's own event-pipeline metrics from a snapshot and the stream status."""

    METRICS = METRICS

    def __init__(self, snapshot: Callable[[], Snapshot], status: StreamStatus) -> None:
        self._snapshot = snapshot
        self._status = status

    @classmethod
    def from_sources(cls, sources: Sources) -> StreamCollector:
        return cls(sources.snapshot, sources.status)

    def collect(self) -> Iterator[Metric]:
        yield from stream_families(self._snapshot(), self._status)

"""Per-task metrics from the event stream: counters by state, duration and queue-wait histograms, and
tasks in flight. Labels are ``task_name`` and ``queue``; never the worker, whose name churns with pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from exporter.collectors.base import MetricSpec, Sources, SpecCollector
from exporter.state import (
    DURATION_STATES,
    EXHAUSTED,
    RECEIVED,
    REJECTED,
    REVOKED,
    SENT,
    STARTED,
    SUCCEEDED,
    Snapshot,
)

TL = ("task_name", "queue")

SENT_SPEC = MetricSpec("celery_task_sent_total", "counter", "Tasks published (task-sent events).", TL)
RECEIVED_SPEC = MetricSpec(
    "celery_task_received_total", "counter", "Tasks received by a worker (task-received events).", TL
)
STARTED_SPEC = MetricSpec(
    "celery_task_started_total", "counter", "Tasks started by a worker (task-started events).", TL
)
SUCCEEDED_SPEC = MetricSpec(
    "celery_task_succeeded_total", "counter", "Tasks that succeeded (task-succeeded events).", TL
)
FAILED_SPEC = MetricSpec(
    "celery_task_failed_total",
    "counter",
    'Tasks that failed (task-failed events), by exception class; exception="" is the zero series '
    "present from a task name's first sighting.",
    (*TL, "exception"),
)
RETRIED_SPEC = MetricSpec(
    "celery_task_retried_total",
    "counter",
    "Task retries (task-retried events), by the class of the exception that caused them.",
    (*TL, "exception"),
)
REJECTED_SPEC = MetricSpec(
    "celery_task_rejected_total", "counter", "Tasks rejected by a worker (task-rejected events).", TL
)
REVOKED_SPEC = MetricSpec(
    "celery_task_revoked_total",
    "counter",
    "Tasks revoked (task-revoked events), by reason: terminated (revoked with terminate=True while "
    'running), expired (its expires time passed before it ran), or revoked; reason="revoked" is the zero '
    "series present from a task name's first sighting.",
    (*TL, "reason"),
)
LOST_SPEC = MetricSpec(
    "celery_task_lost_total",
    "counter",
    "Started tasks that ended without any final event, because their worker was lost (silent past "
    "--worker-timeout, or gone offline while running them) or its heartbeats stopped counting them "
    "(e.g. Ignore): they no longer count in celery_tasks_active.",
    TL,
)
EXHAUSTED_SPEC = MetricSpec(
    "celery_task_retries_exhausted_total",
    "counter",
    "Tasks that failed on an attempt that was already a retry (retries >= 1): retrying did not help.",
    TL,
)
DURATION_SPEC = MetricSpec(
    "celery_task_duration_seconds",
    "histogram",
    "Task run time by outcome (state): succeeded uses the event's runtime, failed and retried are "
    "measured from task-started.",
    (*TL, "state"),
)
QUEUE_WAIT_SPEC = MetricSpec(
    "celery_task_queue_wait_seconds",
    "histogram",
    "Seconds from task-sent (or the task's ETA/countdown, if later) to task-started; from task-received "
    "when no task-sent event was seen.",
    TL,
)
ACTIVE_SPEC = MetricSpec(
    "celery_tasks_active", "gauge", "Tasks started and not yet finished, from the event stream.", TL
)

_PLAIN_COUNTERS = (
    (SENT_SPEC, SENT),
    (RECEIVED_SPEC, RECEIVED),
    (STARTED_SPEC, STARTED),
    (SUCCEEDED_SPEC, SUCCEEDED),
    (REJECTED_SPEC, REJECTED),
    (EXHAUSTED_SPEC, EXHAUSTED),
)

METRICS = (
    SENT_SPEC,
    RECEIVED_SPEC,
    STARTED_SPEC,
    SUCCEEDED_SPEC,
    FAILED_SPEC,
    RETRIED_SPEC,
    REJECTED_SPEC,
    REVOKED_SPEC,
    EXHAUSTED_SPEC,
    DURATION_SPEC,
    QUEUE_WAIT_SPEC,
    ACTIVE_SPEC,
    LOST_SPEC,
)


def task_families(snap: Snapshot) -> Iterator[Metric]:
    """Pure: metric families for the per-task metrics of one snapshot."""
    for spec, index in _PLAIN_COUNTERS:
        fam = spec.family()
        for key, counts in snap.counters.items():
            fam.add(key, counts[index])
        yield fam
    for spec, table in ((FAILED_SPEC, snap.failed), (RETRIED_SPEC, snap.retried)):
        fam = spec.family()
        for lkey, value in table.items():
            fam.add(lkey, value)
        yield fam
    fam = REVOKED_SPEC.family()
    for (name, queue), counts in snap.counters.items():
        fam.add((name, queue, "revoked"), counts[REVOKED])
    for lkey, value in snap.revoked.items():  # terminated, expired (and __overflow__ past the series cap)
        fam.add(lkey, value)
    yield fam
    fam = DURATION_SPEC.family(snap.duration_buckets)
    for (name, queue, state), hist in snap.durations.items():
        fam.add_histogram((name, queue, DURATION_STATES[state]), hist.counts, hist.total)
    yield fam
    fam = QUEUE_WAIT_SPEC.family(snap.queue_wait_buckets)
    for key, hist in snap.queue_wait.items():
        fam.add_histogram(key, hist.counts, hist.total)
    yield fam
    for spec, gauge in ((ACTIVE_SPEC, snap.active), (LOST_SPEC, snap.lost)):
        fam = spec.family()
        for key, value in gauge.items():
            fam.add(key, value)
        yield fam


class TaskCollector(SpecCollector):
    """Serves per-task metrics from a fresh ClusterState snapshot on every scrape."""

    METRICS = METRICS

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    @classmethod
    def from_sources(cls, sources: Sources) -> TaskCollector:
        return cls(sources.snapshot)

    def collect(self) -> Iterator[Metric]:
        yield from task_families(self._snapshot())

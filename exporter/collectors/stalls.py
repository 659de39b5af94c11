"""The stall signals: how long the oldest task of each queue has waited, how long the oldest running task
of each name has run, and when each task name last saw each kind of event.

Ages are computed at scrape time from stored timestamps and the injected clock, so they keep growing
between events and polls. The queue age combines the event stream (exact, from task-sent events) with
the Redis poller's head tracking (a lower bound, from how long the same message has sat at the end of
the list kombu consumes next); RabbitMQ queues are never peeked, their age comes from events alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from exporter.collectors.base import MetricSpec, Sources, SpecCollector
from exporter.labels import label_value
from exporter.state import STAMPED_STATES, Snapshot

if TYPE_CHECKING:
    from exporter.status import SourceView

QUEUE_AGE_SPEC = MetricSpec(
    "celery_queue_oldest_task_age_seconds",
    "gauge",
    "Seconds the oldest task still waiting in the queue has waited: from its task-sent event (or its "
    "ETA/countdown, if later) until a worker starts it; a task reserved by a worker but not started still "
    "waits. Exact when producers send task-sent events (task_send_sent_event), for the oldest "
    "--max-tracked-tasks waiting tasks (past that, a lower bound). On Redis without task-sent events, a "
    "lower bound: how long the same message has stayed at the end of the list kombu consumes next, seen "
    "every --poll-interval. On RabbitMQ (never peeked) without task-sent events there is no signal and the "
    "value is 0. 0 for a queue with no waiting task known.",
    ("queue",),
)
RUNNING_AGE_SPEC = MetricSpec(
    "celery_task_oldest_running_age_seconds",
    "gauge",
    "Seconds since the oldest started and unfinished task of this name started (task-started to now). "
    "Tracked apart from the task table, so a long task is reported however many others flow past; a task "
    "whose worker was lost (silent past --worker-timeout, or gone offline) stops counting. Only names "
    "with a running task have a series.",
    ("task_name", "queue"),
)
LAST_EVENT_SPEC = MetricSpec(
    "celery_task_last_event_timestamp_seconds",
    "gauge",
    "Unix time of the newest task event of this kind (state: sent, started, succeeded, failed, retried), "
    "the event's own timestamp (adjusted by its utcoffset). Compare with time() to find a periodic task that "
    "missed its schedule. Kept in memory only: after an exporter restart a series appears with the next "
    "such event.",
    ("task_name", "queue", "state"),
)

METRICS = (QUEUE_AGE_SPEC, RUNNING_AGE_SPEC, LAST_EVENT_SPEC)


def stall_families(snap: Snapshot, views: Sequence[SourceView], now: float) -> Iterator[Metric]:
    """Pure: the three families from one snapshot and the pollers' last results."""
    since: dict[str, float] = dict(snap.oldest_waiting)
    queues: dict[str, None] = dict.fromkeys(snap.queues_seen)
    for view in views:
        result = view.result
        if result is None:
            continue
        queues.update(dict.fromkeys(label_value(q) for q in result.queues))
        for raw, (_, first_seen) in result.queue_heads.items():
            queue = label_value(raw)
            # The older of the two: a lower bound from the head can only raise what events say.
            known = since.get(queue)
            if known is None or first_seen < known:
                since[queue] = first_seen
    queues.update(dict.fromkeys(since))
    fam = QUEUE_AGE_SPEC.family()
    for queue in queues:
        ts = since.get(queue)
        fam.add((queue,), max(0.0, now - ts) if ts is not None else 0.0)
    yield fam
    fam = RUNNING_AGE_SPEC.family()
    for key, start in snap.oldest_running.items():
        fam.add(key, max(0.0, now - start))
    yield fam
    fam = LAST_EVENT_SPEC.family()
    for (name, queue), stamps in snap.last_events.items():
        for state, ts in zip(STAMPED_STATES, stamps, strict=True):
            if ts:
                fam.add((name, queue, state), ts)
    yield fam


class StallCollector(SpecCollector):
    """Serves the stall signals from the scrape's ClusterState snapshot and the pollers' last results."""

    METRICS = METRICS

    def __init__(self, snapshot: Callable[[], Snapshot], views: Callable[[], Sequence[SourceView]],
                 clock: Callable[[], float]) -> None:
        self._snapshot = snapshot
        self._views = views
        self._clock = clock

    @classmethod
    def from_sources(cls, sources: Sources) -> StallCollector:
        return cls(sources.snapshot, sources.poll_views, sources.clock)

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield from stall_families(snap, self._views(), snap.now)

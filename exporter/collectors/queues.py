"""Broker-polled queue metrics (queue depth, unacked, consumers, retry queues, DLQs) and poller
self-metrics. The values come from the background pollers in ``exporter.brokers``; the collector only
reads their last results (a scrape never talks to a broker).

The oldest-DLQ-message age is computed at scrape time from the stored timestamp and the injected clock,
so it keeps growing between polls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from exporter.collectors.base import MetricSpec, Sources, SpecCollector

if TYPE_CHECKING:
    from exporter.status import SourceView

Q = ("queue",)
_POLLED = (
    "Polled from the broker every --poll-interval seconds (default 5); after a failed poll the last good "
    "value is served for up to 12 intervals."
)

QUEUE_LENGTH_SPEC = MetricSpec(
    "celery_queue_length", "gauge",
    f"Messages ready in a task queue, all priority sub-queues included. {_POLLED}", Q,
)
UNACKED_SPEC = MetricSpec(
    "celery_queue_messages_unacked", "gauge",
    f"Messages delivered to consumers and not yet acknowledged (RabbitMQ). {_POLLED}", Q,
)
CONSUMERS_SPEC = MetricSpec(
    "celery_queue_consumers", "gauge", f"Consumers attached to a queue (RabbitMQ). {_POLLED}", Q,
)
RETRY_LENGTH_SPEC = MetricSpec(
    "celery_retry_queue_length", "gauge", f"Messages waiting in a retry (delay) queue. {_POLLED}", Q,
)
DLQ_LENGTH_SPEC = MetricSpec(
    "celery_dead_letter_queue_length", "gauge", f"Messages in a dead-letter queue. {_POLLED}", Q,
)
DLQ_AGE_SPEC = MetricSpec(
    "celery_dead_letter_queue_oldest_message_age_seconds", "gauge",
    f"Age of the oldest message in a dead-letter queue, where the broker lets us know. {_POLLED}", Q,
)
DLQ_ADDED_SPEC = MetricSpec(
    "celery_dead_letter_messages_added_total", "counter",
    "Messages added to a dead-letter queue since the exporter started. Where the poll reports the broker's "
    "own per-queue publish count (RabbitMQ management statistics, when the poller provides it) the counter "
    "follows that count; otherwise (Redis, and RabbitMQ without it) it is the sum of the rises of "
    "celery_dead_letter_queue_length between successive polls, so letters added and removed within one "
    "poll interval are missed. The first poll of a DLQ adds 0: a DLQ found full is not growth.", Q,
)
BROKER_UNACKED_SPEC = MetricSpec(
    "celery_broker_unacked_messages", "gauge",
    f"Redis: messages in kombu's 'unacked' hash (delivered, not yet acknowledged, all queues). {_POLLED}",
)
POLL_SUCCESS_SPEC = MetricSpec(
    "celery_exporter_poll_success", "gauge", "1 if the last broker poll of this source succeeded.",
    ("source",),
)
POLL_DURATION_SPEC = MetricSpec(
    "celery_exporter_poll_duration_seconds", "gauge", "Duration of the last broker poll of this source.",
    ("source",),
)
POLL_ERRORS_SPEC = MetricSpec(
    "celery_exporter_poll_errors_total", "counter", "Broker polls of this source that failed or timed out.",
    ("source",),
)
POLL_SKIPPED_SPEC = MetricSpec(
    "celery_exporter_poll_skipped_total", "counter",
    "Keys, entries or queue names a broker poll could not read and skipped while serving the rest, by "
    "reason: invalid_name (not UTF-8, a NUL, over 255 bytes), wrong_type (a DLQ or queue key of another "
    "Redis type), unreadable_entry (a DLQ entry nested too deep to parse). Each reason is logged once.",
    ("source", "reason"),
)
OPTION_MISMATCH_SPEC = MetricSpec(
    "celery_exporter_poll_option_mismatch", "gauge",
    "1 when the last poll found the broker's keys laid out with another value of this transport option "
    "than configured (Redis 'sep' or 'priority_steps'); the poll reads them right, and the warning in the "
    "log names the --broker-transport-options value to set.", ("source", "option"),
)

METRICS = (
    QUEUE_LENGTH_SPEC, UNACKED_SPEC, CONSUMERS_SPEC, RETRY_LENGTH_SPEC, DLQ_LENGTH_SPEC, DLQ_AGE_SPEC,
    DLQ_ADDED_SPEC, BROKER_UNACKED_SPEC, POLL_SUCCESS_SPEC, POLL_DURATION_SPEC, POLL_ERRORS_SPEC,
    POLL_SKIPPED_SPEC, OPTION_MISMATCH_SPEC,
)


def _label(name: str) -> str:
    # Redis key names need not be UTF-8 (they are decoded with surrogateescape); labels must be.
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def queue_families(views: Sequence[SourceView], now: float) -> Iterator[Metric]:
    """Pure: metric families from each source's last good poll result and poll status."""
    length, unacked, consumers, retry, dlq, age = (
        s.family() for s in (QUEUE_LENGTH_SPEC, UNACKED_SPEC, CONSUMERS_SPEC, RETRY_LENGTH_SPEC,
                             DLQ_LENGTH_SPEC, DLQ_AGE_SPEC)
    )
    broker_unacked = BROKER_UNACKED_SPEC.family()
    success, duration, errors, skipped, mismatch, added = (
        s.family() for s in (POLL_SUCCESS_SPEC, POLL_DURATION_SPEC, POLL_ERRORS_SPEC, POLL_SKIPPED_SPEC,
                             OPTION_MISMATCH_SPEC, DLQ_ADDED_SPEC)
    )
    for view in sorted(views, key=lambda v: v.source):
        if view.success is not None:
            success.add_metric([view.source], 1.0 if view.success else 0.0)
            duration.add_metric([view.source], view.duration)
        errors.add_metric([view.source], view.errors)
        for reason, n in sorted(view.skipped.items()):
            skipped.add_metric([view.source, reason], n)
        # Served while the source's results are, and after: a counter must not vanish on a blip.
        for name, total in sorted(view.dead_letter_added.items()):
            added.add_metric([_label(name)], total)
        r = view.result
        if r is None:
            continue
        for name, depth in sorted(r.queues.items()):
            label = [_label(name)]
            length.add_metric(label, depth.ready)
            if depth.unacked is not None:
                unacked.add_metric(label, depth.unacked)
            if depth.consumers is not None:
                consumers.add_metric(label, depth.consumers)
        for name, value in sorted(r.retry.items()):
            retry.add_metric([_label(name)], value)
        for name, value in sorted(r.dead_letter.items()):
            dlq.add_metric([_label(name)], value)
        for name, ts in sorted(r.dead_letter_oldest.items()):
            age.add_metric([_label(name)], max(0.0, now - ts))
        if r.broker_unacked is not None:
            broker_unacked.add_metric([], r.broker_unacked)
        for option in sorted(set(r.mismatched_options)):
            mismatch.add_metric([view.source, option], 1.0)
    yield from (length, unacked, consumers, retry, dlq, age, added, broker_unacked, success, duration, errors,
                skipped, mismatch)


class QueueCollector(SpecCollector):
    """Serves the pollers' last results; ``views`` is ``PollStore.views``."""

    METRICS = METRICS

    def __init__(self, views: Callable[[], Sequence[SourceView]], clock: Callable[[], float]) -> None:
        self._views = views
        self._clock = clock

    @classmethod
    def from_sources(cls, sources: Sources) -> QueueCollector:
        return cls(sources.poll_views, sources.clock)

    def collect(self) -> Iterator[Metric]:
        yield from queue_families(self._views(), self._clock())

"""Broker-polled queue metrics (queue depth, unacked, consumers, retry queues, DLQs) and poller
self-metrics. The values come from the background pollers in ``exporter.brokers``; the collector only
reads their last results.
"""

from __future__ import annotations

from exporter.collectors.base import MetricSpec

Q = ("queue",)
_POLLED = "Polled from the broker every --poll-interval seconds (default 5); the last good value is served."

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

METRICS = (
    QUEUE_LENGTH_SPEC, UNACKED_SPEC, CONSUMERS_SPEC, RETRY_LENGTH_SPEC, DLQ_LENGTH_SPEC, DLQ_AGE_SPEC,
    BROKER_UNACKED_SPEC, POLL_SUCCESS_SPEC, POLL_DURATION_SPEC, POLL_ERRORS_SPEC,
)

"""Sample Celery app and tasks for the Compose demo: something for every metric the exporter serves.

Tasks (explicit names, so they do not depend on how the module is imported):
- ``sample.add`` and ``sample.sleepy`` succeed (the second takes a while, for the duration histograms);
- ``sample.always_fails`` fails without retrying;
- ``sample.flaky`` fails at random with ``ConnectionError`` and retries with exponential backoff and
  jitter (``retry_backoff``, ``retry_jitter``, ``max_retries``); when the retries are exhausted it is
  dead-lettered into the Redis list ``dlq:<task name>`` by ``move_to_dlq``, the pattern of
  shared/seeds/002, then fails;
- ``sample.poison`` is rejected without requeue: on RabbitMQ the ``default`` queue dead-letters it through
  the ``dlx`` exchange into ``dead_letters`` (the topology of shared/seeds/004); Redis has no DLX, so
  there it is simply dropped and counted as rejected.

Configured by ``CELERY_BROKER_URL`` (any kombu URL, ``memory://`` in tests) and ``DLQ_REDIS_URL`` (where
the ``dlq:*`` lists go). Workers send events (``-E`` is implied by ``worker_send_task_events``), and
producers send ``task-sent`` events so the exporter knows each task's queue.
"""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from celery import Celery, Task, signals
from celery.exceptions import Reject
from kombu import Exchange, Queue

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://redis:6379/0")
DLQ_REDIS_URL = os.environ.get("DLQ_REDIS_URL", "redis://redis:6379/0")

# Seed 004: messages rejected (or expired) on "default" are re-routed by RabbitMQ to "dead_letters".
DLX = Exchange("dlx", type="direct")
DEAD_LETTER_QUEUE = Queue("dead_letters", exchange=DLX, routing_key="dead_letter")
DEFAULT_QUEUE = Queue(
    "default",
    Exchange("default", type="direct"),
    routing_key="default",
    queue_arguments={"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead_letter"},
)

app = Celery("sample", broker=BROKER_URL)
app.conf.update(
    task_queues=(DEFAULT_QUEUE,),
    task_default_queue="default",
    task_default_exchange="default",
    task_default_routing_key="default",
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,  # Reject(requeue=False) dead-letters only a message that is not yet acked
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=True,
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
)


@cache
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(DLQ_REDIS_URL)


def move_to_dlq(task: Task, data: Any, error: BaseException) -> None:
    """Move a failed task to the dead letter queue for manual review (shared/seeds/002, verbatim shape)."""
    dlq_entry = {
        "task_name": task.name,
        "task_id": task.request.id,
        "args": data,
        "error": str(error),
        "retries": task.request.retries,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    redis_client().lpush(f"dlq:{task.name}", json.dumps(dlq_entry))


class DeadLetterTask(Task):
    """Dead-letters a task whose retries are exhausted, then lets Celery mark it failed (as the seed)."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if self.request.retries >= (self.max_retries or 0):
            move_to_dlq(self, {"args": list(args), "kwargs": kwargs}, exc)


@app.task(name="sample.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="sample.sleepy")
def sleepy(seconds: float) -> float:
    time.sleep(min(float(seconds), 30.0))
    return seconds


@app.task(name="sample.always_fails")
def always_fails(reason: str = "sample failure") -> None:
    raise ValueError(reason)


@app.task(
    name="sample.flaky",
    bind=True,
    base=DeadLetterTask,
    autoretry_for=(ConnectionError,),
    retry_backoff=2,  # countdowns 2, 4, 8 s ...
    retry_backoff_max=60,
    retry_jitter=True,  # ... each drawn uniformly from [0, countdown] so retries do not stampede
    max_retries=3,
)
def flaky(self: Task, fail_probability: float = 0.5) -> str:
    if random.random() < fail_probability:
        raise ConnectionError(f"upstream unavailable (attempt {self.request.retries + 1})")
    return "ok"


@app.task(name="sample.poison", bind=True, acks_late=True)
def poison(self: Task) -> None:
    raise Reject("malformed payload", requeue=False)


@signals.worker_ready.connect
def declare_dead_letter_queue(**_: Any) -> None:
    """A worker consumes only ``default``, so declare the DLX and its queue here, on RabbitMQ only."""
    with app.connection_for_write() as conn:
        if conn.transport.driver_type == "amqp":
            DEAD_LETTER_QUEUE(conn.default_channel).declare()

"""The stall signals on the live /metrics of the real daemon, against real Redis (a private server) and
RabbitMQ (a private vhost) with real prefork workers (tests/_stalls_app.py):

* a queue whose consumer is stopped for 20 s: the oldest task's age grows 20 +/- 2 s from task-sent
  events (Redis and RabbitMQ), at least 15 s from the Redis head without them, and drops to 0 when the
  consumer returns;
* a task sleeping 30 s shows a running age of 30 +/- 3 s while other tasks flow, and none once done;
* a beat-like producer stopped for 30 s: time() - celery_task_last_event_timestamp_seconds{state="sent"}
  grows past 30.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from tests._broker_helpers import RedisServer, amqp_url, rabbit_vhost
from tests._support import ROOT, Daemon, celery_worker, wait_for

pytestmark = pytest.mark.integration
APP = "tests._stalls_app"
QUEUE = "stalls-q"
AGE = f'celery_queue_oldest_task_age_seconds{{queue="{QUEUE}"}}'


@contextlib.contextmanager
def producer(broker: str, sent_events: bool) -> Iterator[Celery]:
    app = Celery("stalls-producer", broker=broker)
    app.conf.task_send_sent_event = sent_events
    try:
        yield app
    finally:
        app.close()


@contextlib.contextmanager
def worker(broker: str, sent_events: bool, name: str, concurrency: int = 2) -> Iterator[None]:
    env = {"STALLS_BROKER": broker, "STALLS_SENT_EVENT": "1" if sent_events else "0"}
    with celery_worker(APP, QUEUE, f"{name}-{os.getpid()}@localhost", env, ROOT, concurrency=concurrency):
        yield


def succeeded(d: Daemon) -> float:
    # Without task-sent events the queue label is --default-queue's: sum over queues.
    return sum(v for k, v in d.metrics().items()
               if k.startswith("celery_task_succeeded_total{") and 'task_name="stalls.quick"' in k)


def daemon(broker: str) -> Daemon:
    d = Daemon(["--broker-url", broker, "--poll-interval", "1", "--queues", QUEUE, "--worker-timeout", "10"])
    d.start()
    wait_for(lambda: d.metrics().get("celery_exporter_broker_connected") == 1, 20, what="stream connected")
    return d


def stopped_consumer(broker: str, sent_events: bool, low: float, high: float) -> None:
    """Tasks flow, the consumer stops, three tasks wait 20 s, the consumer returns."""
    with daemon(broker) as d, producer(broker, sent_events) as app:
        with worker(broker, sent_events, "first"):
            wait_for(lambda: d.metrics().get("celery_workers{state=\"up\"}") == 1, 30, what="worker up")
            for _ in range(5):
                app.send_task("stalls.quick", queue=QUEUE)
            wait_for(lambda: d.metrics().get(AGE) == 0 and succeeded(d) == 5, 30, what="flowing, age 0")
        # The worker is gone (warm shutdown): nothing consumes the queue.
        sent_at = time.time()
        for _ in range(3):
            app.send_task("stalls.quick", queue=QUEUE)
        wait_for(lambda: time.time() - sent_at >= 20, 25, every=0.2)
        age = d.metrics().get(AGE, 0.0)
        waited = time.time() - sent_at
        assert low <= age <= high, f"oldest age {age:.1f}s after {waited:.1f}s (want {low}..{high})"
        if broker.startswith("redis"):
            assert d.metrics()[f'celery_queue_length{{queue="{QUEUE}"}}'] == 3
        with worker(broker, sent_events, "second"):
            wait_for(lambda: d.metrics().get(AGE), 30, ok=lambda v: v == 0, what="age back to 0")
        assert d.terminate() == 0


def test_stopped_consumer_on_redis_from_task_sent_events(redis_server: RedisServer) -> None:
    stopped_consumer(redis_server.url(), True, 18.0, 22.5)


def test_stopped_consumer_on_redis_without_task_sent_events_is_a_lower_bound(redis_server: RedisServer) -> None:
    # From the head of the list: the first poll (every second) that sees the message starts the count.
    stopped_consumer(redis_server.url(), False, 15.0, 22.5)


def test_stopped_consumer_on_rabbitmq_from_task_sent_events() -> None:
    with rabbit_vhost("exporter-stalls") as vhost:
        stopped_consumer(amqp_url(vhost), True, 18.0, 22.5)


def test_a_sleeping_task_ages_while_others_flow_and_a_silent_producer_shows(redis_server: RedisServer) -> None:
    broker = redis_server.url()
    running = 'celery_task_oldest_running_age_seconds{queue="stalls-q",task_name="stalls.sleep"}'
    last_sent = 'celery_task_last_event_timestamp_seconds{queue="stalls-q",state="sent",task_name="stalls.quick"}'
    with daemon(broker) as d, producer(broker, True) as app, worker(broker, True, "runner", concurrency=3):
        wait_for(lambda: d.metrics().get("celery_workers{state=\"up\"}") == 1, 30, what="worker up")
        app.send_task("stalls.sleep", args=(33,), queue=QUEUE)
        first = wait_for(lambda: d.metrics().get(running), 30, ok=lambda v: v is not None,
                         what="the sleeping task started")
        # The start as the exporter dates it (the event's own timestamp), within a scrape step: the
        # checks below hold however long the task-started event took to arrive.
        started_at = time.time() - first
        # A beat-like producer: one task a second for 15 s while the long task runs.
        for _ in range(15):
            app.send_task("stalls.quick", queue=QUEUE)
            time.sleep(1.0)
        m = d.metrics()
        assert time.time() - m[last_sent] < 3.0, "the producer is running: its last task-sent is recent"
        wait_for(lambda: time.time() - started_at >= 30, 20, every=0.2)
        m = d.metrics()
        assert 27.0 <= m[running] <= 33.0, m[running]
        assert succeeded(d) >= 10  # the others flowed meanwhile
        # The producer has been silent since the last send (~15 s ago); wait until 31 s have passed.
        wait_for(lambda: time.time() - d.metrics()[last_sent], 30, ok=lambda v: v > 30, every=0.5,
                 what="time() - last sent > 30")
        wait_for(lambda: d.metrics().get(running) is None, 15, what="the sleeping task finished")
        assert d.terminate() == 0
